"""What makes a COCO record unusable: checks of the annotation file's entries and of image files.

`coco_records` fails on the first problem (`image_records`) or lists every bad record
(`screen_records`); both judge entries by these checks, and the training input pipeline reads
images through `read_checked_image`.
"""

import os
from typing import Any

import numpy as np

from logocap_jax.inference import preprocess
from logocap_jax.keypoints import NUM_JOINTS

IMAGE_KEYS = ("id", "file_name", "height", "width")
# What COCOeval and the training records read; `segmentation` is needed only for the ignore
# mask (crowd regions and persons without keypoints) and checked there.
ANNOTATION_KEYS = (
    "id",
    "image_id",
    "category_id",
    "iscrowd",
    "num_keypoints",
    "keypoints",
    "area",
    "bbox",
)


# What makes a record unusable, by class of problem (the `problem` of a BadEntry or a
# BadImageError). The image-file classes are those of `preprocess.IMAGE_PROBLEMS`.
PROBLEMS = {
    "missing_key": "an images entry or annotation is not an object or lacks a required key",
    "bad_value": "an image id, file name, height or width, or an annotation's image_id, "
    "iscrowd (0/1), num_keypoints (>= 0), area (finite, >= 0) or bbox (4 finite numbers, "
    "w, h >= 0) of the wrong type or range",
    "bad_keypoints": "keypoints are not 51 finite numbers with visibility 0, 1 or 2",
    "bad_segmentation": "the segmentation needed for the ignore region is neither polygons of "
    "finite numbers nor an RLE of the image's size, or pycocotools rejects it",
    "repeated_image_id": "several images entries share an id (all of them are skipped)",
    "unknown_image_id": "an annotation names an image id no images entry has (no record is "
    "skipped; the annotation is listed)",
    **preprocess.IMAGE_PROBLEMS,
    "image_size_mismatch": "the decoded image is not the height x width the annotation gives",
}


class BadImageError(ValueError):
    """An image file that cannot be used; the message names the file.

    Attributes:
      problem: the class of problem, a key of `PROBLEMS`.
      path: the image file.
    """

    def __init__(self, problem: str, path: str, message: str):
        super().__init__(f"{message}: {path}")
        self.problem = problem
        self.path = path


def read_checked_image(path: str, height: int | None = None, width: int | None = None):
    """Reads an image as `preprocess.read_image` does, refusing partial decodes and images of
    another size than the annotation's.

    Args:
      path: image file.
      height: the height the annotation gives, checked if not None.
      width: the width the annotation gives, checked if not None.

    Returns:
      [h, w, 3] uint8 RGB image.

    Raises:
      BadImageError: the file is missing, unreadable, empty, not decodable, damaged
        (`preprocess.decode_image_file`), or of another size than height x width.
    """
    try:
        decoded = preprocess.decode_image_file(path)
    except preprocess.ImageReadError as error:
        raise BadImageError(error.problem, error.path, error.reason) from None
    if decoded.damage is not None:
        raise BadImageError(preprocess.PARTIALLY_DECODED, os.fspath(path), decoded.damage)
    image = decoded.image
    if height is not None and width is not None and image.shape[:2] != (height, width):
        raise BadImageError(
            "image_size_mismatch",
            os.fspath(path),
            f"image is {image.shape[0]}x{image.shape[1]} (height x width) but the annotation "
            f"says {height}x{width}",
        )
    return image


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_int(value: Any) -> bool:
    return _is_number(value) and float(value).is_integer()


def is_finite(value: Any) -> bool:
    return _is_number(value) and bool(np.isfinite(value))


def object_problem(entry: Any, keys) -> tuple[str, str] | None:
    """The problem of an entry that is not a JSON object with all of `keys`, or None."""
    if not isinstance(entry, dict):
        return "missing_key", "is not a JSON object"
    missing = [key for key in keys if key not in entry]
    return ("missing_key", f"lacks key(s) {missing}") if missing else None


def image_entry_problem(image: Any) -> tuple[str, str] | None:
    problem = object_problem(image, IMAGE_KEYS)
    if problem:
        return problem
    if not is_int(image["id"]):
        return "bad_value", f"'id' is {image['id']!r}, expected an integer"
    if not isinstance(image["file_name"], str) or not image["file_name"]:
        return "bad_value", f"'file_name' is {image['file_name']!r}, expected a file name"
    for key in ("height", "width"):
        if not is_int(image[key]) or image[key] <= 0:
            return "bad_value", f"'{key}' is {image[key]!r}, expected a positive integer"
    return None


def annotation_problem(annotation: Any) -> tuple[str, str] | None:
    problem = object_problem(annotation, ANNOTATION_KEYS)
    if problem:
        return problem
    keypoints = annotation["keypoints"]
    if not isinstance(keypoints, list) or len(keypoints) != 3 * NUM_JOINTS:
        found = (
            f"has {len(keypoints)} values" if isinstance(keypoints, list) else f"is {keypoints!r}"
        )
        return "bad_keypoints", f"'keypoints' {found}, expected {3 * NUM_JOINTS} numbers"
    if not all(is_finite(value) for value in keypoints):
        bad = next(value for value in keypoints if not is_finite(value))
        return "bad_keypoints", f"'keypoints' holds {bad!r}, expected finite numbers"
    visibility = keypoints[2::3]
    if any(v not in (0, 1, 2) for v in visibility):
        bad = next(v for v in visibility if v not in (0, 1, 2))
        return "bad_keypoints", f"'keypoints' has visibility {bad!r}, expected 0, 1 or 2"
    checks = {
        "image_id": (is_int(annotation["image_id"]), "an integer"),
        "category_id": (is_int(annotation["category_id"]), "an integer"),
        "iscrowd": (annotation["iscrowd"] in (0, 1), "0 or 1"),
        "num_keypoints": (
            is_int(annotation["num_keypoints"]) and annotation["num_keypoints"] >= 0,
            "a non-negative integer",
        ),
        "area": (is_finite(annotation["area"]) and annotation["area"] >= 0, "a number >= 0"),
        "bbox": (_is_box(annotation["bbox"]), "[x, y, w, h], finite, w and h >= 0"),
    }
    for key, (ok, expected) in checks.items():
        if not ok:
            return "bad_value", f"'{key}' is {annotation[key]!r}, expected {expected}"
    return None


def _is_box(box: Any) -> bool:
    return (
        isinstance(box, list)
        and len(box) == 4
        and all(is_finite(value) for value in box)
        and box[2] >= 0
        and box[3] >= 0
    )
