"""Exported inference programs (logocap_jax.inference.export, the export command and
examples/run_exported.py) against the Predictor, on the bundled photos with the tiny weights.

Tolerances: the exported program is the Predictor's pipeline compiled without the package's CPU
compiler options (docs/design.md §6), so its float32 sums round differently; measured at most
1e-3 input pixels on kept keypoints and 1.2e-5 on scores. Keypoints are allowed 5e-3 input
pixels (3e-2 photo pixels: the tiny model's input is about 5 times smaller than a bundled
photo), scores 1e-4; validity flags and the people kept must be equal.
"""

import importlib.util
import json
import os
import subprocess
import sys

import golden_arrays
import numpy as np
import pytest

from logocap_jax import config_utils, errors
from logocap_jax.commands import export as export_command
from logocap_jax.inference import export, postprocess, preprocess

SCRIPT = golden_arrays.ROOT / "examples" / "run_exported.py"
PHOTOS = sorted((golden_arrays.ROOT / "data" / "ochuman_mini" / "images").glob("*.jpg")) + [
    golden_arrays.ROOT / "data" / "coco_mini" / "images" / f"{image_id:012d}.jpg"
    for image_id in (488571, 538113)  # 30 and 3 kept slots
]
INPUT_TOLERANCE = 5e-3
PHOTO_TOLERANCE = 3e-2
SCORE_TOLERANCE = 1e-4
# Runs a script with flax and logocap_jax unimportable (argv: script, its arguments).
BLOCKED_RUN = """
import runpy, sys

class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("flax", "logocap_jax"):
            raise ImportError(f"{name} is blocked")

sys.meta_path.insert(0, Blocked())
for name in ("flax", "logocap_jax"):
    try:
        __import__(name)
    except ImportError:
        continue
    raise SystemExit(f"{name} is importable")
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _script():
    spec = importlib.util.spec_from_file_location("run_exported", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "sizes,platforms",
    [(["512"], ["cpu"]), (["500x512"], ["cpu"]), ([], ["cpu"]), (["any"], ["gpu"])],
)
def test_bad_request_is_a_usage_error(sizes, platforms):
    with pytest.raises(errors.UsageError):
        export.check_request(sizes, platforms)


@pytest.mark.parametrize(
    "flags,match",
    [
        ([], "exactly one of"),
        (["--state_dict", "x", "--sizes", "5x5"], "multiples of 32"),
        (["--state_dict", "x", "--platforms", "cpu,gpu"], "expected some of"),
    ],
)
def test_command_line_errors_come_before_the_weights(flags, match, tmp_path):
    with pytest.raises(errors.UsageError, match=match):
        export_command.main(["--config", "tiny", "--out", str(tmp_path), *flags])


def test_sizes_are_named_once_each():
    sizes, platforms = export.check_request(["512X512", "any", "512x512", "640x512"], ["tpu"])
    assert sizes == ["512x512", "any", "640x512"] and platforms == ("tpu",)


def test_any_size_with_several_scales_is_a_usage_error(tiny_config):
    model = config_utils.build_model(tiny_config)
    settings = config_utils.decode_settings(tiny_config, scales=(0.5, 1.0))
    with pytest.raises(errors.UsageError, match="fixed input sizes"):
        export.export_program(model, settings, {}, "any", ["cpu"])


def test_missing_flatbuffers_is_one_clear_error(monkeypatch, tiny_config, tmp_path):
    monkeypatch.setitem(sys.modules, "flatbuffers", None)
    with pytest.raises(errors.MissingDependencyError, match="pip install flatbuffers"):
        export.export_model(tiny_config, None, str(tmp_path))


def test_script_warp_and_nms_are_the_packages(tiny_config):
    """The standalone script's warp, inverse warp and pose NMS equal the package's."""
    script = _script()
    warp = export.describe(tiny_config, ["any"], ["cpu"])["input"]["warp"]
    for path in PHOTOS:
        photo = preprocess.read_image(path)
        info = preprocess.inference_resize(*photo.shape[:2], warp["short_side"])
        size_wh = tuple(int(s) for s in info.size_wh)
        forward, inverse, size = script.official_warp(photo.shape[1], photo.shape[0], warp)
        assert size == size_wh
        for matrix, inverted in ((forward, False), (inverse, True)):
            expected = preprocess.affine_transform_matrix(
                info.center, info.scale, 0, size_wh, inverse=inverted
            )
            np.testing.assert_array_equal(matrix, expected)
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 200, (6, 17, 2)).astype(np.float32)
    poses = np.concatenate([base, base + rng.normal(0, 1, base.shape).astype(np.float32)])
    scores = rng.uniform(0, 1, len(poses)).astype(np.float32)
    expected = postprocess.pose_nms(poses, scores, distance_ratio=0.05, min_joints=8)
    assert 6 <= len(expected) < len(poses)
    np.testing.assert_array_equal(script.pose_nms(poses, scores, 0.05, 8), expected)
    # Slot 2's group elects slot 1, which slot 0's group kept already: slot 2 is dropped.
    small = rng.uniform(0, 10, (17, 2)).astype(np.float32)
    wide = small + 5
    wide[12:] += 1000
    poses, scores = np.stack([small, small + 0.1, wide]), np.float32([0.5, 0.9, 0.1])
    expected = postprocess.pose_nms(poses, scores, distance_ratio=0.05, min_joints=8)
    assert expected.tolist() == [1]
    np.testing.assert_array_equal(script.pose_nms(poses, scores, 0.05, 8), expected)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The export command's folder of the tiny weights: 'any' and 128x192 (W x H) programs
    lowered for cpu, cuda and tpu."""
    folder = tmp_path_factory.mktemp("export")
    weights = golden_arrays.GOLDEN / "tiny_state_dict.npz"
    command = [sys.executable, "-m", "logocap_jax.commands.export", "--config", "tiny"]
    command += ["--state_dict", str(weights), "--platforms", "cpu,cuda,tpu"]
    command += ["--sizes", "any,128x192", "--out", str(folder)]
    subprocess.run(command, check=True, capture_output=True, timeout=600)
    return str(folder)


