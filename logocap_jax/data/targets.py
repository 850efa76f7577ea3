"""Training targets of the official LOGO-CAP pipeline (design §3.8), numpy only.

Maps are channels-last ([R, R, C]) for the JAX model; the official ones are NCHW.
Joints come from `augment.augment` at output resolution: float [P, 18, 3] (x, y, v)
with the person center as joint 17. Keep them (and the areas) in float64 as returned
there: the official generators compute in float64 and only store float32.
"""

import numpy as np

from logocap_jax.data.augment import AugParams
from logocap_jax.data.coco_records import labelled_people
from logocap_jax.keypoints import FLIP_INDEX, NUM_JOINTS


def _inside(x: float, y: float, size: int) -> bool:
    """Whether (x, y) lies in the half-open square [0, size)^2."""
    return 0 <= x < size and 0 <= y < size


def _gaussian_box(x: float, y: float, sigma: float, size: int) -> tuple[slice, slice, np.ndarray]:
    """Unnormalised Gaussian around (x, y) on its official box, clipped to the map.

    Returns:
      (rows, cols, values): slices of the map and float64 [rows, cols] values
      exp(-d^2 / (2 sigma^2)) at the integer pixels of
      [floor(x - 3 sigma - 1), ceil(x + 3 sigma + 2)) in each axis.
    """
    x0, y0 = max(0, int(np.floor(x - 3 * sigma - 1))), max(0, int(np.floor(y - 3 * sigma - 1)))
    x1 = min(int(np.ceil(x + 3 * sigma + 2)), size)
    y1 = min(int(np.ceil(y + 3 * sigma + 2)), size)
    xs = np.arange(x0, x1)[None, :]
    ys = np.arange(y0, y1)[:, None]
    values = np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2))
    return slice(y0, y1), slice(x0, x1), values


