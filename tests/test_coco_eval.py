"""COCO keypoint evaluation on the bundled mini sets: sanity AP, perturbations, bad input."""

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from logocap_jax.evaluation import coco_eval
from logocap_jax.evaluation.coco_eval import STAT_NAMES

DATA = Path(__file__).resolve().parents[1] / "data"
COCO_MINI = DATA / "coco_mini" / "annotations" / "person_keypoints_mini.json"
OCHUMAN_MINI = DATA / "ochuman_mini" / "annotations" / "person_keypoints_mini.json"

# OCHuman people are ~500 px tall, so a few px keep every OKS above 0.95; 10 px does not.
SHIFT_PX = {"coco_mini": 3.0, "ochuman_mini": 10.0}


@pytest.fixture(scope="module", params=["coco_mini", "ochuman_mini"])
def named_gt(request):
    path = {"coco_mini": COCO_MINI, "ochuman_mini": OCHUMAN_MINI}[request.param]
    return request.param, coco_eval.load_annotations(path)


@pytest.fixture(scope="module")
def coco_gt():
    return coco_eval.load_annotations(COCO_MINI)


def _raw(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _write(path, payload):
    path.write_text(json.dumps(payload), encoding="utf-8")
    return path


def test_ground_truth_as_results_gives_perfect_scores(named_gt):
    _, gt = named_gt
    results = coco_eval.ground_truth_as_results(gt)
    stats = coco_eval.evaluate_keypoints(gt, results)
    assert set(stats) == set(STAT_NAMES)
    assert abs(stats["AP"] - 1.0) < 1e-9
    assert abs(stats["AR"] - 1.0) < 1e-9
    # -1 marks an area range without ground truth (OCHuman has no medium persons).
    assert all(value in (1.0, -1.0) for value in stats.values()), stats


def test_ground_truth_as_results_skips_crowd_and_unlabelled(coco_gt):
    results = coco_eval.ground_truth_as_results(coco_gt)
    usable = [
        a for a in coco_gt.dataset["annotations"] if not a["iscrowd"] and a["num_keypoints"] > 0
    ]
    assert len(results) == len(usable)
    assert all(r["score"] == 1.0 and len(r["keypoints"]) == 51 for r in results)


def test_shifted_keypoints_lower_ap(named_gt):
    name, gt = named_gt
    results = coco_eval.ground_truth_as_results(gt)
    for entry in results:
        keypoints = np.asarray(entry["keypoints"]).reshape(17, 3)
        keypoints[:, :2] += SHIFT_PX[name]
        entry["keypoints"] = keypoints.ravel().tolist()
    stats = coco_eval.evaluate_keypoints(gt, results)
    assert 0.0 < stats["AP"] < 1.0


def test_empty_results_give_zeros(named_gt):
    _, gt = named_gt
    assert coco_eval.evaluate_keypoints(gt, []) == {name: 0.0 for name in STAT_NAMES}


def test_image_ids_restrict_the_evaluation(coco_gt):
    image_ids = sorted(coco_gt.getImgIds())[:10]
    results = coco_eval.ground_truth_as_results(coco_gt, image_ids)
    assert coco_eval.evaluate_keypoints(coco_gt, results, image_ids)["AP"] == pytest.approx(1.0)
    # Over all images, the people of the other images count as missed.
    assert coco_eval.evaluate_keypoints(coco_gt, results)["AR"] < 1.0


def test_results_are_not_modified_and_bbox_is_optional(coco_gt):
    results = coco_eval.ground_truth_as_results(coco_gt)
    for entry in results:
        del entry["bbox"]
    before = copy.deepcopy(results)
    stats = coco_eval.evaluate_keypoints(coco_gt, results)
    assert results == before
    assert stats["AP"] == pytest.approx(1.0)


def test_missing_file_is_named(tmp_path):
    path = tmp_path / "nowhere.json"
    with pytest.raises(FileNotFoundError, match="nowhere.json"):
        coco_eval.load_annotations(path)


def test_non_json_file_is_named(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("this is { not json", encoding="utf-8")
    with pytest.raises(ValueError, match=r"broken\.json.*JSON"):
        coco_eval.load_annotations(path)


def test_missing_annotations_key_is_named(tmp_path):
    data = _raw(COCO_MINI)
    del data["annotations"]
    path = _write(tmp_path / "no_anns.json", data)
    with pytest.raises(ValueError, match=r"no_anns\.json.*'annotations'"):
        coco_eval.load_annotations(path)


def test_annotation_without_keypoints_is_named(tmp_path):
    data = _raw(OCHUMAN_MINI)
    del data["annotations"][2]["keypoints"]
    path = _write(tmp_path / "bad_ann.json", data)
    with pytest.raises(ValueError, match=r"annotations\[2\].*keypoints"):
        coco_eval.load_annotations(path)


def test_category_without_keypoints_is_rejected(tmp_path):
    data = _raw(OCHUMAN_MINI)
    del data["categories"][0]["keypoints"]
    path = _write(tmp_path / "no_kp_names.json", data)
    with pytest.raises(ValueError, match="not a COCO person-keypoint file"):
        coco_eval.load_annotations(path)


def test_image_info_file_loads_for_results_only(tmp_path):
    # Mimics image_info_test-dev2017.json: no annotations, categories without keypoints.
    data = _raw(COCO_MINI)
    del data["annotations"]
    data["categories"] = [{"supercategory": "person", "id": 1, "name": "person"}]
    path = _write(tmp_path / "image_info_mini.json", data)
    gt = coco_eval.load_annotations(path, results_only=True)
    assert not coco_eval.can_evaluate(gt)
    assert len(gt.getImgIds()) == len(data["images"])
    with pytest.raises(ValueError, match="no annotations"):
        coco_eval.evaluate_keypoints(gt, [])
    assert coco_eval.can_evaluate(coco_eval.load_annotations(COCO_MINI))


def test_results_entry_with_50_values_is_named(coco_gt):
    results = coco_eval.ground_truth_as_results(coco_gt)
    results[3]["keypoints"] = results[3]["keypoints"][:50]
    with pytest.raises(ValueError, match=r"results\[3\].*50 keypoint values.*51"):
        coco_eval.evaluate_keypoints(coco_gt, results)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("image_id", 123456789, "image id 123456789"),
        ("score", float("nan"), "non-finite score"),
        ("category_id", 2, "category_id 2"),
    ],
)
def test_bad_results_entries_are_named(coco_gt, field, value, message):
    results = coco_eval.ground_truth_as_results(coco_gt)
    results[1][field] = value
    with pytest.raises(ValueError, match=rf"results\[1\].*{message}"):
        coco_eval.evaluate_keypoints(coco_gt, results)


