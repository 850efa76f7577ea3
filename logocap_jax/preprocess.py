"""Host-side test-time pre-processing: image loading, similarity resize and normalisation.

Reproduces the official test loader (design §3.6) bit for bit: the resize is a
cv2 similarity warp whose matrix comes from three float32 point pairs, so both the
matrix construction and the warp stay in cv2/numpy rather than in JAX.
"""

import os
from typing import NamedTuple

import cv2
import numpy as np

from logocap_jax.keypoints import IMAGENET_MEAN, IMAGENET_STD

# Person and crop scales are expressed in units of this many pixels (HRNet/DEKR convention).
SCALE_UNIT_PX = 200.0
# The long side of the network input is padded up to a multiple of this.
SIZE_DIVISOR = 64


class ResizeInfo(NamedTuple):
    """Geometry of the test-time resize.

    Attributes:
      center: [2] float64, (x, y) centre of the source image in pixels (integers).
      scale: [2] float64, (scale_w, scale_h) of the source region in units of 200 px.
      size_wh: [2] int64, network input size (W', H').
    """

    center: np.ndarray
    scale: np.ndarray
    size_wh: np.ndarray


def read_image(path) -> np.ndarray:
    """Reads an image the way the official test loader does.

    Args:
      path: image file path.

    Returns:
      [h, w, 3] uint8 RGB image (EXIF orientation ignored).

    Raises:
      FileNotFoundError: if `path` does not exist.
      ValueError: if cv2 cannot decode the file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file not found: {path}")
    bgr = cv2.imread(path, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if bgr is None:
        raise ValueError(f"cannot decode image (corrupt or not an image): {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _perpendicular_point(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Returns b + (a - b) rotated by +90 degrees, in float32 like the reference."""
    d = a - b
    return b + np.array([-d[1], d[0]], dtype=np.float32)


def affine_transform_matrix(
    center, scale, rotation_deg, output_size_wh, inverse=False
) -> np.ndarray:
    """Builds the source -> network-input affine of the HRNet/DEKR test resize.

    The source region, `scale[0] * 200` pixels wide around `center`, is mapped onto
    an output of `output_size_wh`. Three point pairs (the centre, a point half a
    width above it rotated by the angle, and a third point perpendicular to those)
    are rounded to float32 before `cv2.getAffineTransform`; that rounding is part of
    the reference numerics, so it is kept.

    Args:
      center: [2] (x, y) centre of the source region in pixels.
      scale: [2] (scale_w, scale_h) in units of 200 px, or a scalar for both.
        Only scale_w affects the matrix.
      rotation_deg: rotation of the source region in degrees.
      output_size_wh: (W', H') of the output.
      inverse: if True return the network-input -> source mapping.

    Returns:
      [2, 3] float64 affine matrix.
    """
    scale = np.asarray(scale, dtype=np.float64)
    if scale.ndim == 0:
        scale = np.array([scale, scale])
    src_width = scale[0] * SCALE_UNIT_PX
    out_w, out_h = output_size_wh[0], output_size_wh[1]
    angle = np.pi * rotation_deg / 180
    sin, cos = np.sin(angle), np.cos(angle)
    # (0, -src_width/2) rotated by the angle, kept in float64 as the reference does.
    half_up = -0.5 * src_width
    src_dir = np.array([0 * cos - half_up * sin, 0 * sin + half_up * cos])

    src = np.zeros((3, 2), dtype=np.float32)
    dst = np.zeros((3, 2), dtype=np.float32)
    src[0] = np.asarray(center, dtype=np.float64)
    src[1] = np.asarray(center, dtype=np.float64) + src_dir
    dst[0] = [out_w * 0.5, out_h * 0.5]
    dst[1] = np.array([out_w * 0.5, out_h * 0.5]) + np.array([0, out_w * -0.5], np.float32)
    src[2] = _perpendicular_point(src[0], src[1])
    dst[2] = _perpendicular_point(dst[0], dst[1])

    if inverse:
        return cv2.getAffineTransform(dst, src)
    return cv2.getAffineTransform(src, dst)


