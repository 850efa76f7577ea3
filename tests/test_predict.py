"""Inference as a product: `predict()`, `Predictor` and the predict CLI on the golden tiny weights.

The golden results JSONs are what the official test script wrote for image 197388 at short
side 128 (flip on and off). Tolerances are those of the end-to-end parity test
(test_parity_pipeline.py), whose only error source is float32 reordering in the network:
JSON_XY_ATOL = 1e-3 network-input px, i.e. 1e-3 * 392 / 128 original px (measured 2.3e-3 flip,
1.7e-3 noflip), and SCORE_ATOL = 1e-4 (measured 2.8e-5 for keypoint scores, 1.2e-5 for pose
scores; centre scores alone already differ by ~2e-5, so 1e-5 is out of reach).

The three routes (predict(), Predictor.predict_many, the CLI) run the same compiled program, so
they must agree with each other exactly. Batching and size buckets only regroup images; the
results agree to float32 precision (BATCH_RTOL, BATCH_ATOL).
"""

import json
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest
from jax import monitoring

from logocap_jax import config_utils, errors, weights
from logocap_jax.commands import cli
from logocap_jax.commands import predict as predict_command
from logocap_jax.inference import postprocess, predict, preprocess, visualize
from logocap_jax.keypoints import JOINT_NAMES

GOLDEN = "tests/data/golden"
STATE_DICT = f"{GOLDEN}/tiny_state_dict.npz"
CONFIG = "configs/tiny.py"
IMAGES = "data/coco_mini/images"
GOLDEN_ID = 197388
GOLDEN_IMAGE = f"{IMAGES}/{GOLDEN_ID:012d}.jpg"
GOLDEN_RESULTS = {
    True: f"{GOLDEN}/tiny_forward_results.json",
    False: f"{GOLDEN}/tiny_forward_results_noflip.json",
}
ORIGINAL_HEIGHT, INPUT_SHORT_SIDE = 392, 128
JSON_XY_ATOL = 1e-3 * ORIGINAL_HEIGHT / INPUT_SHORT_SIDE
SCORE_ATOL = 1e-4
# The 1x1 convolutions are matrix products whose blocking depends on the batch size: float32
# results differ in the last bits (measured 6e-5 px on 300 px coordinates, 1.6e-6 relative).
BATCH_RTOL, BATCH_ATOL = 1e-5, 1e-5
# Coordinates near 0 come from center - offset, a cancellation of values up to the image size:
# their error is a few float32 ulps of 256 px (3e-5), measured 1.5e-5 px.
BATCH_ATOL_PX = 1e-4
# Two size buckets at short side 128: 128 x 256 (two images: a padded batch of 3) and
# 128 x 192 (three images: a full batch). Given interleaved, so bucketing reorders them.
BATCH_IDS = (197388, 129648, 229358, 196141, 211325)
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
PANEL_JOINT = "left_shoulder"


@pytest.fixture(scope="module")
def config():
    return config_utils.load_config(CONFIG)


@pytest.fixture(scope="module")
def variables(config):
    return weights.load(config, STATE_DICT)


@pytest.fixture(scope="module")
def predictors(tiny_predictors):
    return tiny_predictors


@pytest.fixture(scope="module")
def golden_people(predictors):
    """{flip: People} of the golden image through Predictor.predict_many."""
    return {
        flip: dict(predictors[flip].predict_many([(GOLDEN_ID, GOLDEN_IMAGE)]))[GOLDEN_ID]
        for flip in (True, False)
    }


def load_golden(flip):
    with open(GOLDEN_RESULTS[flip]) as f:
        return json.load(f)


def assert_matches_golden(results, golden):
    """COCO results entries equal the official ones: same people, same order, within tolerance."""
    assert len(results) == len(golden) > 0
    for ours, gold in zip(results, golden):
        assert ours["image_id"] == gold["image_id"] == GOLDEN_ID
        assert ours["category_id"] == gold["category_id"] == 1
        ours_kp = np.reshape(ours["keypoints"], (17, 3))
        gold_kp = np.reshape(gold["keypoints"], (17, 3))
        np.testing.assert_allclose(ours_kp[:, :2], gold_kp[:, :2], rtol=0, atol=JSON_XY_ATOL)
        np.testing.assert_allclose(ours_kp[:, 2], gold_kp[:, 2], rtol=0, atol=SCORE_ATOL)
        assert abs(ours["score"] - gold["score"]) <= SCORE_ATOL
        np.testing.assert_allclose(ours["bbox"][:2], gold["bbox"][:2], rtol=0, atol=JSON_XY_ATOL)
        np.testing.assert_allclose(
            ours["bbox"][2:], gold["bbox"][2:], rtol=0, atol=2 * JSON_XY_ATOL
        )