def heatmap_targets(
    joints: np.ndarray,
    output_size: int,
    *,
    sigma: float = 2.0,
    center_sigma: float = 4.0,
    bg_weight: float = 0.1,
    valid_mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Keypoint + center heat-map targets and their pixel weights (paper Eq. 4).

    Args:
      joints: float [P, 18, 3] joints at output resolution.
      output_size: side R of the output grid.
      sigma: Gaussian sigma of the 17 keypoints, output px.
      center_sigma: Gaussian sigma of the center channel, output px.
      bg_weight: weight of pixels outside every drawn Gaussian box.
      valid_mask: optional float/bool [R, R] warped loss mask; the weights are
        multiplied by it (the official 'heatmaps.w'). Without it the weights
        are the bare 1 / bg_weight map.

    Returns:
      heatmaps: float32 [R, R, 18], per-channel max over persons.
      weights: float32 [R, R, 1], 1 inside any drawn box (any person, any
        channel), bg_weight elsewhere, times valid_mask.
    """
    heatmaps = np.zeros((output_size, output_size, NUM_JOINTS + 1), np.float32)
    covered = np.zeros((output_size, output_size), bool)
    for person in np.asarray(joints).reshape(-1, NUM_JOINTS + 1, 3):
        for channel, (x, y, v) in enumerate(person):
            if v <= 0 or not _inside(x, y, output_size):
                continue
            joint_sigma = center_sigma if channel == NUM_JOINTS else sigma
            rows, cols, values = _gaussian_box(x, y, joint_sigma, output_size)
            heatmaps[rows, cols, channel] = np.maximum(heatmaps[rows, cols, channel], values)
            covered[rows, cols] = True
    weights = np.where(covered, np.float32(1.0), np.float32(bg_weight))[:, :, None]
    if valid_mask is not None:
        weights = weights * np.asarray(valid_mask, np.float32)[:, :, None]
    return heatmaps, weights.astype(np.float32)


def _center_window(center: np.ndarray, radius: int, size: int) -> tuple[slice, slice] | None:
    """The official asymmetric [c - r, c + r) window around a person center, or None.

    The center is truncated toward zero with int() (so -1 < x < 0 counts as column 0,
    an official quirk) and must have v >= 1 and lie in [0, size)^2.
    """
    cx, cy, cv = int(center[0]), int(center[1]), int(center[2])
    if cv < 1 or not _inside(cx, cy, size):
        return None
    rows = slice(max(cy - radius, 0), min(cy + radius, size))
    cols = slice(max(cx - radius, 0), min(cx + radius, size))
    return rows, cols


def offset_targets(
    joints: np.ndarray, area: np.ndarray, output_size: int, *, radius: int = 4
) -> tuple[np.ndarray, np.ndarray]:
    """Center-to-keypoint offset targets and weights (paper Eqs. 5-6).

    Around each person's center, every pixel of the window stores, per visible
    in-map keypoint, (pixel - keypoint). Where windows of several persons overlap,
    a pixel already holding a non-zero offset for that keypoint is only overwritten
    when the area last written at that pixel (by any keypoint) is not smaller than
    the new person's area; this reproduces the official 'smaller person wins' rule,
    including its float32-stored area map.

    Args:
      joints: float [P, 18, 3] joints at output resolution.
      area: float [P] person areas (input px^2, as returned by `augment`).
      output_size: side R of the output grid.
      radius: half-size of the window around the center.

    Returns:
      offsets: float32 [R, R, 34], channel 2j = dx, 2j + 1 = dy of keypoint j.
      weights: float32 [R, R, 34], 1 / sqrt(area) where an offset was written, else 0.
    """
    offsets = np.zeros((output_size, output_size, 2 * NUM_JOINTS), np.float32)
    weights = np.zeros_like(offsets)
    area_map = np.zeros((output_size, output_size), np.float32)
    grid_y, grid_x = np.mgrid[:output_size, :output_size]
    joints = np.asarray(joints).reshape(-1, NUM_JOINTS + 1, 3)
    area = np.asarray(area, np.float64).reshape(-1)
    for person, person_area in zip(joints, area):
        window = _center_window(person[NUM_JOINTS], radius, output_size)
        if window is None:
            continue
        for joint, (x, y, v) in enumerate(person[:NUM_JOINTS]):
            if v <= 0 or not _inside(x, y, output_size):
                continue
            channels = slice(2 * joint, 2 * joint + 2)
            occupied = np.any(offsets[window][:, :, channels] != 0, axis=-1)
            write = ~(occupied & (area_map[window] < person_area))
            delta = np.stack([grid_x[window] - x, grid_y[window] - y], axis=-1)
            offsets[window + (channels,)][write] = delta[write]
            weights[window + (channels,)][write] = 1.0 / np.sqrt(person_area)
            area_map[window][write] = person_area
    return offsets, weights


def _in_crop(keypoints: np.ndarray, transform: np.ndarray, input_size: int) -> np.ndarray:
    """The official in-crop test of float32 [..., 3] keypoints under a float32 [3, 3] matrix.

    Returns bool [...]: 0 <= x' < input_size and 0 <= y' <= input_size, evaluated in
    float32 like the official torch code (the y bound uses the width, with <=).
    """
    x, y = keypoints[..., 0], keypoints[..., 1]
    tx = x * transform[0, 0] + y * transform[0, 1] + transform[0, 2]
    ty = x * transform[1, 0] + y * transform[1, 1] + transform[1, 2]
    return (tx >= 0) & (tx < input_size) & (ty >= 0) & (ty <= input_size)


def oks_ground_truth(
    record: dict, params: AugParams, transform: np.ndarray, *, input_size: int, max_people: int
) -> dict:
    """Ground-truth persons for the OKS / KAM losses, padded to a static size.

    Only non-crowd annotations with at least one labelled keypoint take part. The
    keypoints stay in original-image pixels (the loss maps predictions back there),
    re-ordered left/right when the sample is flipped, and v is zeroed unless the
    transformed point satisfies 0 <= x' < input_size and 0 <= y' <= input_size (the
    official test uses the image width for y, with <=), x' being the unflipped
    input-crop coordinate.

    Padding rows are all-zero persons (v = 0, area 0). The official pipeline uses a
    single such dummy when an image has no GT person; a zero person gets OKS 0 with
    every candidate, and since it follows all real persons the first-index argmax
    never prefers it over a real one, so zero padding reproduces the official
    assignment exactly. `valid` marks the real rows for anything else.

    Args:
      record: COCO record ('keypoints' float [P, 17, 3], 'area' [P], 'iscrowd' [P],
        'num_keypoints' [P]).
      params: the augmentation draw (only `flip` is used).
      transform: float [3, 3] original -> input matrix (`augment(...)['transform']`).
      input_size: side of the network input.
      max_people: static number of GT rows.

    Returns:
      dict with 'keypoints' float32 [max_people, 17, 3], 'areas' float32 [max_people]
      (COCO areas, original px^2), 'valid' bool [max_people], 'transform' float32
      [3, 3] and 'transform_inv' float32 [3, 3] (input -> original; the float32
      matrix inverted in float64, within 1 float32 ulp of the official
      torch.inverse), and 'flip' bool.

    Raises:
      ValueError: if the image has more than max_people GT persons.
    """
    keep = labelled_people(record)
    keypoints = np.asarray(record["keypoints"], np.float32).reshape(-1, NUM_JOINTS, 3)[keep]
    areas = np.asarray(record["area"], np.float32).reshape(-1)[keep]
    if len(areas) > max_people:
        raise ValueError(f"{len(areas)} GT persons exceed max_people={max_people}")
    if params.flip:
        keypoints = keypoints[:, list(FLIP_INDEX)]
    t = np.asarray(transform, np.float32)
    keypoints[:, :, 2] *= _in_crop(keypoints, t, input_size)
    transform_inv = np.linalg.inv(t.astype(np.float64)).astype(np.float32)
    return padded_people(keypoints, areas, t, transform_inv, params.flip, max_people)


def padded_people(keypoints, areas, transform, transform_inv, flip, max_people: int) -> dict:
    """P persons' OKS ground truth padded to max_people rows, as a training batch holds it.

    Args:
      keypoints: [P, K, 3] original-image keypoints (flipped joint order if flip).
      areas: [P] areas.
      transform, transform_inv: [3, 3] the crop's affine map and its inverse.
      flip: whether the crop is mirrored.
      max_people: the rows; P must not exceed it.

    Returns:
      {"keypoints": [max_people, K, 3], "areas": [max_people], "valid": [max_people] bool,
      "transform", "transform_inv": float32 [3, 3], "flip": bool}.
    """
    count = len(areas)
    padded = np.zeros((max_people, NUM_JOINTS, 3), np.float32)
    padded[:count] = keypoints
    padded_areas = np.zeros(max_people, np.float32)
    padded_areas[:count] = areas
    return {
        "keypoints": padded,
        "areas": padded_areas,
        "valid": np.arange(max_people) < count,
        "transform": np.asarray(transform, np.float32),
        "transform_inv": np.asarray(transform_inv, np.float32),
        "flip": bool(flip),
    }
