"""Training-time geometric augmentation of the official LOGO-CAP pipeline.

The official code draws a random similarity (scale, rotation, translation), warps the
image to the square network input and the loss mask / joints to the square output
grid with the same crop, and then flips everything horizontally with probability 0.5.
Everything here is numpy + cv2 so that it can run inside data-loader workers, and
every random draw comes from an explicit ``np.random.Generator``.

Conventions (design §3.10): integer pixel indices are pixel centres, the output
grid is corner-aligned with the input grid (x_out = x_in * output_size / input_size),
and the flip maps x to ``size - 1 - x`` on each grid separately.
"""

from typing import NamedTuple

import cv2
import numpy as np

from logocap_jax.inference.preprocess import SCALE_UNIT_PX
from logocap_jax.keypoints import FLIP_INDEX_WITH_CENTER, NUM_JOINTS

# Persons smaller than this (segmentation area, original px^2) get no center joint.
_MIN_CENTER_AREA = 32**2


class AugParams(NamedTuple):
    """One draw of the random affine augmentation.

    Attributes:
      scale_factor: multiplier of the short-side crop; the crop is
        ``min(h, w) * scale_factor`` original pixels wide.
      rotation: rotation in degrees (positive = counter-clockwise content rotation,
        as in the official ``RandomAffineTransform``).
      dx: horizontal shift of the crop center, integer original pixels.
      dy: vertical shift of the crop center, integer original pixels.
      flip: whether the horizontal flip is applied after the affine warp.
    """

    scale_factor: float
    rotation: float
    dx: int
    dy: int
    flip: bool


def sample_augmentation(
    rng: np.random.Generator,
    *,
    image_hw: tuple[int, int],
    max_rotation: float = 30.0,
    min_scale: float = 0.75,
    max_scale: float = 1.5,
    max_translate: float = 40.0,
    flip_prob: float = 0.5,
) -> AugParams:
    """Draws augmentation parameters with the official distributions.

    The draws happen in the official order (scale, rotation, dx, dy, flip). The
    translation bounds are ``int(-max_translate * s)`` and ``int(max_translate * s)``
    (upper bound exclusive), with ``s = min(h, w) / 200 * scale_factor``, so they are
    in original pixels and grow with the crop.

    Args:
      rng: source of all randomness.
      image_hw: (height, width) of the original image.
      max_rotation: rotation is uniform in [-max_rotation, max_rotation) degrees.
      min_scale: lower bound of the uniform scale factor.
      max_scale: upper (exclusive) bound of the uniform scale factor.
      max_translate: translation bound per scale unit; 0 disables translation.
      flip_prob: probability of the horizontal flip.

    Returns:
      The drawn AugParams.
    """
    scale_factor = rng.random() * (max_scale - min_scale) + min_scale
    rotation = (rng.random() * 2.0 - 1.0) * max_rotation
    dx = dy = 0
    if max_translate > 0:
        scale = min(image_hw) / SCALE_UNIT_PX * scale_factor
        low, high = int(-max_translate * scale), int(max_translate * scale)
        dx = int(rng.integers(low, high))
        dy = int(rng.integers(low, high))
    flip = bool(rng.random() < flip_prob)
    return AugParams(float(scale_factor), float(rotation), dx, dy, flip)


def crop_center_scale(params: AugParams, image_hw: tuple[int, int]) -> tuple[np.ndarray, float]:
    """Returns the crop center (float64 [2], x then y, original px) and scale (200 px units)."""
    height, width = image_hw
    center = np.array([width / 2.0 + params.dx, height / 2.0 + params.dy])
    scale = min(height, width) / SCALE_UNIT_PX * params.scale_factor
    return center, scale


def affine_matrix(
    center: np.ndarray, scale: float, rotation_deg: float, resolution: int
) -> np.ndarray:
    """Builds the official crop matrix mapping original pixels to a square grid.

    The crop of side ``200 * scale`` centred at ``center`` is mapped corner-aligned onto
    ``resolution`` x ``resolution`` pixels and then rotated by ``-rotation_deg`` about the
    grid centre ``(resolution / 2, resolution / 2)``.

    Args:
      center: float [2], crop center (x, y) in original pixels.
      scale: crop size in units of 200 original pixels.
      rotation_deg: augmentation rotation in degrees.
      resolution: side of the target grid in pixels.

    Returns:
      float64 [3, 3] homogeneous matrix (last row 0, 0, 1).
    """
    zoom = resolution / (SCALE_UNIT_PX * scale)
    crop = np.array(
        [
            [zoom, 0.0, resolution * (0.5 - float(center[0]) / (SCALE_UNIT_PX * scale))],
            [0.0, zoom, resolution * (0.5 - float(center[1]) / (SCALE_UNIT_PX * scale))],
            [0.0, 0.0, 1.0],
        ]
    )
    # Composing an identity rotation would perturb the translation by rounding.
    if rotation_deg == 0:
        return crop
    angle = -rotation_deg * np.pi / 180.0
    sin, cos = np.sin(angle), np.cos(angle)
    rotate = np.array([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]])
    to_origin = np.eye(3)
    to_origin[:2, 2] = -resolution / 2.0
    from_origin = np.eye(3)
    from_origin[:2, 2] = resolution / 2.0
    return from_origin @ (rotate @ (to_origin @ crop))


