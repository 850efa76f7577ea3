"""Evaluation runs: a data set through the Predictor, results JSON, COCOeval, speed report.

Data sets are COCO-format annotation files with an image folder; `DATASETS` names the standard
layouts under a data root (the official repository's data/coco and data/OCHuman layouts).
"""

import dataclasses
import json
import os

import tqdm

from logocap_jax import coco_eval, postprocess, predict, speed
from logocap_jax import upper_bound as upper_bound_lib
from logocap_jax.data import coco_records

# name -> (annotation file, image folder), relative to the data root.
DATASETS = {
    "coco_val2017": ("annotations/person_keypoints_val2017.json", "images/val2017"),
    "coco_test_dev2017": ("annotations/image_info_test-dev2017.json", "images/test2017"),
    "ochuman_val": ("annotations/ochuman_coco_format_val_range_0.00_1.00.json", "images"),
    "ochuman_test": ("annotations/ochuman_coco_format_test_range_0.00_1.00.json", "images"),
}


def dataset_paths(name: str, data_root: str) -> tuple[str, str]:
    """(annotation file, image folder) of a named data set under `data_root`."""
    if name not in DATASETS:
        raise ValueError(
            f"Unknown data set {name!r}; known: {sorted(DATASETS)} "
            "(or pass --annotations and --images)"
        )
    annotations, images = DATASETS[name]
    return os.path.join(data_root, annotations), os.path.join(data_root, images)


@dataclasses.dataclass
class EvaluationResult:
    """Attributes: results (COCO results entries); stats (AP... or None for results-only
    sets); speed (SpeedReport.summary()); people ({image_id: People}) when kept."""

    results: list
    stats: dict | None
    speed: dict
    people: dict


def run_evaluation(
    predictor: predict.Predictor,
    annotation_file: str,
    image_dir: str,
    *,
    max_images: int = None,
    image_ids=(),
    keep_people: bool = False,
    progress: bool = True,
    upper_bound: bool = False,
) -> EvaluationResult:
    """Predicts every image of a COCO-format set and scores the results with COCOeval.

    Args:
      predictor: a Predictor; its `report` collects the timings; `upper_bound` needs it to keep
        its inspection outputs (`keep_outputs`).
      annotation_file, image_dir: the set. Files without annotations (test-dev) give
        results only.
      max_images: evaluate only the first images of the file (and score on those).
      image_ids: evaluate only these images, in this order (before max_images applies);
        empty: all.
      keep_people: keep every image's `People` (with pipeline outputs) in the result.
      upper_bound: score the oracle local search of `logocap_jax.upper_bound` instead of the
        model's poses (the paper's Fig. 2 bound; needs ground truth).

    Raises:
      FileNotFoundError: the annotation file or an image it lists is missing (named).
      ValueError: the file is not in COCO person-keypoint format, lists no images, or lacks
        one of image_ids.
    """
    gt = coco_eval.load_annotations(annotation_file, results_only=True)
    records = list(
        coco_records.image_records(annotation_file, image_dir, keep_images_without_people=True)
    )
    if image_ids:
        records = coco_records.select_images(
            records, image_ids, missing_message=f"image ids not in {annotation_file}"
        )
    records = records[:max_images]
    if not records:
        raise ValueError(f"{annotation_file} lists no images: nothing to evaluate")
    if upper_bound and not predictor.keep_outputs:
        raise ValueError("the upper bound needs the local meshes: a Predictor with keep_outputs")
    if upper_bound and not coco_eval.can_evaluate(gt):
        raise ValueError(f"{annotation_file} has no annotations: the upper bound needs them")
    by_id = {r["image_id"]: r for r in records}
    results, people_by_image = [], {}
    items = ((r["image_id"], r["image_path"]) for r in records)
    for image_id, people in tqdm.tqdm(
        predictor.predict_many(items),
        total=len(records),
        disable=not progress,
        desc="images",
        unit="img",
    ):
        if upper_bound:
            people = _oracle_people(predictor, people, by_id[image_id])
        results += postprocess.coco_results(image_id, people.keypoints, people.scores)
        if keep_people:
            people_by_image[image_id] = people
    stats = None
    if coco_eval.can_evaluate(gt):
        stats = coco_eval.evaluate_keypoints(gt, results, [r["image_id"] for r in records])
    return EvaluationResult(results, stats, predictor.report.summary(), people_by_image)


def _oracle_people(predictor, people, record):
    outputs = upper_bound_lib.oracle_outputs(people.outputs, record, people.resize)
    keypoints, scores, slots = postprocess.select_people(
        outputs.poses,
        outputs.scores,
        outputs.valid,
        people.resize,
        max_people=predictor.max_people,
        nms_distance_ratio=predictor.nms_distance_ratio,
        nms_min_joints=predictor.nms_min_joints,
    )
    return people._replace(keypoints=keypoints, scores=scores, slots=slots, outputs=outputs)


def write_outputs(result: EvaluationResult, output_dir: str, name: str, report: speed.SpeedReport):
    """Writes results.json, stats.json (Table 1 form), speed.json; returns the printed text."""
    os.makedirs(output_dir, exist_ok=True)
    coco_eval.save_results(os.path.join(output_dir, "results.json"), result.results)
    lines = []
    if result.stats is not None:
        coco_eval.save_stats(os.path.join(output_dir, "stats.json"), result.stats)
        lines += [coco_eval.format_table(result.stats, name), ""]
    with open(os.path.join(output_dir, "speed.json"), "w") as f:
        json.dump(result.speed, f, indent=1)
    lines.append(report.table())
    text = "\n".join(lines)
    with open(os.path.join(output_dir, "report.md"), "w") as f:
        f.write(text + "\n")
    return text
