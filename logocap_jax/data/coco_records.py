"""Per-image records from a COCO person-keypoint annotation file (pure Python + numpy).

The TFDS builders store these records and evaluation reads them, so both see the same persons
and the same ignore region. What is kept follows the official `CocoKeypoints` dataset
(design §1.2):

* persons: annotations with `iscrowd == 0` or `num_keypoints > 0`, in file order;
* ignore region: the union of the segmentations of crowd annotations and of non-crowd
  annotations without keypoints, stored as pycocotools compressed RLE counts.

P below is the number of kept persons of an image; it may be 0.
"""

import json
import math
import os
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from logocap_jax import errors
from logocap_jax.keypoints import NUM_JOINTS

_IMAGE_KEYS = ("id", "file_name", "height", "width")
# What COCOeval and the training records read; `segmentation` is needed only for the ignore
# mask (crowd regions and persons without keypoints) and checked there.
_ANNOTATION_KEYS = (
    "id",
    "image_id",
    "category_id",
    "iscrowd",
    "num_keypoints",
    "keypoints",
    "area",
    "bbox",
)


class CocoFormatError(errors.InputFormatError):
    """An annotation file is not in COCO person-keypoint format (a user error, and a
    ValueError)."""


def load_annotations(annotation_file: str) -> dict[str, Any]:
    """Reads and validates a COCO person-keypoint annotation file (the one reader of the package).

    An image-info file without an `annotations` list (e.g. COCO test-dev) is accepted: its
    dict has no `annotations` key, and readers treat it as having no annotations.

    Args:
      annotation_file: path of the JSON file.

    Returns:
      The parsed JSON object.

    Raises:
      InputNotFoundError: the file does not exist (a FileNotFoundError).
      CocoFormatError: the file is not JSON, lacks a required key, has a value of the wrong
        type (ids, sizes, flags, area, bbox, keypoints not 51 finite numbers), repeats an image
        id or has an annotation of an unknown image; the message names the file and the entry
        (`images[i]`, `annotations[i]`) with its id.
    """
    if not os.path.isfile(annotation_file):
        raise errors.InputNotFoundError(f"COCO annotation file not found: {annotation_file}")
    with open(annotation_file, "rb") as f:
        try:
            dataset = json.load(f)
        except ValueError as e:
            raise CocoFormatError(f"{annotation_file} is not valid JSON: {e}") from e
    if not isinstance(dataset, dict) or not isinstance(dataset.get("images"), list):
        raise CocoFormatError(
            f"{annotation_file} is not a COCO annotation file: no top-level 'images' list"
        )
    image_ids = set()
    for i, image in enumerate(dataset["images"]):
        where = f"{annotation_file}: images[{i}]"
        if isinstance(image, dict):
            where += f": image {image.get('id')}"
        _require_keys(image, _IMAGE_KEYS, where)
        _check_values(image, _IMAGE_CHECKS, where)
        if image["id"] in image_ids:
            raise CocoFormatError(f"{annotation_file}: images[{i}] repeats image id {image['id']}")
        image_ids.add(image["id"])
    if not isinstance(dataset.get("annotations", []), list):
        raise CocoFormatError(f"{annotation_file}: 'annotations' is not a list")
    for i, annotation in enumerate(dataset.get("annotations", [])):
        where = f"{annotation_file}: annotations[{i}]"
        if isinstance(annotation, dict):
            where += f": annotation {annotation.get('id')}"
        _require_keys(annotation, _ANNOTATION_KEYS, where)
        keypoints = annotation["keypoints"]
        if not isinstance(keypoints, list) or len(keypoints) != 3 * NUM_JOINTS:
            found = f"{len(keypoints)} values" if isinstance(keypoints, list) else repr(keypoints)
            raise CocoFormatError(
                f"{where}: 'keypoints' has {found}, expected {3 * NUM_JOINTS} numbers "
                "(17 COCO joints x (x, y, visibility))"
            )
        _check_values(annotation, _ANNOTATION_CHECKS, where)
        if annotation["image_id"] not in image_ids:
            raise CocoFormatError(
                f"{where} refers to image id {annotation['image_id']}, which is not in 'images'"
            )
    return dataset


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# key -> (check, what is expected) for the values readers and COCOeval use.
_IMAGE_CHECKS = {
    "id": (_is_int, "an integer"),
    "file_name": (lambda v: isinstance(v, str) and bool(v), "a file name"),
    "height": (lambda v: _is_int(v) and v > 0, "a positive integer"),
    "width": (lambda v: _is_int(v) and v > 0, "a positive integer"),
}
_ANNOTATION_CHECKS = {
    "id": (_is_int, "an integer"),
    "image_id": (_is_int, "an integer"),
    "category_id": (_is_int, "an integer"),
    "iscrowd": (lambda v: v in (0, 1), "0 or 1"),
    "num_keypoints": (lambda v: _is_int(v) and v >= 0, "a non-negative integer"),
    "area": (_is_finite_number, "a finite number"),
    "bbox": (
        lambda v: isinstance(v, list) and len(v) == 4 and all(map(_is_finite_number, v)),
        "[x, y, width, height], 4 finite numbers",
    ),
    "keypoints": (lambda v: all(map(_is_finite_number, v)), "51 finite numbers"),
}


