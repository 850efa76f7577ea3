"""COCO keypoint evaluation: annotation loading, result checks, pycocotools scoring and reports.

Results follow the official LOGO-CAP format , one dict per pose:
``{image_id, category_id: 1, keypoints: [x1, y1, s1, ..., x17, y17, s17], score, bbox}``.
"""

import contextlib
import io
import json
import math
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from logocap_jax.data import coco_records
from logocap_jax.keypoints import JOINT_NAMES, NUM_JOINTS

PERSON_CATEGORY_ID = 1

# Order of COCOeval.stats for iouType='keypoints'.
STAT_NAMES = ("AP", "AP50", "AP75", "APM", "APL", "AR", "AR50", "AR75", "ARM", "ARL")

_NUM_VALUES = 3 * NUM_JOINTS


@contextlib.contextmanager
def _quiet():
    """Silences pycocotools, which reports progress on stdout."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def _check_categories(data, path, with_keypoints):
    categories = data.get("categories")
    if not isinstance(categories, list):
        raise coco_records.CocoFormatError(
            f"{path}: missing key 'categories' (a list of category records)"
        )
    person = [c for c in categories if isinstance(c, dict) and c.get("id") == PERSON_CATEGORY_ID]
    if not person:
        raise coco_records.CocoFormatError(
            f"{path}: no category with id {PERSON_CATEGORY_ID} (person)"
        )
    if not with_keypoints:
        return
    names = person[0].get("keypoints")
    if not isinstance(names, list):
        raise coco_records.CocoFormatError(
            f"{path}: the person category has no 'keypoints' list, "
            "so this is not a COCO person-keypoint file"
        )
    if tuple(names) != JOINT_NAMES:
        raise coco_records.CocoFormatError(
            f"{path}: the person category's keypoints {names} are not the "
            f"{NUM_JOINTS} COCO joints in COCO order"
        )


def load_annotations(path, *, results_only=False):
    """Loads a COCO-format person-keypoint file (val2017, test-dev, OCHuman) and checks it.

    Args:
      path: the JSON file, e.g. ``person_keypoints_val2017.json``.
      results_only: also accept files without ``annotations`` such as
        ``image_info_test-dev2017.json``; such a set can be predicted on and its results
        saved, but not evaluated (see ``can_evaluate``).

    Returns:
      A ``pycocotools.coco.COCO`` object with its index built.

    Raises:
      InputNotFoundError: ``path`` is not a file (a FileNotFoundError).
      CocoFormatError: the file is not JSON or not in COCO person-keypoint format; the message
        names the file and the offending key or entry (a ValueError and a user error).
    """
    data = coco_records.load_annotations(str(path))
    has_annotations = "annotations" in data
    if not has_annotations and not results_only:
        raise coco_records.CocoFormatError(
            f"{path}: missing key 'annotations' (an image-info file such as "
            "test-dev can only be loaded with results_only=True)"
        )
    _check_categories(data, path, with_keypoints=has_annotations)
    coco = COCO()
    coco.dataset = data
    with _quiet():
        coco.createIndex()
    return coco


def can_evaluate(coco_gt):
    """Tells whether ``coco_gt`` holds ground truth (False for test-dev image-info files)."""
    return "annotations" in coco_gt.dataset


def _keypoint_box(keypoints):
    """[x, y, w, h] of the tight box around the 17 points of a flat [51] keypoint vector."""
    xy = np.asarray(keypoints, dtype=np.float64).reshape(NUM_JOINTS, 3)[:, :2]
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    return [float(lo[0]), float(lo[1]), float(hi[0] - lo[0]), float(hi[1] - lo[1])]


def _numeric_fields(entry, index):
    """Converts a results entry's fields, naming the entry if one is not numeric."""
    missing = [key for key in ("image_id", "category_id", "keypoints", "score") if key not in entry]
    if missing:
        raise ValueError(f"results[{index}] lacks the key(s) {missing}")
    try:
        bbox = entry.get("bbox")
        return (
            int(entry["image_id"]),
            int(entry["category_id"]),
            np.asarray(entry["keypoints"], dtype=np.float64).ravel(),
            float(entry["score"]),
            None if bbox is None else np.asarray(bbox, dtype=np.float64).ravel(),
        )
    except (TypeError, ValueError) as err:
        raise ValueError(f"results[{index}] has a non-numeric field ({err})") from err


def _checked_entry(entry, index, known_image_ids=None):
    """Validates one results entry and returns a plain-Python copy with a bbox.

    Args:
      entry: a results dict (values may be NumPy scalars or arrays).
      index: its position in the results list, for error messages.
      known_image_ids: image ids the entry may refer to; None skips that check.

    Returns:
      A new dict {image_id, category_id, keypoints [51 floats], score, bbox [4 floats]}.
      A missing bbox is the keypoint box, which is what pycocotools derives without one.
    """
    if not isinstance(entry, dict):
        raise ValueError(f"results[{index}] is not a dict")
    image_id, category_id, keypoints, score, bbox = _numeric_fields(entry, index)
    if known_image_ids is not None and image_id not in known_image_ids:
        raise ValueError(
            f"results[{index}] refers to image id {image_id}, which is not in the ground truth"
        )
    if category_id != PERSON_CATEGORY_ID:
        raise ValueError(
            f"results[{index}] has category_id {category_id}, "
            f"expected {PERSON_CATEGORY_ID} (person)"
        )
    if keypoints.size != _NUM_VALUES:
        raise ValueError(
            f"results[{index}] has {keypoints.size} keypoint values, expected "
            f"{_NUM_VALUES} ({NUM_JOINTS} joints x (x, y, score))"
        )
    if not np.all(np.isfinite(keypoints)):
        raise ValueError(f"results[{index}] has non-finite keypoint values")
    if not math.isfinite(score):
        raise ValueError(f"results[{index}] has a non-finite score {score}")
    if bbox is None:
        bbox = np.asarray(_keypoint_box(keypoints))
    elif bbox.size != 4 or not np.all(np.isfinite(bbox)):
        raise ValueError(
            f"results[{index}] has a bbox {bbox.tolist()}, expected 4 finite values [x, y, w, h]"
        )
    return {
        "image_id": image_id,
        "category_id": category_id,
        "keypoints": keypoints.tolist(),
        "score": score,
        "bbox": bbox.tolist(),
    }


