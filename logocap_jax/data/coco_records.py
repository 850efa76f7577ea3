"""Per-image records from a COCO person-keypoint annotation file (numpy and pycocotools).

The TFDS builders store these records and evaluation reads them, so both see the same persons
and the same ignore region. What is kept follows the official `CocoKeypoints` dataset
(design §1.2):

* persons: annotations with `iscrowd == 0` or `num_keypoints > 0`, in file order;
* ignore region: the union of the segmentations of crowd annotations and of non-crowd
  annotations without keypoints, stored as pycocotools compressed RLE counts.

P below is the number of kept persons of an image; it may be 0.

`image_records` fails on the first problem of a file. `screen_records`, for the data set
builders, instead checks every record, image files decoded (OpenCV), and lists the bad ones by
class of problem (`record_checks.PROBLEMS`) so that they can be skipped.
"""

import concurrent.futures
import dataclasses
import json
import os
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from logocap_jax import errors
from logocap_jax.data import record_checks
from logocap_jax.keypoints import NUM_JOINTS


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
    dataset = _read_json(annotation_file)
    image_ids = set()
    for i, image in enumerate(dataset["images"]):
        where = f"{annotation_file}: images[{i}]"
        _raise_problem(record_checks.image_entry_problem(image), where, image, "image")
        if image["id"] in image_ids:
            raise CocoFormatError(f"{where} repeats image id {image['id']}")
        image_ids.add(image["id"])
    for i, annotation in enumerate(dataset.get("annotations", [])):
        where = f"{annotation_file}: annotations[{i}]"
        _raise_problem(
            record_checks.annotation_problem(annotation), where, annotation, "annotation"
        )
        if annotation["image_id"] not in image_ids:
            raise CocoFormatError(
                f"{where}: annotation {annotation['id']} refers to image id "
                f"{annotation['image_id']}, which is not in 'images'"
            )
    return dataset


def _raise_problem(problem: tuple[str, str] | None, where: str, entry: Any, kind: str) -> None:
    """Raises a CocoFormatError naming the entry (and its id) for a problem of `PROBLEMS`."""
    if problem is None:
        return
    if isinstance(entry, dict) and "id" in entry:
        where += f": {kind} {entry['id']}"
    separator = " " if problem[0] == "missing_key" else ": "
    raise CocoFormatError(f"{where}{separator}{problem[1]}")


def _read_json(annotation_file: str) -> dict[str, Any]:
    """The parsed file, checked only for an `images` list and an optional `annotations` list."""
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
    if not isinstance(dataset.get("annotations", []), list):
        raise CocoFormatError(f"{annotation_file}: 'annotations' is not a list")
    return dataset


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
            isinstance(polygon, list) and all(map(record_checks.is_finite, polygon))
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


@dataclasses.dataclass(frozen=True)
class BadEntry:
    """A record the builders skip, or an annotation that belongs to no record.

    Attributes:
      entry: where it is in the annotation file, e.g. "images[3]" or "annotations[17]".
      problem: the class of problem, a key of `PROBLEMS`.
      reason: what is wrong, naming the key, value or file and what was expected.
      image_id: the image id, where the entry has one.
      file_name: the image file name, where the entry has one.
    """

    entry: str
    problem: str
    reason: str
    image_id: Any = None
    file_name: Any = None

    def describe(self) -> str:
        """One line naming the record and what is wrong with it."""
        names = [f"image id {self.image_id}"] if self.image_id is not None else []
        names += [str(self.file_name)] if self.file_name is not None else []
        return f"{self.entry}" + (f" ({', '.join(names)})" if names else "") + f": {self.reason}"


@dataclasses.dataclass
class ScreenedRecords:
    """A COCO person-keypoint file checked record by record (see `screen_records`).

    Attributes:
      annotation_file: the JSON file.
      image_dir: absolute image folder.
      images: the file's `images` entries.
      annotations: per images entry, its annotations (those of its id).
      bad: images entry index -> why its record is skipped.
      ignored_annotations: annotations of no listed image, or without a usable image_id.
    """

    annotation_file: str
    image_dir: str
    images: list[Any]
    annotations: list[list[dict[str, Any]]]
    bad: dict[int, BadEntry]
    ignored_annotations: list[BadEntry]

    def candidates(self, keep_images_without_people: bool) -> list[int]:
        """Indices of the images entries a split keeps, bad ones included, in file order."""
        return [
            i for i in range(len(self.images)) if keep_images_without_people or self.annotations[i]
        ]

    def image_problem(self, index: int) -> tuple[str, str] | None:
        """(problem, reason) if the image file of images entry `index` cannot be used."""
        image = self.images[index]
        path = os.path.join(self.image_dir, image["file_name"])
        try:
            record_checks.read_checked_image(path, int(image["height"]), int(image["width"]))
        except record_checks.BadImageError as e:
            return e.problem, str(e)
        return None

    def records(self, indices: Iterable[int]) -> Iterator[dict[str, Any]]:
        """The `image_records` records of good images entries, lazily."""
        for i in indices:
            yield _record(self.images[i], self.annotations[i], self.image_dir, self.annotation_file)