def _check_values(entry: dict[str, Any], checks: dict, where: str) -> None:
    for key, (check, expected) in checks.items():
        value = entry[key]
        if check(value):
            continue
        if key == "keypoints":
            bad = next(v for v in value if not _is_finite_number(v))
            raise CocoFormatError(f"{where}: 'keypoints' holds {bad!r}, expected {expected}")
        raise CocoFormatError(f"{where}: {key!r} is {value!r}, expected {expected}")


def _require_keys(entry: Any, keys: Iterable[str], where: str) -> None:
    if not isinstance(entry, dict):
        raise CocoFormatError(f"{where} is not a JSON object")
    missing = [key for key in keys if key not in entry]
    if missing:
        raise CocoFormatError(
            f"{where} lacks key(s) {missing}: not a COCO person-keypoint annotation file"
        )


def image_records(
    annotation_file: str, image_dir: str, *, keep_images_without_people: bool
) -> Iterator[dict[str, Any]]:
    """Reads a COCO person-keypoint file into one record per image, in file order.

    The file is read and validated, and every kept image is checked to exist, before the
    first record is produced, so bad input fails at the call.

    Args:
      annotation_file: COCO-format JSON (e.g. `person_keypoints_val2017.json`).
      image_dir: folder holding the images under their `file_name`.
      keep_images_without_people: False keeps only images with at least one annotation,
        crowd-only images included (training); True keeps every image (evaluation).

    Returns:
      An iterator of dicts with keys
        image_id int, file_name str, image_path str (absolute), height int, width int,
        keypoints float32 [P, 17, 3] (x, y, visibility), area float32 [P],
        bbox float32 [P, 4] (x, y, w, h), iscrowd int32 [P], num_keypoints int32 [P],
        ignore_rle bytes (compressed RLE counts of the ignore region, size [height, width]).

    Raises:
      FileNotFoundError: the annotation file or a kept image file is missing.
      CocoFormatError: the file is not in COCO person-keypoint format, or an annotation
        refers to an image id the file does not list.
    """
    dataset = load_annotations(annotation_file)
    by_image = _annotations_by_image(dataset)
    images = [
        image for image in dataset["images"] if keep_images_without_people or by_image[image["id"]]
    ]
    image_dir = os.path.abspath(image_dir)
    _check_images_exist(images, image_dir, annotation_file, dataset["images"])
    return (_record(image, by_image[image["id"]], image_dir, annotation_file) for image in images)


def select_images(
    records: Iterable[dict[str, Any]], image_ids: Iterable[int], *, missing_message: str
) -> list[dict[str, Any]]:
    """The records of `image_ids`, in that order.

    Raises:
      ConfigError: `missing_message` followed by the ids no record has (a ValueError).
    """
    wanted = [int(i) for i in image_ids]
    by_id = {int(r["image_id"]): r for r in records if int(r["image_id"]) in wanted}
    missing = sorted(set(wanted) - set(by_id))
    if missing:
        raise errors.ConfigError(f"{missing_message}: {missing}")
    return [by_id[i] for i in wanted]


def _annotations_by_image(dataset: dict[str, Any]) -> dict[int, list[dict[str, Any]]]:
    by_image = {image["id"]: [] for image in dataset["images"]}
    for annotation in dataset.get("annotations", []):
        by_image[annotation["image_id"]].append(annotation)
    return by_image


def _check_images_exist(
    images: list[dict[str, Any]], image_dir: str, annotation_file: str, listed: list
) -> None:
    """Raises InputNotFoundError naming the first image file of `images` that is missing, with
    its entry in `listed` (the file's `images`) and id, and how many are missing."""
    missing = [
        image for image in images if not os.path.isfile(os.path.join(image_dir, image["file_name"]))
    ]
    if missing:
        first = missing[0]
        index = next(i for i, image in enumerate(listed) if image is first)
        also = (
            f" ({len(missing)} of {len(images)} listed images are missing)" if missing[1:] else ""
        )
        raise errors.InputNotFoundError(
            f"{annotation_file}: images[{index}]: image {first['id']}: image file "
            f"{os.path.join(image_dir, first['file_name'])} not found{also}"
        )