def joints_with_center(record: dict) -> np.ndarray:
    """Appends the person-center joint to the 17 COCO keypoints.

    Args:
      record: COCO record with 'keypoints' float [P, 17, 3], 'area' float [P] and
        'bbox' float [P, 4] (x, y, w, h).

    Returns:
      float64 [P, 18, 3] joints (x, y, v) in original pixels. float64 rather than
      float32 because the official pipeline keeps the joints in float64 until the
      targets are drawn; a float32 center would move the offset targets by ~1e-5 px.
      The center is (0, 0, 0) when area < 32^2, else the keypoint sum divided by the
      labelled-keypoint count (unlabelled COCO keypoints are (0, 0), so this is their
      mean, computed the official way) with v = 1, or the bbox center when no
      keypoint is labelled.
    """
    keypoints = np.asarray(record["keypoints"], np.float64).reshape(-1, NUM_JOINTS, 3)
    area = np.asarray(record["area"], np.float64).reshape(-1)
    bbox = np.asarray(record["bbox"], np.float64).reshape(-1, 4)
    joints = np.zeros((keypoints.shape[0], NUM_JOINTS + 1, 3))
    joints[:, :NUM_JOINTS] = keypoints
    num_labelled = np.count_nonzero(keypoints[:, :, 2], axis=1)
    bbox_center = (2.0 * bbox[:, :2] + bbox[:, 2:]) / 2.0
    mean_center = keypoints[:, :, :2].sum(axis=1) / np.maximum(num_labelled, 1)[:, None]
    center = np.where((num_labelled > 0)[:, None], mean_center, bbox_center)
    has_center = area >= _MIN_CENTER_AREA
    joints[:, NUM_JOINTS, :2] = np.where(has_center[:, None], center, 0.0)
    joints[:, NUM_JOINTS, 2] = has_center
    return joints


def _transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Applies the affine part of a 3x3 matrix to float [..., 2] points (float64 out)."""
    flat = points.reshape(-1, 2).astype(np.float64)
    homogeneous = np.concatenate([flat, np.ones_like(flat[:, :1])], axis=1)
    return (homogeneous @ matrix[:2].T).reshape(points.shape)


def augment(
    image_rgb: np.ndarray,
    valid_mask: np.ndarray,
    joints: np.ndarray,
    area: np.ndarray,
    params: AugParams,
    *,
    input_size: int,
    output_size: int,
) -> dict:
    """Applies one augmentation draw to an image, its loss mask and its joints.

    Args:
      image_rgb: uint8 [h, w, 3] original RGB image.
      valid_mask: bool [h, w], True where the loss is active.
      joints: float [P, 18, 3] joints from `joints_with_center`, original pixels.
      area: float [P] person areas in original px^2.
      params: the augmentation draw.
      input_size: side of the network input (e.g. 512).
      output_size: side of the output / target grid (e.g. 128).

    Returns:
      dict with
       'image': uint8 [input_size, input_size, 3] warped (and flipped) image;
       'mask': float32 [output_size, output_size], 1 where the loss is active;
       'joints': float64 [P, 18, 3] joints at output resolution (flipped x and
         left/right order when flipped; v unchanged);
       'area': float64 [P] areas in input px^2 (scaled by the pre-rotation zoom^2);
       'transform': float64 [3, 3] original -> input matrix, before the flip;
       'flip': bool, whether the flip was applied.
    """
    center, scale = crop_center_scale(params, image_rgb.shape[:2])
    out_matrix = affine_matrix(center, scale, params.rotation, output_size)
    in_matrix = affine_matrix(center, scale, params.rotation, input_size)
    mask_u8 = valid_mask.astype(np.uint8) * np.uint8(255)
    mask = cv2.warpAffine(mask_u8, out_matrix[:2], (output_size, output_size)) / 255
    mask = (mask > 0.5).astype(np.float32)
    joints = np.array(joints, np.float64).reshape(-1, NUM_JOINTS + 1, 3)
    joints[:, :, :2] = _transform_points(joints[:, :, :2], out_matrix)
    zoom = input_size / (SCALE_UNIT_PX * scale)
    area = np.asarray(area, np.float64).reshape(-1) * (zoom * zoom)
    image = cv2.warpAffine(image_rgb, in_matrix[:2], (input_size, input_size))
    if params.flip:
        image = np.ascontiguousarray(image[:, ::-1])
        mask = np.ascontiguousarray(mask[:, ::-1])
        joints = joints[:, list(FLIP_INDEX_WITH_CENTER)]
        joints[:, :, 0] = output_size - joints[:, :, 0] - 1
    return {
        "image": image,
        "mask": mask,
        "joints": joints,
        "area": area,
        "transform": in_matrix,
        "flip": params.flip,
    }