# ---------------------------------------------------------------------------- golden results


@pytest.mark.parametrize("flip", [True, False])
def test_predict_function_matches_golden(config, variables, golden_people, flip):
    keypoints, scores = predict.predict(variables, GOLDEN_IMAGE, config=config, flip_test=flip)
    assert keypoints.shape == (len(scores), 17, 3)
    assert_matches_golden(postprocess.coco_results(GOLDEN_ID, keypoints, scores), load_golden(flip))
    # Same program as the Predictor: bit-identical.
    np.testing.assert_array_equal(keypoints, golden_people[flip].keypoints)
    np.testing.assert_array_equal(scores, golden_people[flip].scores)


def test_predict_function_reuses_its_compiled_program(config, variables):
    """A second call with the same config and overrides compiles nothing."""
    image = preprocess.read_image(GOLDEN_IMAGE)
    predict.predict(variables, image, config=config, flip_test=False)
    events = []

    def listener(name, duration, **kwargs):
        if name == COMPILE_EVENT:
            events.append(duration)

    monitoring.register_event_duration_secs_listener(listener)
    try:
        predict.predict(variables, image, config=config, flip_test=False)
    finally:
        monitoring.unregister_event_duration_listener(listener)
    assert events == []


def test_shared_predictors_are_bounded(config, monkeypatch):
    """predict()'s cache keeps the most recently used predictors only."""
    monkeypatch.setattr(predict, "_SHARED_PREDICTORS", type(predict._SHARED_PREDICTORS)())
    monkeypatch.setattr(predict, "SHARED_PREDICTORS_KEPT", 2)
    first = predict._shared_predictor(config, {"center_threshold": 0.1})
    predict._shared_predictor(config, {"center_threshold": 0.2})
    assert predict._shared_predictor(config, {"center_threshold": 0.1}) is first
    predict._shared_predictor(config, {"center_threshold": 0.3})
    assert len(predict._SHARED_PREDICTORS) == 2
    # 0.2 was the least recently used: dropped, so asking again builds a new predictor.
    assert predict._shared_predictor(config, {"center_threshold": 0.1}) is first
    assert len(predict._SHARED_PREDICTORS) == 2


def test_with_variables_copies_have_their_own_state(predictors, golden_people, variables):
    original = predictors[False]
    copy = original.with_variables(variables)
    assert copy._programs is original._programs  # the compiled programs are shared
    assert copy.report is not original.report and copy.report.summary()["images"] == 0


@pytest.mark.parametrize("flip", [True, False])
def test_predictor_matches_golden(golden_people, flip):
    people = golden_people[flip]
    assert_matches_golden(
        postprocess.coco_results(GOLDEN_ID, people.keypoints, people.scores), load_golden(flip)
    )
    # slots point at the people's candidate slots in the pipeline outputs.
    outputs = people.outputs
    assert outputs.valid[people.slots].all()
    np.testing.assert_array_equal(outputs.scores[people.slots], people.scores)
    np.testing.assert_array_equal(
        postprocess.back_project(outputs.poses[people.slots], people.resize), people.keypoints
    )


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    """{flip: output dir} of the CLI run as a subprocess; flip also writes overlay and panel."""
    runs = {}
    for flip in (True, False):
        out = tmp_path_factory.mktemp(f"cli_flip{int(flip)}")
        flags = ["--panel_joint", PANEL_JOINT] if flip else ["--no_flip", "--no_draw"]
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "logocap_jax.commands.predict",
                "--config",
                CONFIG,
                "--state_dict",
                STATE_DICT,
                GOLDEN_IMAGE,
                "--output_dir",
                str(out),
                *flags,
            ],
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr
        runs[flip] = out
    return runs


@pytest.mark.parametrize("flip", [True, False])
def test_cli_results_match_golden(cli_runs, golden_people, flip):
    with open(cli_runs[flip] / "results.json") as f:
        results = json.load(f)
    assert_matches_golden(results, load_golden(flip))
    people = golden_people[flip]
    assert results == postprocess.coco_results(GOLDEN_ID, people.keypoints, people.scores)
    with open(cli_runs[flip] / "image_ids.json") as f:
        assert json.load(f) == {GOLDEN_IMAGE: GOLDEN_ID}
    pngs = sorted(p.name for p in cli_runs[flip].glob("*.png"))
    assert pngs == ([f"{GOLDEN_ID:012d}.png", f"{GOLDEN_ID:012d}_panel.png"] if flip else [])