def _ceil_to_divisor(value: float) -> int:
    return int((value + SIZE_DIVISOR - 1) // SIZE_DIVISOR * SIZE_DIVISOR)


def inference_resize(height: int, width: int, input_size: int) -> ResizeInfo:
    """Computes the official single-scale test resize (`get_multi_scale_size`, scale 1).

    The short side becomes `input_size` (itself rounded up to a multiple of 64, as the
    reference does; 512 and 640 are unchanged) and the long side keeps the aspect
    ratio, rounded up to a multiple of 64. The float expressions follow the reference
    evaluation order so the rounding matches.

    Args:
      height: source image height h.
      width: source image width w.
      input_size: requested short side of the network input.

    Returns:
      ResizeInfo with center [2], scale [2] (size / 200 of the covered source
      region) and size_wh [2].

    Raises:
      ValueError: if a size is not positive.
    """
    if height <= 0 or width <= 0 or input_size <= 0:
        raise ValueError(
            f"inference_resize needs positive sizes, got height={height}, width={width}, "
            f"input_size={input_size}"
        )
    h, w = height, width
    center = np.array([int(w / 2.0 + 0.5), int(h / 2.0 + 0.5)], dtype=np.float64)
    short = _ceil_to_divisor(input_size)
    if w < h:
        w_resized = short
        h_resized = _ceil_to_divisor(short / w * h)
        scale = np.array([w / SCALE_UNIT_PX, h_resized / w_resized * w / SCALE_UNIT_PX])
    else:
        h_resized = short
        w_resized = _ceil_to_divisor(short / h * w)
        scale = np.array([w_resized / h_resized * h / SCALE_UNIT_PX, h / SCALE_UNIT_PX])
    return ResizeInfo(
        center=center, scale=scale, size_wh=np.array([w_resized, h_resized], dtype=np.int64)
    )


def normalize(image_uint8: np.ndarray) -> np.ndarray:
    """ImageNet-normalises an RGB image (test time and training alike).

    float32 throughout, in the order of torchvision's ToTensor + Normalize, so that the result
    matches the official input bit for bit.

    Args:
      image_uint8: [H, W, 3] uint8 RGB image.

    Returns:
      [H, W, 3] float32, (x / 255 - mean) / std per channel.
    """
    x = image_uint8.astype(np.float32) / np.float32(255.0)
    return (x - IMAGENET_MEAN) / IMAGENET_STD


def warp_test_image(image_rgb: np.ndarray, info: ResizeInfo) -> np.ndarray:
    """Warps an image onto the network input grid described by `info`.

    Args:
      image_rgb: [h, w, 3] uint8 RGB image.
      info: resize geometry from `inference_resize`.

    Returns:
      [H', W', 3] uint8 image (bilinear, constant-0 border, cv2 fixed point).
    """
    size_wh = (int(info.size_wh[0]), int(info.size_wh[1]))
    trans = affine_transform_matrix(info.center, info.scale, 0, size_wh)
    return cv2.warpAffine(
        image_rgb,
        trans,
        size_wh,
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )


def prepare_test_image(image_rgb: np.ndarray, input_size: int):
    """Resizes and normalises an image for the network, as the official test loader.

    Args:
      image_rgb: [h, w, 3] uint8 RGB image.
      input_size: short side of the network input (512 for W32, 640 for W48).

    Returns:
      (image, info): image is [H', W', 3] float32 normalised RGB, info the
      ResizeInfo needed to map predictions back.

    Raises:
      ValueError: if the image is not an [h, w, 3] uint8 array.
    """
    image_rgb = np.asarray(image_rgb)
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.dtype != np.uint8:
        raise ValueError(
            "prepare_test_image expects an [h, w, 3] uint8 RGB image, got "
            f"shape {image_rgb.shape} dtype {image_rgb.dtype}"
        )
    info = inference_resize(image_rgb.shape[0], image_rgb.shape[1], input_size)
    return normalize(warp_test_image(image_rgb, info)), info
