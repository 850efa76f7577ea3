"""Parity of the heat-map / offset / OKS targets with the official pipeline (tiny_loss.npz)."""

import json
from pathlib import Path

import numpy as np
import pytest

from logocap_jax.data.augment import AugParams, augment, joints_with_center
from logocap_jax.data.targets import heatmap_targets, offset_targets, oks_ground_truth

GOLDEN = Path(__file__).parent / "data" / "golden"
INPUT_SIZE, OUTPUT_SIZE = 256, 64


def make_record(image_id: int) -> dict:
    """The COCO-reader record of one subset image (annotations in file order)."""
    with open(GOLDEN / "person_keypoints_subset.json") as f:
        coco = json.load(f)
    anns = [
        a
        for a in coco["annotations"]
        if a["image_id"] == image_id and (a["iscrowd"] == 0 or a["num_keypoints"] > 0)
    ]
    fields = {
        "keypoints": np.float32,
        "area": np.float32,
        "bbox": np.float32,
        "iscrowd": np.int32,
        "num_keypoints": np.int32,
    }
    record = {k: np.array([a[k] for a in anns], t) for k, t in fields.items()}
    record["keypoints"] = record["keypoints"].reshape(-1, 17, 3)
    return record


@pytest.fixture(scope="module", params=[0, 1])
def sample(request):
    """Golden arrays of one sample plus the record and its augmentation output."""
    golden = np.load(GOLDEN / "tiny_loss.npz")
    index = request.param
    image = (
        np.load(GOLDEN / "tiny_forward.npz")["image_raw_rgb"] if index == 0 else golden["raw_rgb_1"]
    )
    height, width = image.shape[:2]
    center, scale = golden[f"aug_{index}.center"][1], golden[f"aug_{index}.scale"][1]
    params = AugParams(
        scale / (min(height, width) / 200),
        float(golden[f"aug_{index}.rot"][1]),
        int(center[0] - width / 2),
        int(center[1] - height / 2),
        bool(golden[f"meta_{index}.HFlip"]),
    )
    record = make_record(int(golden["image_ids"][index]))
    out = augment(
        image,
        golden[f"mask_full_{index}"],
        joints_with_center(record),
        record["area"],
        params,
        input_size=INPUT_SIZE,
        output_size=OUTPUT_SIZE,
    )
    arrays = {k: golden[k][index] for k in golden.files if k.startswith("target.")}
    arrays.update(
        {k.split(".", 1)[1]: golden[k] for k in golden.files if k.startswith(f"meta_{index}.")}
    )
    return {"golden": arrays, "record": record, "params": params, "out": out}


def nchw(array):
    return array.transpose(2, 0, 1)


def test_heatmap_targets_match_golden(sample):
    out, golden = sample["out"], sample["golden"]
    heatmaps, weights = heatmap_targets(out["joints"], OUTPUT_SIZE, valid_mask=out["mask"])
    assert heatmaps.shape == (OUTPUT_SIZE, OUTPUT_SIZE, 18) and heatmaps.dtype == np.float32
    assert weights.shape == (OUTPUT_SIZE, OUTPUT_SIZE, 1) and weights.dtype == np.float32
    np.testing.assert_allclose(nchw(heatmaps), golden["target.heatmaps.t"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(nchw(weights), golden["target.heatmaps.w"], rtol=0, atol=1e-6)


def test_heatmap_weights_without_mask(sample):
    _, weights = heatmap_targets(sample["out"]["joints"], OUTPUT_SIZE)
    golden_w = sample["golden"]["target.heatmaps.w"][0]
    np.testing.assert_array_equal(weights[:, :, 0][golden_w > 0], golden_w[golden_w > 0])
    assert set(np.unique(weights)) <= {np.float32(0.1), np.float32(1.0)}


def test_offset_targets_match_golden(sample):
    out, golden = sample["out"], sample["golden"]
    offsets, weights = offset_targets(out["joints"], out["area"], OUTPUT_SIZE)
    assert offsets.shape == weights.shape == (OUTPUT_SIZE, OUTPUT_SIZE, 34)
    np.testing.assert_allclose(nchw(offsets), golden["target.offsets.t"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(nchw(weights), golden["target.offsets.w"], rtol=0, atol=1e-6)


def test_oks_ground_truth_matches_golden(sample):
    out, golden = sample["out"], sample["golden"]
    gt = oks_ground_truth(
        sample["record"], sample["params"], out["transform"], input_size=INPUT_SIZE, max_people=30
    )
    count = len(golden["areas"])
    assert gt["valid"].sum() == count and gt["valid"][:count].all()
    np.testing.assert_allclose(gt["keypoints"][:count], golden["kpts"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(gt["areas"][:count], golden["areas"], rtol=0, atol=0)
    assert not gt["keypoints"][count:].any() and not gt["areas"][count:].any()
    np.testing.assert_array_equal(gt["transform"], golden["transform"])
    # torch.inverse's float32 LU and this float64 inverse agree to one float32 ulp.
    np.testing.assert_allclose(gt["transform_inv"], golden["transform_inv"], rtol=2e-7, atol=0)
    assert gt["flip"] == bool(golden["HFlip"])


def test_oks_ground_truth_without_persons_and_overflow():
    record = {
        "keypoints": np.zeros((2, 17, 3), np.float32),
        "area": np.full(2, 50.0, np.float32),
        "iscrowd": np.array([1, 0], np.int32),
        "num_keypoints": np.array([3, 0], np.int32),
    }
    gt = oks_ground_truth(
        record, AugParams(1.0, 0.0, 0, 0, False), np.eye(3), input_size=256, max_people=4
    )
    assert not gt["valid"].any() and not gt["keypoints"].any() and not gt["areas"].any()
    record["iscrowd"][0] = 0
    with pytest.raises(ValueError):
        oks_ground_truth(
            record, AugParams(1.0, 0.0, 0, 0, False), np.eye(3), input_size=256, max_people=0
        )


def test_offset_smaller_person_wins_and_window():
    joints = np.zeros((2, 18, 3))
    joints[:, 0] = [[10.5, 10.25, 2], [12.5, 9.5, 1]]
    joints[:, 17] = [[10.9, 10.9, 1], [12.5, 10.5, 1]]
    area = np.array([400.0, 100.0])
    for order in ([0, 1], [1, 0]):
        offsets, weights = offset_targets(joints[order], area[order], 32)
        written = weights[:, :, 0] > 0
        # Union of [6, 14) and [8, 16) columns times [6, 14) rows.
        assert written.sum() == 8 * 10
        # Overlap [8, 14) x [6, 14): the smaller person (area 100) wins either way.
        np.testing.assert_allclose(
            offsets[6:14, 8:14, 0], np.broadcast_to(np.arange(8, 14) - 12.5, (8, 6))
        )
        np.testing.assert_allclose(weights[6:14, 8:14, 0], np.full((8, 6), 0.1))
        np.testing.assert_allclose(
            offsets[6:14, 6:8, 1], np.broadcast_to(np.arange(6, 14)[:, None] - 10.25, (8, 2))
        )