def test_cli_overlay_draws_where_the_keypoints_are(cli_runs):
    image = preprocess.read_image(GOLDEN_IMAGE)
    overlay = cv2.cvtColor(
        cv2.imread(str(cli_runs[True] / f"{GOLDEN_ID:012d}.png")), cv2.COLOR_BGR2RGB
    )
    assert overlay.shape == image.shape
    changed = np.any(overlay != image, axis=-1)
    with open(cli_runs[True] / "results.json") as f:
        keypoints = np.array([r["keypoints"] for r in json.load(f)]).reshape(-1, 17, 3)
    height, width = image.shape[:2]
    drawn = keypoints[..., 2] >= visualize.DEFAULT_KEYPOINT_THRESHOLD
    near_people = np.zeros_like(changed)
    for person, visible in zip(keypoints, drawn):
        xy = np.rint(person[visible, :2]).astype(int)
        inside = (xy[:, 0] >= 0) & (xy[:, 0] < width) & (xy[:, 1] >= 0) & (xy[:, 1] < height)
        for x, y in xy[inside]:  # every drawn joint changed its pixel
            assert changed[y, x], (x, y)
        # Limbs, joints and the score label stay within the drawn joints' box (+ label margin).
        (x0, y0), (x1, y1) = xy.min(axis=0) - 40, xy.max(axis=0) + 40
        near_people[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)] = True
    assert drawn.sum() >= 10
    assert changed.any() and not changed[~near_people].any()


def test_overlay_draws_only_people_above_min_score(golden_people):
    people = golden_people[True]
    image = preprocess.read_image(GOLDEN_IMAGE)
    best = np.argsort(people.scores)[-2:]
    threshold = float(people.scores[best[0]])
    expected = visualize.draw_poses(
        image, people.keypoints[np.sort(best)], scores=people.scores[np.sort(best)]
    )
    assert len(people.scores) > 2
    np.testing.assert_array_equal(predict.overlay(image, people, min_score=threshold), expected)
    np.testing.assert_array_equal(
        predict.overlay(image, people, min_score=float(people.scores.max()) + 1), image
    )
    assert not np.array_equal(predict.overlay(image, people), expected)


def test_cli_instance_panel(cli_runs, golden_people):
    panel = cv2.cvtColor(
        cv2.imread(str(cli_runs[True] / f"{GOLDEN_ID:012d}_panel.png")), cv2.COLOR_BGR2RGB
    )
    tile, gap = visualize.PANEL_TILE, visualize.PANEL_GAP
    assert panel.shape == (tile, 3 * tile + 2 * gap, 3)
    expected = predict.best_person_panel(
        preprocess.read_image(GOLDEN_IMAGE), golden_people[True], JOINT_NAMES.index(PANEL_JOINT)
    )
    np.testing.assert_array_equal(panel, expected)


def test_best_person_panel_needs_people(golden_people):
    people = golden_people[True]
    empty = people._replace(
        keypoints=people.keypoints[:0], scores=people.scores[:0], slots=people.slots[:0]
    )
    assert predict.best_person_panel(preprocess.read_image(GOLDEN_IMAGE), empty, 0) is None


# ---------------------------------------------------------------------------- batching


@pytest.fixture(scope="module")
def batch_runs(config, variables, predictors):
    """{batch size: {image id: People}} over BATCH_IDS, and the compile events of batch 3."""
    items = [(i, f"{IMAGES}/{i:012d}.jpg") for i in BATCH_IDS]
    batch3 = predict.Predictor.from_config(config, variables, batch_size=3, keep_outputs=True)
    events = []

    def listener(name, duration, **kwargs):
        if name == COMPILE_EVENT:
            events.append(duration)

    runs = {1: dict(predictors[True].predict_many(items))}
    monitoring.register_event_duration_secs_listener(listener)
    try:
        runs[3] = dict(batch3.predict_many(items))
    finally:
        monitoring.unregister_event_duration_listener(listener)
    return runs, {1: predictors[True], 3: batch3}, events


def input_shapes(ids):
    """Distinct network input (H, W) of the coco_mini images `ids`."""
    with open("data/coco_mini/annotations/person_keypoints_mini.json") as f:
        sizes = {im["id"]: (im["height"], im["width"]) for im in json.load(f)["images"]}
    return {
        tuple(
            int(v) for v in preprocess.inference_resize(*sizes[i], INPUT_SHORT_SIDE).size_wh[::-1]
        )
        for i in ids
    }