def screen_records(
    annotation_file: str,
    image_dir: str,
    *,
    keep_images_without_people: Iterable[bool],
    num_threads: int | None = None,
) -> ScreenedRecords:
    """Reads a COCO person-keypoint file leniently and checks every record a split would keep.

    A record is bad when its images entry, one of its annotations, the ignore region built from
    them, or its image file has a problem of `PROBLEMS` (the first one found is kept). Image
    files are fully decoded, in a thread pool, only for records without other problems.

    Args:
      annotation_file: COCO-format JSON.
      image_dir: folder holding the images under their `file_name`.
      keep_images_without_people: the settings of the splits to be built; the records kept
        by any of them are checked.
      num_threads: threads decoding images; default the CPU count.

    Returns:
      The screened file; `records(indices)` makes the records of good entries.

    Raises:
      FileNotFoundError: the annotation file is missing.
      CocoFormatError: it is not JSON, or has no `images` list, or a non-list `annotations`.
    """
    dataset = _read_json(annotation_file)
    images = dataset["images"]
    bad: dict[int, BadEntry] = {}
    indices_by_id: dict[Any, list[int]] = {}
    for i, image in enumerate(images):
        problem = record_checks.image_entry_problem(image)
        if problem is not None:
            bad[i] = _bad_image(i, image, *problem)
        if isinstance(image, dict) and record_checks.is_int(image.get("id")):
            indices_by_id.setdefault(image["id"], []).append(i)
    for image_id, indices in indices_by_id.items():
        if len(indices) > 1:
            reason = f"image id {image_id} is repeated in images{indices}"
            for i in indices:
                bad.setdefault(i, _bad_image(i, images[i], "repeated_image_id", reason))
    annotations: list[list[dict[str, Any]]] = [[] for _ in images]
    ignored = []
    for j, annotation in enumerate(dataset.get("annotations", [])):
        where = f"annotations[{j}]"
        if isinstance(annotation, dict) and "id" in annotation:
            where += f" (annotation {annotation['id']})"
        image_id = annotation.get("image_id") if isinstance(annotation, dict) else None
        indices = indices_by_id.get(image_id, []) if record_checks.is_int(image_id) else []
        problem = record_checks.annotation_problem(annotation)
        if not indices:
            if problem is None:
                problem = ("unknown_image_id", f"image id {image_id!r} is not in 'images'")
            ignored.append(BadEntry(where, problem[0], problem[1], image_id=image_id))
            continue
        for i in indices:
            annotations[i].append(annotation)
            if problem is not None and i not in bad:
                bad[i] = _bad_image(i, images[i], problem[0], f"{where}: {problem[1]}")
    screened = ScreenedRecords(
        annotation_file, os.path.abspath(image_dir), images, annotations, bad, ignored
    )
    to_check = sorted(
        {i for keep in set(keep_images_without_people) for i in screened.candidates(keep)}
    )
    for i in to_check:
        if i not in bad:
            reason = _ignore_region_problem(
                images[i], annotations[i], screened.image_dir, annotation_file
            )
            if reason is not None:
                bad[i] = _bad_image(i, images[i], "bad_segmentation", reason)
    to_decode = [i for i in to_check if i not in bad]
    with concurrent.futures.ThreadPoolExecutor(num_threads or os.cpu_count()) as pool:
        for i, problem in zip(to_decode, pool.map(screened.image_problem, to_decode)):
            if problem is not None:
                bad[i] = _bad_image(i, images[i], *problem)
    return screened


def _bad_image(index: int, image: Any, problem: str, reason: str) -> BadEntry:
    known = image if isinstance(image, dict) else {}
    return BadEntry(f"images[{index}]", problem, reason, known.get("id"), known.get("file_name"))


def _ignore_region_problem(
    image: dict[str, Any], annotations: list[dict[str, Any]], image_dir: str, annotation_file: str
) -> str | None:
    """Why the ignore region of an image cannot be built, or None."""
    try:
        _record(image, annotations, image_dir, annotation_file)
    except CocoFormatError as e:
        return str(e)
    except Exception as e:
        # pycocotools rejects malformed polygons with a bare Exception (or a TypeError or
        # ValueError); anything else is a bug and propagates.
        if type(e) not in (Exception, TypeError, ValueError):
            raise
        return f"annotation segmentation rejected by pycocotools: {e}"
    return None
