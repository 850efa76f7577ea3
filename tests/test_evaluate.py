"""eval.py end to end: golden results and COCOeval stats, OCHuman run, speed report, multi-scale,
bad input.

eval.py's `main` (logocap_jax/commands/eval.py) is run in-process. The tiny golden model
scores AP 0 against the real annotations of image 197388, which would make "same stats" vacuous,
so a second annotation file turns the official noflip results into ground truth, each person
shifted by a different fraction of its size: its AP / AR lie strictly between 0 and 1 and depend
on every predicted keypoint. Tolerances are those of test_predict.py (see there).
"""

import importlib
import json
import re
from pathlib import Path

import numpy as np
import pytest

from logocap_jax.commands import cli
from logocap_jax.evaluation import coco_eval
from logocap_jax.inference import pipeline

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "data" / "golden"
STATE_DICT = GOLDEN / "tiny_state_dict.npz"
CONFIG = ROOT / "configs" / "tiny.py"
COCO_IMAGES = ROOT / "data" / "coco_mini" / "images"
OCHUMAN = ROOT / "data" / "ochuman_mini"
GOLDEN_ID = 197388
JSON_XY_ATOL = 1e-3 * 392 / 128
SCORE_ATOL = 1e-4
# Shift of each pseudo ground-truth person, as a fraction of sqrt(area): spreads the OKS of the
# official results over the COCOeval thresholds 0.5 ... 0.95.
PSEUDO_SHIFTS = (0.0, 0.02, 0.04, 0.06, 0.1)
OUTPUT_FILES = ("results.json", "stats.json", "speed.json", "report.md")


@pytest.fixture(scope="module")
def eval_main():
    return importlib.import_module("logocap_jax.commands.eval").main


def read_json(path):
    with open(path) as f:
        return json.load(f)


def read_stats(output_dir):
    """The COCO stats of stats.json, after checking that no image was skipped."""
    stats = read_json(output_dir / "stats.json")
    assert stats.pop("skipped_images") == stats.pop("partially_decoded_images") == []
    return stats


def write_json(path, payload):
    path.write_text(json.dumps(payload))
    return path


def golden_results(flip):
    name = "tiny_forward_results.json" if flip else "tiny_forward_results_noflip.json"
    return read_json(GOLDEN / name)


def subset_file(tmp_path):
    """The official annotations of image 197388 alone, as a COCO-format file."""
    data = read_json(GOLDEN / "person_keypoints_subset.json")
    data["images"] = [im for im in data["images"] if im["id"] == GOLDEN_ID]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] == GOLDEN_ID]
    return write_json(tmp_path / "subset_197388.json", data)


def pseudo_ground_truth_file(tmp_path):
    """Image 197388 with the official noflip people (shifted, see PSEUDO_SHIFTS) as annotations."""
    data = read_json(subset_file(tmp_path))
    annotations = []
    for index, (result, shift) in enumerate(zip(golden_results(flip=False), PSEUDO_SHIFTS)):
        keypoints = np.reshape(result["keypoints"], (17, 3)).copy()
        x, y, w, h = result["bbox"]
        keypoints[:, :2] += shift * np.sqrt(w * h)
        keypoints[:, 2] = 2
        annotations.append(
            {
                "id": index + 1,
                "image_id": GOLDEN_ID,
                "category_id": 1,
                "iscrowd": 0,
                "num_keypoints": 17,
                "area": w * h,
                "bbox": [x, y, w, h],
                "segmentation": [],
                "keypoints": keypoints.ravel().tolist(),
            }
        )
    data["annotations"] = annotations
    return write_json(tmp_path / "pseudo_197388.json", data)


def run(eval_main, annotations, images, output_dir, *flags):
    return eval_main(
        [
            "--config",
            str(CONFIG),
            "--state_dict",
            str(STATE_DICT),
            "--annotations",
            str(annotations),
            "--images",
            str(images),
            "--output_dir",
            str(output_dir),
            *flags,
        ]
    )


def assert_matches_golden(results, golden):
    assert len(results) == len(golden) > 0
    for ours, gold in zip(results, golden):
        assert ours["image_id"] == gold["image_id"] == GOLDEN_ID
        ours_kp, gold_kp = (np.reshape(r["keypoints"], (17, 3)) for r in (ours, gold))
        np.testing.assert_allclose(ours_kp[:, :2], gold_kp[:, :2], rtol=0, atol=JSON_XY_ATOL)
        np.testing.assert_allclose(ours_kp[:, 2], gold_kp[:, 2], rtol=0, atol=SCORE_ATOL)
        assert abs(ours["score"] - gold["score"]) <= SCORE_ATOL
        np.testing.assert_allclose(ours["bbox"], gold["bbox"], rtol=0, atol=2 * JSON_XY_ATOL)


