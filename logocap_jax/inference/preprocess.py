"""Host-side test-time pre-processing: image loading, similarity resize and normalisation.

Reproduces the official test loader (design §3.6) bit for bit: the resize is a
cv2 similarity warp whose matrix comes from three float32 point pairs, so both the
matrix construction and the warp stay in cv2/numpy rather than in JAX.

Image files are read as the official loader reads them (`cv2.imread`). A file that cannot be read
or decoded raises an `ImageReadError` naming the file and its class of problem
(`IMAGE_PROBLEMS`). A file that decodes only partially (OpenCV fills in what a truncated or
corrupt JPEG lacks and returns an image) is returned with the damage named
(`decode_image_file`), detected two ways that cover each other: the file's structure is walked
to its end marker (JPEG end-of-image, PNG IEND; BMP and WebP by their declared size), and the
warnings libjpeg prints while decoding ("Premature end of JPEG file", "Corrupt JPEG data: ...")
are captured.
"""

import contextlib
import os
import re
import stat
import sys
import tempfile
import threading
import warnings
import zlib
from typing import NamedTuple

import cv2
import numpy as np

from logocap_jax import errors
from logocap_jax.keypoints import IMAGENET_MEAN, IMAGENET_STD

# Person and crop scales are expressed in units of this many pixels (HRNet/DEKR convention).
SCALE_UNIT_PX = 200.0
# The files that folder inputs (photos, frames of a sequence) are read from.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
# The long side of the network input is padded up to a multiple of this.
SIZE_DIVISOR = 64

# Classes of image-file problems: the `problem` of an ImageReadError (all but the last) or the
# warning of a partial decode (the last).
IMAGE_PROBLEMS = {
    "missing": "the file does not exist",
    "not_a_file": "the path is a folder or a special file, not a regular file",
    "unreadable": "the file cannot be read (permissions, I/O error)",
    "empty": "the file is empty",
    "not_decodable": "OpenCV cannot decode the file: not an image, or damaged beyond use",
    "partially_decoded": "decoded with part of the data missing or damaged (truncated or corrupt "
    "file), the gaps filled in by the decoder",
}
PARTIALLY_DECODED = "partially_decoded"
_IMREAD_FLAGS = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
# libjpeg's warnings about damaged data (its JWRN_* messages); it decodes on and fills the rest in.
_LIBJPEG_DAMAGE = re.compile(
    r"^(Premature end of JPEG file|Corrupt JPEG data.*|Inconsistent progression sequence.*|"
    r"Invalid SOS parameters for sequential JPEG)$"
)
# Only one decode at a time redirects the process's stderr (file descriptor 2).
_STDERR_LOCK = threading.Lock()