@pytest.mark.slow
def test_exported_program_gives_the_predictors_poses(exported, tiny_predictors):
    """The cuda and tpu lowerings serialize; the CPU lowering of the 'any' and fixed-size
    programs gives the Predictor's poses, scores and validity flags."""
    with open(os.path.join(exported, export.DESCRIPTION_FILE)) as f:
        description = json.load(f)
    assert description["platforms"] == ["cpu", "cuda", "tpu"]
    weights = dict(np.load(os.path.join(exported, export.WEIGHTS_FILE)))
    assert {w.dtype for w in weights.values()} == {np.dtype(np.float32)}
    programs = {
        size: export.load_program(os.path.join(exported, name))
        for size, name in description["programs"].items()
    }
    assert sorted(os.listdir(exported)) == [
        "model.json",
        "program_128x192.jaxexport",
        "program_any.jaxexport",
        "weights.npz",
    ]
    for program in programs.values():
        assert program.platforms == ("cpu", "cuda", "tpu")
    assert str(programs["any"].in_avals[-1]) == "float32[b,32*h,32*w,3]"
    assert str(programs["128x192"].in_avals[-1]) == "float32[b,192,128,3]"
    predictor = tiny_predictors[True]
    fixed_size_runs = kept = 0
    for path in PHOTOS:
        photo = preprocess.read_image(path)
        image, info = preprocess.prepare_test_image(photo, predictor.input_size)
        expected = predictor(photo).outputs
        kept += expected.valid.sum()
        sizes = ["any"] + (["128x192"] if image.shape[:2] == (192, 128) else [])
        for size in sizes:
            poses, scores, valid = (
                np.asarray(x[0]) for x in programs[size].call(weights, image[None])
            )
            np.testing.assert_array_equal(valid, expected.valid)
            np.testing.assert_allclose(scores, expected.scores, atol=SCORE_TOLERANCE)
            np.testing.assert_allclose(
                poses[valid], expected.poses[expected.valid], atol=INPUT_TOLERANCE
            )
            fixed_size_runs += size != "any"
    assert fixed_size_runs == 2
    assert kept > 40


@pytest.mark.slow
def test_standalone_script_gives_the_predictors_people(exported, tmp_path, tiny_predictors):
    """The export folder, run by examples/run_exported.py with flax and logocap_jax
    unimportable, gives the people the Predictor gives, in photo pixels."""
    results = tmp_path / "results.json"
    photos = [str(path) for path in PHOTOS]
    script = [sys.executable, "-c", BLOCKED_RUN, str(SCRIPT), exported, *photos]
    subprocess.run([*script, "--out", str(results)], check=True, timeout=600, cwd=tmp_path)
    with open(results) as f:
        people = json.load(f)
    for index, path in enumerate(photos):
        expected = tiny_predictors[True](preprocess.read_image(path))
        found = [person for person in people if person["image_id"] == index]
        assert all(person["image"] == path for person in found)
        assert len(found) == len(expected.scores)
        keypoints = np.array([person["keypoints"] for person in found]).reshape(-1, 17, 3)
        scores = np.array([person["score"] for person in found])
        np.testing.assert_allclose(scores, expected.scores, atol=SCORE_TOLERANCE)
        np.testing.assert_allclose(
            keypoints[..., :2], expected.keypoints[..., :2], atol=PHOTO_TOLERANCE
        )
        np.testing.assert_allclose(keypoints[..., 2], expected.keypoints[..., 2], atol=1e-4)
    assert len(people) > 20