@pytest.mark.slow
def test_batch_size_and_buckets_change_nothing(batch_runs):
    runs, _, _ = batch_runs
    assert set(runs[1]) == set(runs[3]) == set(BATCH_IDS)
    assert sum(len(p.scores) for p in runs[1].values()) >= 5
    for image_id in BATCH_IDS:
        one, three = runs[1][image_id], runs[3][image_id]
        np.testing.assert_array_equal(one.slots, three.slots)
        np.testing.assert_allclose(
            three.keypoints, one.keypoints, rtol=BATCH_RTOL, atol=BATCH_ATOL_PX
        )
        np.testing.assert_allclose(three.scores, one.scores, rtol=BATCH_RTOL, atol=BATCH_ATOL)
        np.testing.assert_array_equal(three.outputs.valid, one.outputs.valid)
        for name in ("poses", "scores", "centers", "mesh", "kams", "refined"):
            np.testing.assert_allclose(
                getattr(three.outputs, name),
                getattr(one.outputs, name),
                rtol=BATCH_RTOL,
                atol=BATCH_ATOL_PX if name in ("poses", "centers", "mesh") else BATCH_ATOL,
                err_msg=f"{image_id} {name}",
            )
        np.testing.assert_array_equal(three.resize.size_wh, one.resize.size_wh)


@pytest.mark.slow
def test_one_compilation_per_size_and_batch_bucket(batch_runs):
    _, predictors, events = batch_runs
    shapes = input_shapes(BATCH_IDS)
    assert len(shapes) == 2
    for batch_size, predictor in predictors.items():
        # The session's batch-1 Predictor may also have run other tests' images: only the
        # programs of these sizes count, one per size and batch.
        fused = [key for key in predictor._programs if key[0] is True and key[1][1:3] in shapes]
        assert sorted(key[1][1:3] for key in fused) == sorted(shapes), batch_size
        assert all(key[1][0] == batch_size for key in fused), batch_size
    assert len(events) == len(shapes)


# ---------------------------------------------------------------------------- errors


def test_missing_image_is_named(predictors, variables, config, tmp_path):
    missing = str(tmp_path / "nowhere.jpg")
    with pytest.raises(FileNotFoundError, match="nowhere.jpg"):
        list(predictors[True].predict_many([(0, missing)], fail_fast=True))
    with pytest.raises(FileNotFoundError, match="nowhere.jpg"):
        predict.predict(variables, missing, config=config)
    with pytest.raises(FileNotFoundError, match="nowhere.jpg"):
        predict_command.image_files([missing])


def test_corrupt_image_is_named(predictors, tmp_path):
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"this is not a JPEG file")
    with pytest.raises(ValueError, match="corrupt.jpg"):
        list(predictors[True].predict_many([(0, str(corrupt))], fail_fast=True))
    # Without fail_fast the image is skipped with a warning naming it.
    with pytest.warns(predict.SkippedImageWarning, match="corrupt.jpg.*skipped"):
        assert list(predictors[True].predict_many([(0, str(corrupt))])) == []


def test_empty_folder_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match=f"No image files .* in folder {re.escape(str(tmp_path))}"):
        predict_command.image_files([str(tmp_path)])
    with pytest.raises(SystemExit) as exit_info:
        cli.run_main(
            predict_command.main,
            [
                str(tmp_path),
                "--config",
                CONFIG,
                "--state_dict",
                STATE_DICT,
                "--output_dir",
                str(tmp_path / "out"),
            ],
        )
    assert exit_info.value.code == 2
    assert "No image files" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_inputs_sharing_a_file_name_are_rejected(tmp_path, capsys):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "photo.jpg").write_bytes(b"")
    with pytest.raises(errors.UsageError, match=r"\['photo'\]"):
        predict_command.parse_args(
            [
                str(tmp_path / "a"),
                str(tmp_path / "b" / "photo.jpg"),
                "--config",
                CONFIG,
                "--output_dir",
                "unused",
            ]
        )


@pytest.mark.parametrize("flag, value", [("--panel_joint", "left_tail"), ("--batch_size", "0")])
def test_bad_cli_options_are_rejected(flag, value):
    with pytest.raises(errors.UsageError, match=f"{flag}={value}"):
        predict_command.parse_args(
            [GOLDEN_IMAGE, "--config", CONFIG, "--output_dir", "unused", flag, value]
        )


def test_batch_size_must_be_positive(config, variables):
    with pytest.raises(ValueError, match="batch_size"):
        predict.Predictor.from_config(config, variables, batch_size=0)


def test_image_ids_never_collide():
    assert predict_command.image_ids(["a/000000197388.jpg", "b/12.png"]) == [197388, 12]
    assert predict_command.image_ids(["photo.jpg", "5.jpg", "x.jpg"]) == [0, 1, 2]
    assert predict_command.image_ids(["a/7.jpg", "b/007.jpg"]) == [0, 1]