def evaluate_keypoints(coco_gt, results, image_ids=None):
    """Scores pose results with COCOeval(iouType='keypoints') and default parameters.

    Args:
      coco_gt: ground truth from ``load_annotations``.
      results: list of result dicts; not modified.
      image_ids: the evaluated image ids (``params.imgIds``); default all images of
        ``coco_gt``, as the official test script does.

    Returns:
      Dict of the 10 COCO keypoint stats (``STAT_NAMES``) as floats in [0, 1]; pycocotools
      reports -1 for an area range without ground truth. Empty results give all zeros.

    Raises:
      ValueError: ``coco_gt`` has no annotations, an image id is unknown, or a results
        entry is malformed (the message names its index).
    """
    if not can_evaluate(coco_gt):
        raise ValueError(
            "the ground truth has no annotations (image-info file), so results cannot be evaluated"
        )
    known = set(coco_gt.getImgIds())
    image_ids = sorted(known) if image_ids is None else [int(i) for i in image_ids]
    unknown = sorted(set(image_ids) - known)
    if unknown:
        raise ValueError(f"image_ids not in the ground truth: {unknown[:10]}")
    entries = [_checked_entry(entry, i, known) for i, entry in enumerate(results)]
    if not entries:
        # pycocotools' loadRes cannot take an empty list.
        return {name: 0.0 for name in STAT_NAMES}
    with _quiet():
        coco_dt = coco_gt.loadRes(entries)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="keypoints")
        evaluator.params.imgIds = image_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(value) for name, value in zip(STAT_NAMES, evaluator.stats)}


def ground_truth_as_results(coco_gt, image_ids=None):
    """Turns the ground truth into results that match it perfectly (AP = 1 sanity check).

    Every non-crowd annotation with labelled joints becomes one entry with score 1.0, the
    annotation's bbox, its labelled joints at their positions with score 1, and its unlabelled
    joints at the mean labelled position with score 0. OKS ignores unlabelled joints; parking
    them there keeps the keypoint box as tight as the labelled joints.

    Args:
      coco_gt: ground truth from ``load_annotations``.
      image_ids: images to take annotations from; default all.

    Returns:
      List of result dicts in the official results format.
    """
    if image_ids is None:
        image_ids = sorted(coco_gt.getImgIds())
    results = []
    for ann in coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=list(image_ids))):
        keypoints = np.asarray(ann["keypoints"], dtype=np.float64).reshape(NUM_JOINTS, 3)
        labelled = keypoints[:, 2] > 0
        if not coco_records.labelled_people(ann) or not labelled.any():
            continue
        out = np.empty_like(keypoints)
        out[:, :2] = np.where(
            labelled[:, None], keypoints[:, :2], keypoints[labelled, :2].mean(axis=0)
        )
        out[:, 2] = labelled
        results.append(
            {
                "image_id": ann["image_id"],
                "category_id": ann["category_id"],
                "keypoints": out.ravel().tolist(),
                "score": 1.0,
                "bbox": [float(v) for v in ann["bbox"]],
            }
        )
    return results


def _percent(value):
    # pycocotools marks an area range without ground truth with -1.
    return "-" if value < 0 else f"{100.0 * value:.1f}"


def format_table(stats, name, *, header=True):
    """Formats stats as a Markdown table in the layout of the paper's Table 1.

    Example: ``| LOGO-CAP W32 | 69.6 / 87.5 / 75.9 / 64.1 / 78.0 | 74.9 |``.

    Args:
      stats: dict from ``evaluate_keypoints`` (fractions, not %).
      name: the row label (model / data set).
      header: prepend the header and separator lines; False gives the row alone, for
        stacking several models in one table.

    Returns:
      The table text, lines joined by newlines, no trailing newline.
    """
    missing = [key for key in ("AP", "AP50", "AP75", "APM", "APL", "AR") if key not in stats]
    if missing:
        raise ValueError(f"stats lack the key(s) {missing}")
    ap = " / ".join(_percent(stats[key]) for key in ("AP", "AP50", "AP75", "APM", "APL"))
    label = str(name).replace("|", "\\|")
    row = f"| {label} | {ap} | {_percent(stats['AR'])} |"
    if not header:
        return row
    return "\n".join(["| model | AP / AP50 / AP75 / APM / APL | AR |", "|---|---|---|", row])


def _to_builtin(value):
    """json.dump hook: NumPy scalars and arrays become plain numbers and lists."""
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _write_json(path, payload):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(payload, f, default=_to_builtin)


def save_results(path, results):
    """Writes results as a COCO results JSON file.

    Args:
      path: output file; parent directories are created.
      results: list of result dicts; NumPy values are accepted. Each entry is checked, and a
        missing bbox is filled with the keypoint box.
    """
    _write_json(path, [_checked_entry(entry, i) for i, entry in enumerate(results)])


def save_stats(path, stats):
    """Writes a stats dict (e.g. from ``evaluate_keypoints``) as JSON; parents are created."""
    _write_json(path, {str(key): float(value) for key, value in stats.items()})