def assert_speed_report(speed, images, stages=False):
    """speed.json: every image timed, all times and rates positive, people groups complete;
    per-stage times exactly when the stages were timed (--time_stages)."""
    assert speed["images"] == images
    assert speed["compile_seconds"] > 0
    assert speed["ms_per_image"] > 0 and speed["fps"] > 0
    assert sum(group["images_in_group"] for group in speed["by_people"].values()) == images
    # Only the images and the poses, scores and flags of 30 slots cross to and from the host.
    assert speed["bytes_to_host_per_image"] <= 30 * (17 * 3 + 2) * 4
    if not stages:
        assert "stage_ms" not in speed
        return
    assert set(speed["stage_ms"]) == set(pipeline.STAGES)
    assert all(ms > 0 for ms in speed["stage_ms"].values())


# ---------------------------------------------------------------------------- golden


@pytest.fixture(scope="module")
def subset_run(eval_main, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("subset")
    annotations = subset_file(tmp)
    return annotations, tmp / "out", run(eval_main, annotations, COCO_IMAGES, tmp / "out")


def test_eval_gives_golden_results_and_stats(subset_run):
    annotations, out, result = subset_run
    assert_matches_golden(result.results, golden_results(flip=True))
    assert read_json(out / "results.json") == result.results
    gt = coco_eval.load_annotations(annotations)
    expected = coco_eval.evaluate_keypoints(gt, golden_results(flip=True), [GOLDEN_ID])
    assert read_stats(out) == pytest.approx(expected, abs=1e-9) == result.stats
    assert_speed_report(read_json(out / "speed.json"), images=1)
    report = (out / "report.md").read_text()
    assert "| model | AP / AP50 / AP75 / APM / APL | AR |" in report and "FPS" in report


def test_eval_stats_equal_official_on_pseudo_ground_truth(eval_main, tmp_path):
    annotations = pseudo_ground_truth_file(tmp_path)
    result = run(eval_main, annotations, COCO_IMAGES, tmp_path / "out", "--no_flip")
    assert_matches_golden(result.results, golden_results(flip=False))
    gt = coco_eval.load_annotations(annotations)
    expected = coco_eval.evaluate_keypoints(gt, golden_results(flip=False), [GOLDEN_ID])
    assert 0 < expected["AP"] < 1 and 0 < expected["AR"] < 1, expected
    assert result.stats == pytest.approx(expected, abs=1e-9)
    assert read_stats(tmp_path / "out") == result.stats


@pytest.mark.slow
def test_multi_scale_runs_and_differs(eval_main, subset_run, tmp_path):
    """--scales 0.5,1 averages the heatmaps of both scales. With the tiny golden weights the
    average has no positive center peak left (raw heatmaps with a negative background whose
    peaks move with the scale: center max 0.41 at scale 1, -0.69 averaged), so nobody is found;
    the run must still write complete, well-formed outputs."""
    annotations, _, single = subset_run
    out = tmp_path / "out"
    result = run(eval_main, annotations, COCO_IMAGES, out, "--scales", "0.5,1")
    for name in OUTPUT_FILES:
        assert (out / name).is_file(), name
    assert read_json(out / "results.json") == result.results
    for entry in result.results:
        assert entry["image_id"] == GOLDEN_ID and len(entry["keypoints"]) == 51
        assert np.all(np.isfinite(entry["keypoints"])) and np.isfinite(entry["score"])
    assert set(result.stats) == set(coco_eval.STAT_NAMES)
    assert_speed_report(read_json(out / "speed.json"), images=1)
    ours = np.array([r["keypoints"] for r in result.results])
    base = np.array([r["keypoints"] for r in single.results])
    assert ours.shape != base.shape or np.abs(ours - base).max() > 1.0


def test_a_config_without_flip_test_is_followed(eval_main, tmp_path):
    """A config with decode.flip_test off gives the official noflip results without --no_flip."""
    config = tmp_path / "tiny_noflip.py"
    config.write_text(
        "from logocap_jax import config_utils\n\n\ndef get_config():\n"
        f"    config = config_utils.load_config({str(CONFIG)!r})\n"
        "    config.decode.flip_test = False\n    return config\n"
    )
    result = eval_main(
        [
            "--config",
            str(config),
            "--state_dict",
            str(STATE_DICT),
            "--annotations",
            str(subset_file(tmp_path)),
            "--images",
            str(COCO_IMAGES),
            "--output_dir",
            str(tmp_path / "out"),
        ]
    )
    assert_matches_golden(result.results, golden_results(flip=False))


@pytest.mark.slow
def test_image_ids_select_the_evaluated_images(eval_main, tmp_path):
    """The whole coco_mini file, restricted to the golden image, gives the golden run."""
    mini = ROOT / "data" / "coco_mini" / "annotations" / "person_keypoints_mini.json"
    result = run(eval_main, mini, COCO_IMAGES, tmp_path / "out", "--image_ids", str(GOLDEN_ID))
    assert_matches_golden(result.results, golden_results(flip=True))
    expected = coco_eval.evaluate_keypoints(
        coco_eval.load_annotations(str(mini)), golden_results(flip=True), [GOLDEN_ID]
    )
    assert result.stats == pytest.approx(expected, abs=1e-9)
    with pytest.raises(ValueError, match=r"image ids not in .*person_keypoints_mini.json: \[1\]"):
        run(eval_main, mini, COCO_IMAGES, tmp_path / "out", "--image_ids", f"{GOLDEN_ID},1")


# ---------------------------------------------------------------------------- OCHuman


@pytest.mark.slow
def test_eval_on_ochuman_mini(eval_main, tmp_path):
    out = tmp_path / "out"
    result = run(
        eval_main,
        OCHUMAN / "annotations" / "person_keypoints_mini.json",
        OCHUMAN / "images",
        out,
        "--no_flip",
        "--time_stages",
    )
    for name in OUTPUT_FILES:
        assert (out / name).is_file(), name
    results = read_json(out / "results.json")
    assert results == result.results
    assert {r["image_id"] for r in results} <= {1, 2, 3}
    stats = read_stats(out)
    assert set(stats) == set(coco_eval.STAT_NAMES)
    assert all(-1 <= v <= 1 for v in stats.values())
    # The three images have three different network input sizes: each is still timed once,
    # after its compiling run.
    assert_speed_report(read_json(out / "speed.json"), images=3, stages=True)
    assert "all (3)" in (out / "report.md").read_text()


@pytest.mark.slow
def test_upper_bound_beats_the_model_on_ochuman_mini(eval_main, tmp_path):
    annotations = OCHUMAN / "annotations" / "person_keypoints_mini.json"
    model = run(eval_main, annotations, OCHUMAN / "images", tmp_path / "model", "--no_flip")
    oracle = run(
        eval_main,
        annotations,
        OCHUMAN / "images",
        tmp_path / "oracle",
        "--no_flip",
        "--upper_bound",
    )
    # Same candidates and scores, every joint moved towards its ground truth (moved poses can
    # merge in the pose NMS, so the counts may differ).
    assert oracle.results != model.results
    assert 0 < len(oracle.results) <= len(model.results)
    assert oracle.stats["AP"] >= model.stats["AP"]
    assert oracle.stats["AR"] >= model.stats["AR"]


# ---------------------------------------------------------------------------- errors


def test_non_coco_annotation_file_is_named(eval_main, tmp_path):
    # A results file passed as annotations: a realistic mix-up.
    not_coco = write_json(tmp_path / "results_not_annotations.json", golden_results(flip=True))
    with pytest.raises(ValueError, match="results_not_annotations.json"):
        run(eval_main, not_coco, COCO_IMAGES, tmp_path / "out")
    no_keypoints = read_json(subset_file(tmp_path))
    del no_keypoints["categories"][0]["keypoints"]
    path = write_json(tmp_path / "no_keypoint_names.json", no_keypoints)
    with pytest.raises(ValueError, match=r"no_keypoint_names.json.*not a COCO person-keypoint"):
        run(eval_main, path, COCO_IMAGES, tmp_path / "out")


def test_annotation_file_without_images_is_an_error(eval_main, tmp_path):
    data = read_json(subset_file(tmp_path))
    data["images"], data["annotations"] = [], []
    annotations = write_json(tmp_path / "no_images.json", data)
    with pytest.raises(ValueError, match="no_images.json lists no images"):
        run(eval_main, annotations, COCO_IMAGES, tmp_path / "out")


def test_missing_image_file_is_named(eval_main, tmp_path):
    data = read_json(subset_file(tmp_path))
    data["images"][0]["file_name"] = "000000999999.jpg"
    annotations = write_json(tmp_path / "missing_image.json", data)
    with pytest.raises(FileNotFoundError, match="000000999999.jpg"):
        run(eval_main, annotations, COCO_IMAGES, tmp_path / "out")


def test_missing_annotation_file_is_named(eval_main, tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nothing.json"))):
        run(eval_main, tmp_path / "nothing.json", COCO_IMAGES, tmp_path / "out")


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--annotations", "a.json"], "--annotations and --images"),
        (["--annotations", "a.json", "--images", "x", "--scales", "0.5,one"], "--scales"),
        (["--annotations", "a.json", "--images", "x", "--batch_size", "-2"], "--batch_size=-2"),
        (["--annotations", "a.json", "--images", "x", "--image_ids", "785,a"], "--image_ids"),
    ],
)
def test_bad_arguments_exit_with_usage(eval_main, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        cli.run_main(eval_main, ["--config", str(CONFIG), "--state_dict", str(STATE_DICT), *flags])
    assert exit_info.value.code == cli.EXIT_USER_ERROR
    assert message in capsys.readouterr().err