class ImageReadError(errors.InputFormatError):
    """An image file that cannot be read or decoded; the message names the file.

    Attributes:
      path: the file.
      problem: its class of problem, a key of IMAGE_PROBLEMS.
      reason: what is wrong, without the file name.
    """

    def __init__(self, path: str, problem: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.problem, self.reason = path, problem, reason


class ImageNotFoundError(ImageReadError, errors.InputNotFoundError):
    """An image file that does not exist (also a FileNotFoundError)."""


class PartialImageWarning(UserWarning):
    """An image file decoded only partially (see `decode_image_file`)."""


class DecodedImage(NamedTuple):
    """An image file's pixels and whether they are all there.

    Attributes:
      image: [h, w, 3] uint8 RGB.
      damage: None for a complete decode; else what is missing or damaged (the image is
        partially decoded: OpenCV filled the gaps in).
    """

    image: np.ndarray
    damage: str | None


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

    A partially decoded file is returned as OpenCV decodes it, with a PartialImageWarning.

    Args:
      path: image file path.

    Returns:
      [h, w, 3] uint8 RGB image (EXIF orientation ignored).

    Raises:
      ImageNotFoundError: `path` does not exist (a FileNotFoundError).
      ImageReadError: the file cannot be read or decoded (a ValueError).
    """
    decoded = decode_image_file(path)
    if decoded.damage is not None:
        warnings.warn(f"{os.fspath(path)}: {decoded.damage}", PartialImageWarning, stacklevel=2)
    return decoded.image


def decode_image_file(path) -> DecodedImage:
    """Reads and decodes an image file as `read_image`, telling whether it decoded completely.

    Args:
      path: image file path.

    Returns:
      The RGB image and its damage (None when complete); see the module docstring.

    Raises:
      ImageNotFoundError: `path` does not exist.
      ImageReadError: `path` is not a regular file, cannot be read, is empty, or cannot be
        decoded (`problem` says which).
    """
    path = os.fspath(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise ImageNotFoundError(path, "missing", "image file not found") from None
    except OSError as error:
        raise ImageReadError(path, "unreadable", f"cannot read ({error.strerror})") from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a special file"
        raise ImageReadError(path, "not_a_file", f"is {kind}, not an image file")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as error:
        raise ImageReadError(path, "unreadable", f"cannot read ({error.strerror})") from None
    if not data:
        raise ImageReadError(path, "empty", "image file is empty (0 bytes)")
    with _native_stderr() as libjpeg_damage:
        try:
            bgr = cv2.imread(path, _IMREAD_FLAGS)
        except cv2.error:
            bgr = None
    if bgr is None:
        raise ImageReadError(
            path, "not_decodable", "cannot decode image (not an image, or corrupt)"
        )
    damage = [_structure_damage(data)] + [f"libjpeg: {line}" for line in libjpeg_damage]
    damage = "; ".join(d for d in damage if d) or None
    if damage is not None:
        damage = f"partially decoded ({damage}); missing parts filled in by the decoder"
    return DecodedImage(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), damage)


@contextlib.contextmanager
def _native_stderr():
    """Captures what native code writes to stderr meanwhile; yields the list that receives
    libjpeg's damage warnings when the block ends.

    libjpeg reports damaged data only by printing to file descriptor 2, so the descriptor is
    pointed at a temporary file during the decode (one decode at a time). Captured lines that
    are not libjpeg damage warnings are passed on to stderr unchanged.
    """
    damage = []
    with _STDERR_LOCK, tempfile.TemporaryFile() as capture:
        sys.stderr.flush()
        try:
            saved = os.dup(2)
        except OSError:  # No stderr to redirect (closed): nothing to capture.
            yield damage
            return
        os.dup2(capture.fileno(), 2)
        try:
            yield damage
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode("utf-8", "replace")
    passed_on = []
    for line in text.splitlines():
        if _LIBJPEG_DAMAGE.match(line.strip()):
            damage.append(line.strip())
        else:
            passed_on.append(line)
    if passed_on:
        print("\n".join(passed_on), file=sys.stderr)


def _structure_damage(data: bytes) -> str | None:
    """What a JPEG, PNG, BMP or WebP file lacks before its end, or None (other formats: None).

    JPEG: the markers (ITU-T T.81, Annex B) are walked to the end-of-image marker, segments
    skipped by their length and entropy-coded data up to the next marker that is neither a
    stuffed 0xFF00 nor a restart marker. PNG: the chunks are walked to IEND, each checked
    against its CRC. BMP and WebP: the file is shorter than its header says. Bytes after the
    end (some cameras append data) are allowed.
    """
    if data.startswith(b"\xff\xd8"):
        return _jpeg_damage(data)
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return _png_damage(data)
    if data.startswith(b"BM") and len(data) >= 6:
        declared = int.from_bytes(data[2:6], "little")
        if len(data) < declared:
            return f"BMP file of {len(data)} bytes, its header says {declared}"
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        declared = int.from_bytes(data[4:8], "little") + 8
        if len(data) < declared:
            return f"WebP file of {len(data)} bytes, its header says {declared}"
    return None


def _jpeg_damage(data: bytes) -> str | None:
    truncated = "the JPEG file ends before its end-of-image marker"
    size, pos = len(data), 2
    while True:
        if pos >= size:
            return truncated
        if data[pos] != 0xFF:
            return f"JPEG data without a marker at byte {pos}"
        while pos < size and data[pos] == 0xFF:  # Fill bytes may precede a marker.
            pos += 1
        if pos >= size:
            return truncated
        marker = data[pos]
        pos += 1
        if marker == 0xD9:  # End of image.
            return None
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # Restart markers and TEM: no segment.
            continue
        if marker < 0xC0 or marker == 0xD8:
            return f"invalid JPEG marker 0xFF{marker:02X} at byte {pos - 2}"
        if pos + 2 > size:
            return truncated
        length = int.from_bytes(data[pos : pos + 2], "big")
        if length < 2:
            return f"invalid JPEG segment length {length} at byte {pos}"
        if pos + length > size:
            return truncated
        pos += length
        if marker == 0xDA:  # Start of scan: entropy-coded data up to the next marker.
            while True:
                pos = data.find(b"\xff", pos)
                if pos < 0 or pos + 1 >= size:
                    return truncated
                following = data[pos + 1]
                if following != 0x00 and not 0xD0 <= following <= 0xD7:
                    break
                pos += 2


def _png_damage(data: bytes) -> str | None:
    size, pos = len(data), 8
    while pos + 12 <= size:
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        end = pos + 12 + length
        if end > size:
            break
        crc = int.from_bytes(data[end - 4 : end], "big")
        if zlib.crc32(data[pos + 4 : end - 4]) != crc:
            return f"PNG chunk {kind!r} at byte {pos} fails its CRC"
        if kind == b"IEND":
            return None
        pos = end
    return "the PNG file ends before its IEND chunk"


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


def image_files_in(folder: str, what: str = "image") -> list[str]:
    """The image files of a folder (IMAGE_EXTENSIONS, any case), sorted by name.

    Raises:
      InputFormatError: the folder holds none; the message calls them `what` files.
    """
    paths = sorted(
        os.path.join(folder, name)
        for name in os.listdir(folder)
        if name.lower().endswith(IMAGE_EXTENSIONS)
    )
    if not paths:
        raise errors.InputFormatError(
            f"No {what} files ({', '.join(IMAGE_EXTENSIONS)}) in folder {folder}"
        )
    return paths


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
