"""The official implementation's arrays (tests/data/golden, see its README) in the layouts the
tests use: one loader, the training batch of the official step, its padded ground truth.

Every test that starts from an official input reads it from these files rather than deriving it
again: the images and targets of the training step went through OpenCV's warp, whose rounding
differs between CPUs (a few pixels one level off), so a test that re-derives them compares
another input.
"""

from pathlib import Path

import numpy as np

from logocap_jax.data import targets
from logocap_jax.keypoints import IMAGENET_MEAN, IMAGENET_STD

GOLDEN = Path(__file__).parent / "data" / "golden"
ROOT = Path(__file__).parent.parent
# Loss term names of this project -> the official step's keys in tiny_loss.npz.
LOSS_TERMS = {
    "heatmaps": "loss.heatmaps",
    "offsets": "loss.offsets",
    "oks": "loss.oks",
    "refined_heatmaps": "loss.hm",
    "total": "loss.total",
}
MAX_PEOPLE = 6  # rows of padded ground truth: the golden images hold 5 and 4 people
# OpenCV's bilinear warp rounds a few values differently from one CPU to another (its SIMD code
# differs per instruction set). Measured on the training crop of image 196141: 9 of 196,608
# values one level off between an AMD EPYC (Zen 4) and the Intel Xeon that made the fixtures,
# 10 with OpenCV's optimised code turned off (cv2.setUseOptimized(False)).
WARP_MAX_LEVELS = 2
WARP_MAX_FRACTION = 5e-4


def load(name: str, *, skip: tuple[str, ...] = ()) -> dict:
    """{key: array} of one golden .npz, without the keys starting with any of `skip`."""
    with np.load(GOLDEN / name) as data:
        return {key: data[key] for key in data.files if not key.startswith(skip)}


def nhwc(array) -> np.ndarray:
    """PyTorch's [B, C, H, W] as the JAX model's [B, H, W, C]."""
    return np.moveaxis(np.asarray(array), 1, -1)


def padded_ground_truth(golden: dict, index: int, max_people: int = MAX_PEOPLE) -> dict:
    """One golden image's OKS ground truth, padded to max_people rows as the data pipeline does."""
    return targets.padded_people(
        golden[f"meta_{index}.kpts"],
        golden[f"meta_{index}.areas"],
        golden[f"meta_{index}.transform"],
        golden[f"meta_{index}.transform_inv"],
        golden[f"meta_{index}.HFlip"],
        max_people,
    )


def training_batch(golden: dict) -> dict:
    """The official training step's batch (tiny_loss.npz) in the layout of
    `data.input_pipeline`: the stored images and targets, channels-last."""
    people = [padded_ground_truth(golden, index) for index in range(2)]
    batch = {key: np.stack([person[key] for person in people]) for key in people[0]}
    batch["images"] = nhwc(golden["images"])
    for key, name in [
        ("heatmaps", "heatmaps.t"),
        ("heatmap_weights", "heatmaps.w"),
        ("offsets", "offsets.t"),
        ("offset_weights", "offsets.w"),
    ]:
        batch[key] = nhwc(golden[f"target.{name}"])
    return batch


def assert_warp_matches(image: np.ndarray, official: np.ndarray) -> None:
    """A uint8 RGB image [H, W, 3] warped by OpenCV against the official normalised one
    [H, W, 3]: at most WARP_MAX_FRACTION of the values off, by at most WARP_MAX_LEVELS."""
    assert image.dtype == np.uint8 and image.shape == official.shape, (image.shape, official.shape)
    levels = np.rint((official * IMAGENET_STD + IMAGENET_MEAN) * 255)
    off = np.abs(image.astype(np.float64) - levels)
    assert off.max() <= WARP_MAX_LEVELS, f"a value {off.max():.0f} levels off"
    assert np.mean(off > 0) <= WARP_MAX_FRACTION, f"{np.sum(off > 0)} of {off.size} values off"