def _record(
    image: dict[str, Any], annotations: list[dict[str, Any]], image_dir: str, annotation_file: str
) -> dict[str, Any]:
    height, width = int(image["height"]), int(image["width"])
    people = [a for a in annotations if not a["iscrowd"] or a["num_keypoints"] > 0]
    ignored = [a for a in annotations if a["iscrowd"] or a["num_keypoints"] == 0]
    return {
        "image_id": int(image["id"]),
        "file_name": image["file_name"],
        "image_path": os.path.join(image_dir, image["file_name"]),
        "height": height,
        "width": width,
        "keypoints": np.array([a["keypoints"] for a in people], np.float32).reshape(
            -1, NUM_JOINTS, 3
        ),
        "area": np.array([a["area"] for a in people], np.float32).reshape(-1),
        "bbox": np.array([a["bbox"] for a in people], np.float32).reshape(-1, 4),
        "iscrowd": np.array([a["iscrowd"] for a in people], np.int32).reshape(-1),
        "num_keypoints": np.array([a["num_keypoints"] for a in people], np.int32).reshape(-1),
        "ignore_rle": ignore_rle(ignored, height, width, annotation_file),
    }


def ignore_rle(
    annotations: list[dict[str, Any]],
    height: int,
    width: int,
    annotation_file: str = "<annotations>",
) -> bytes:
    """Union of the segmentations of `annotations`, as compressed RLE counts.

    Args:
      annotations: COCO annotations whose `segmentation` is polygons or (un)compressed RLE.
      height: image height in px.
      width: image width in px.
      annotation_file: named in error messages.

    Returns:
      pycocotools compressed RLE counts of the union, for a [height, width] mask.
    """
    rles = [
        rle for a in annotations for rle in _segmentation_rles(a, height, width, annotation_file)
    ]
    if not rles:
        empty = np.zeros((height, width), np.uint8, order="F")
        return mask_utils.encode(empty)["counts"]
    return mask_utils.merge(rles, intersect=0)["counts"]


def _segmentation_rles(
    annotation: dict[str, Any], height: int, width: int, annotation_file: str
) -> list[dict[str, Any]]:
    where = f"{annotation_file}: annotation {annotation.get('id')}"
    if "segmentation" not in annotation:
        raise CocoFormatError(
            f"{where} lacks 'segmentation', needed for the ignore mask of "
            "crowd regions and persons without keypoints"
        )
    segmentation = annotation["segmentation"]
    if isinstance(segmentation, list):
        # Polygons go through frPyObjects unchanged, as in the official get_mask, so its
        # quirks (a 4-value first polygon is read as a box) are reproduced too.
        if not all(
            isinstance(polygon, list) and all(map(_is_finite_number, polygon))
            for polygon in segmentation
        ):
            raise CocoFormatError(
                f"{where}: 'segmentation' polygons hold other values than finite numbers"
            )
        return mask_utils.frPyObjects(segmentation, height, width) if segmentation else []
    if not isinstance(segmentation, dict) or "counts" not in segmentation:
        raise CocoFormatError(f"{where}: 'segmentation' is neither polygons nor RLE")
    if list(segmentation.get("size", ())) != [height, width]:
        raise CocoFormatError(
            f"{where}: RLE size {segmentation.get('size')} differs from the image size "
            f"{[height, width]}"
        )
    if isinstance(segmentation["counts"], list):
        return [mask_utils.frPyObjects(segmentation, height, width)]
    counts = segmentation["counts"]
    return [
        {
            "size": [height, width],
            "counts": counts.encode("ascii") if isinstance(counts, str) else counts,
        }
    ]


def labelled_people(entry: dict[str, Any]) -> np.ndarray:
    """The non-crowd persons with labelled keypoints, the ones OKS is computed for.

    Args:
      entry: a record (arrays 'iscrowd' and 'num_keypoints' [P]) or one COCO annotation.

    Returns:
      bool [P] for a record, a bool scalar for an annotation.
    """
    return (np.asarray(entry["num_keypoints"]) > 0) & (np.asarray(entry["iscrowd"]) == 0)


def valid_mask(record: dict[str, Any]) -> np.ndarray:
    """The official training mask: True where the loss counts, False on the ignore region.

    Args:
      record: an `image_records` record (uses height, width, ignore_rle).

    Returns:
      bool [height, width].
    """
    rle = {"size": [record["height"], record["width"]], "counts": record["ignore_rle"]}
    return mask_utils.decode(rle) == 0