def test_format_table_matches_table_1_layout():
    stats = dict(zip(STAT_NAMES, [0.6960, 0.8751, 0.759, 0.641, 0.78, 0.749, 0.9, 0.8, 0.7, 0.8]))
    assert coco_eval.format_table(stats, "LOGO-CAP W32").splitlines() == [
        "| model | AP / AP50 / AP75 / APM / APL | AR |",
        "|---|---|---|",
        "| LOGO-CAP W32 | 69.6 / 87.5 / 75.9 / 64.1 / 78.0 | 74.9 |",
    ]
    stats["APM"] = -1.0
    assert coco_eval.format_table(stats, "x", header=False) == (
        "| x | 69.6 / 87.5 / 75.9 / - / 78.0 | 74.9 |"
    )


def test_save_results_and_stats_round_trip(tmp_path, coco_gt):
    results = coco_eval.ground_truth_as_results(coco_gt)[:2]
    results[0]["score"] = np.float32(0.5)
    results[0]["keypoints"] = np.asarray(results[0]["keypoints"], dtype=np.float32)
    path = tmp_path / "out" / "nested" / "results.json"
    coco_eval.save_results(path, results)
    loaded = _raw(path)
    assert len(loaded) == 2 and loaded[0]["score"] == 0.5
    assert loaded[1] == results[1]
    assert coco_eval.evaluate_keypoints(coco_gt, loaded)["AP"] > 0.0

    stats = coco_eval.evaluate_keypoints(coco_gt, coco_eval.ground_truth_as_results(coco_gt))
    stats_path = tmp_path / "stats" / "stats.json"
    coco_eval.save_stats(stats_path, stats)
    assert _raw(stats_path) == stats
