"""Parity tests of back-projection, pose NMS and the COCO results against golden fixtures."""

import json
from pathlib import Path

import numpy as np
import pytest

from logocap_jax.inference import postprocess, preprocess

GOLDEN = Path(__file__).resolve().parent / "data" / "golden"
# Golden image 197388 is 640x392 (w x h), resized with short side 128.
GOLDEN_RESIZE = preprocess.inference_resize(392, 640, 128)
CASES = [
    ("tiny_forward.npz", "tiny_forward_results.json"),
    ("tiny_forward_noflip.npz", "tiny_forward_results_noflip.json"),
]
COORD_ATOL = 1e-3  # px
SCORE_ATOL = 1e-6


def _load(npz_name):
    return np.load(GOLDEN / npz_name)


def _template_pose():
    """[17, 2] pose with corners (0, 0) and (60, 80), so its extent diagonal is 100.

    The 15 other joints lie inside [20, 40] x [20, 60], so shifting them by up to 10 px
    keeps the extent and hence the NMS threshold 0.05 * 100 = 5 px.
    """
    inner = np.stack([20 + np.arange(15) % 5 * 5, 20 + np.arange(15) // 5 * 20], axis=1)
    return np.vstack([[[0, 0], [60, 80]], inner]).astype(np.float64)


@pytest.mark.parametrize("npz_name", [c[0] for c in CASES])
def test_back_project_matches_golden(npz_name):
    g = _load(npz_name)
    out = postprocess.back_project(g["model_poses"], GOLDEN_RESIZE)
    assert out.shape == g["preds_orig"].shape and out.dtype == g["preds_orig"].dtype
    np.testing.assert_allclose(out[..., :2], g["preds_orig"][..., :2], rtol=0, atol=COORD_ATOL)
    np.testing.assert_array_equal(out[..., 2], g["model_poses"][..., 2])


def test_back_project_inverts_the_resize():
    info = preprocess.inference_resize(480, 640, 512)
    trans = preprocess.affine_transform_matrix(info.center, info.scale, 0, info.size_wh)
    orig = np.array([[[0.0, 0.0, 0.3], [639.0, 479.0, 0.7], [123.4, 56.7, 0.1]]])
    net = orig.copy()
    net[..., :2] = orig[..., :2] @ trans[:, :2].T + trans[:, 2]
    np.testing.assert_allclose(postprocess.back_project(net, info), orig, rtol=0, atol=1e-9)


@pytest.mark.parametrize("npz_name", [c[0] for c in CASES])
def test_pose_nms_matches_golden(npz_name):
    g = _load(npz_name)
    keep = postprocess.pose_nms(g["preds_orig"][..., :2], g["model_scores"])
    np.testing.assert_array_equal(keep, g["nms_keep"])


def test_pose_nms_matches_golden_unit_case():
    g = _load("tiny_forward.npz")
    keep = postprocess.pose_nms(g["nms_unit_poses"], g["nms_unit_scores"])
    np.testing.assert_array_equal(keep, g["nms_unit_keep"])


def test_pose_nms_greedy_order_and_skip_quirk():
    # A matches B (3 px apart); C matches B but not A (6 px > 5 px). B, the best of
    # C's group, is already ignored, so C is dropped without ever being kept.
    base = _template_pose()
    poses = np.stack([base, base + [3, 0], base + [6, 0]])
    keep = postprocess.pose_nms(poses, np.array([0.9, 0.5, 0.3]))
    np.testing.assert_array_equal(keep, [0])


def test_pose_nms_elects_best_of_group_in_candidate_order():
    base = _template_pose()
    far = base + [1000, 0]
    poses = np.stack([base, base + [1, 1], far])
    keep = postprocess.pose_nms(poses, np.array([0.2, 0.8, 0.1]))
    np.testing.assert_array_equal(keep, [1, 2])


def test_pose_nms_ties_take_first():
    base = _template_pose()
    keep = postprocess.pose_nms(np.stack([base, base.copy()]), np.array([0.5, 0.5]))
    np.testing.assert_array_equal(keep, [0])


@pytest.mark.parametrize("n_far, expected", [(8, [0]), (9, [0, 1])])
def test_pose_nms_needs_more_than_min_joints(n_far, expected):
    # 17 - n_far joints coincide, the rest are 10 px away: 9 close joints suppress, 8 do not.
    base = _template_pose()
    other = base.copy()
    other[2 : 2 + n_far, 0] += 10
    keep = postprocess.pose_nms(np.stack([base, other]), np.array([0.9, 0.1]))
    np.testing.assert_array_equal(keep, expected)


def test_pose_nms_distance_is_strict():
    # Inner joints 3-4-5 triangles away: exactly 5 px = threshold does not count.
    base = _template_pose()
    on_threshold = base.copy()
    on_threshold[2:] += [3, 4]
    inside = base.copy()
    inside[2:] += [3, 3.9]
    scores = np.array([0.9, 0.1])
    np.testing.assert_array_equal(
        postprocess.pose_nms(np.stack([base, on_threshold]), scores), [0, 1]
    )
    np.testing.assert_array_equal(postprocess.pose_nms(np.stack([base, inside]), scores), [0])


def test_pose_nms_degenerate_pose_is_never_kept():
    # All joints at one point: zero threshold, so its own group is empty.
    poses = np.stack([np.full((17, 2), 500.0), _template_pose()])
    keep = postprocess.pose_nms(poses, np.array([0.9, 0.1]))
    np.testing.assert_array_equal(keep, [1])


def test_pose_nms_rejects_bad_shapes():
    with pytest.raises(ValueError, match="keypoints_xy"):
        postprocess.pose_nms(np.zeros((2, 17, 3)), np.zeros(2))
    with pytest.raises(ValueError, match="scores"):
        postprocess.pose_nms(np.zeros((2, 17, 2)), np.zeros(3))


@pytest.mark.parametrize("npz_name", [c[0] for c in CASES])
def test_select_people_matches_golden(npz_name):
    g = _load(npz_name)
    valid = np.ones(len(g["model_scores"]), dtype=bool)
    keypoints, scores, slots = postprocess.select_people(
        g["model_poses"], g["model_scores"], valid, GOLDEN_RESIZE
    )
    np.testing.assert_array_equal(slots, g["nms_keep"])
    assert keypoints.shape == g["person_keypoints"].shape
    np.testing.assert_allclose(
        keypoints[..., :2], g["person_keypoints"][..., :2], rtol=0, atol=COORD_ATOL
    )
    np.testing.assert_allclose(
        keypoints[..., 2], g["person_keypoints"][..., 2], rtol=0, atol=SCORE_ATOL
    )
    np.testing.assert_allclose(scores, g["person_scores"], rtol=0, atol=SCORE_ATOL)


def test_select_people_drops_invalid_slots_and_caps_by_score():
    info = preprocess.inference_resize(128, 128, 128)  # an identity resize
    base = _template_pose()
    xy = np.stack([base + [200 * i, 0] for i in range(4)])
    poses = np.concatenate([xy, np.full((4, 17, 1), 0.5)], axis=2)
    scores = np.array([0.1, 0.9, 0.4, 0.7])
    valid = np.array([True, False, True, True])
    keypoints, kept_scores, slots = postprocess.select_people(
        poses, scores, valid, info, max_people=2
    )
    np.testing.assert_array_equal(kept_scores, [0.7, 0.4])
    np.testing.assert_array_equal(slots, [3, 2])
    np.testing.assert_allclose(keypoints, poses[[3, 2]], rtol=0, atol=1e-9)
    keypoints, kept_scores, slots = postprocess.select_people(poses, scores, valid, info)
    np.testing.assert_array_equal(kept_scores, [0.1, 0.4, 0.7])
    np.testing.assert_array_equal(slots, [0, 2, 3])


@pytest.mark.parametrize("npz_name, json_name", CASES)
def test_coco_results_match_golden_json(npz_name, json_name):
    g = _load(npz_name)
    reference = json.loads((GOLDEN / json_name).read_text())
    image_id = int(_load("tiny_forward.npz")["image_id"])
    results = postprocess.coco_results(image_id, g["person_keypoints"], g["person_scores"])
    assert len(results) == len(reference)
    for ours, ref in zip(results, reference):
        assert list(ours) == list(ref)  # same keys in the same order
        assert ours["image_id"] == ref["image_id"] and ours["category_id"] == 1
        kp, ref_kp = np.reshape(ours["keypoints"], (17, 3)), np.reshape(ref["keypoints"], (17, 3))
        np.testing.assert_allclose(kp[:, :2], ref_kp[:, :2], rtol=0, atol=COORD_ATOL)
        np.testing.assert_allclose(kp[:, 2], ref_kp[:, 2], rtol=0, atol=SCORE_ATOL)
        assert abs(ours["score"] - ref["score"]) <= SCORE_ATOL
        np.testing.assert_allclose(ours["bbox"], ref["bbox"], rtol=0, atol=COORD_ATOL)
    np.testing.assert_allclose(
        [r["bbox"] for r in results], g["person_bbox"], rtol=0, atol=COORD_ATOL
    )


def test_end_to_end_from_model_outputs_to_json():
    g = _load("tiny_forward.npz")
    keypoints, scores, _ = postprocess.select_people(
        g["model_poses"], g["model_scores"], np.ones(5, dtype=bool), GOLDEN_RESIZE
    )
    results = postprocess.coco_results(int(g["image_id"]), keypoints, scores)
    reference = json.loads((GOLDEN / "tiny_forward_results.json").read_text())
    ours = np.array([r["keypoints"] + r["bbox"] + [r["score"]] for r in results])
    ref = np.array([r["keypoints"] + r["bbox"] + [r["score"]] for r in reference])
    np.testing.assert_allclose(ours, ref, rtol=0, atol=COORD_ATOL)


def test_coco_results_bbox_and_types():
    pose = np.array([[[10.0, 20.0, 0.5], [30.0, 5.0, 0.25]]])
    (result,) = postprocess.coco_results(np.int64(7), pose, np.array([0.375]))
    assert result == {
        "image_id": 7,
        "category_id": 1,
        "keypoints": [10.0, 20.0, 0.5, 30.0, 5.0, 0.25],
        "score": 0.375,
        "bbox": [10.0, 5.0, 20.0, 15.0],
    }
    assert type(result["image_id"]) is int and type(result["score"]) is float
    assert postprocess.coco_results(1, np.zeros((0, 17, 3)), np.zeros(0)) == []
