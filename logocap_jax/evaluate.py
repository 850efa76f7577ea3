"""Evaluation runs: a data set through the Predictor, results JSON, COCOeval, speed report.

Data sets are COCO-format annotation files with an image folder; `DATASETS` names the standard
layouts under a data root (the official repository's data/coco and data/OCHuman layouts).

With several JAX processes (multi-host), every process runs `run_evaluation` on the same set:
each predicts its share of the images on its own devices, the results are gathered, COCOeval
runs on process 0 and every process gets its stats.
"""

import dataclasses
import json
import os

import jax
import numpy as np
import tqdm
from jax.experimental import multihost_utils

from logocap_jax import coco_eval, postprocess, predict, speed, training_io
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
    """Attributes: results (COCO results entries, in the order of the annotation file's images);
    stats (AP... or None for results-only sets); speed (SpeedReport.summary() of this
    process's images); people ({image_id: People} of this process's images) when kept."""

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

    With several JAX processes every process must call it with the same set: process p of P
    predicts images p, p + P, ... and all processes return the same results and stats.

    Args:
      predictor: a Predictor; its `report` collects the timings (one is attached if missing).
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
    if predictor.report is None:
        predictor.report = speed.SpeedReport()
    if upper_bound and not coco_eval.can_evaluate(gt):
        raise ValueError(f"{annotation_file} has no annotations: the upper bound needs them")
    mine = list(enumerate(records))[jax.process_index() :: jax.process_count()]
    by_position, people_by_image = [], {}
    items = ((position, record["image_path"]) for position, record in mine)
    for position, people in tqdm.tqdm(
        predictor.predict_many(items),
        total=len(mine),
        disable=not progress,
        desc="images",
        unit="img",
    ):
        record = records[position]
        if upper_bound:
            people = _oracle_people(predictor, people, record)
        entries = postprocess.coco_results(record["image_id"], people.keypoints, people.scores)
        by_position.append((position, entries))
        if keep_people:
            people_by_image[record["image_id"]] = people
    # The Predictor yields images grouped by size: back to the file's order.
    by_position = sorted(sum(_from_every_process(by_position), []), key=lambda item: item[0])
    results = [entry for _, entries in by_position for entry in entries]
    stats = None
    if coco_eval.can_evaluate(gt):
        if jax.process_index() == 0:
            stats = coco_eval.evaluate_keypoints(gt, results, [r["image_id"] for r in records])
        stats = _from_every_process(stats)[0]
    return EvaluationResult(results, stats, predictor.report.summary(), people_by_image)


def _from_every_process(value) -> list:
    """Every process's JSON-serialisable `value`, in process order (all processes call it).

    JSON keeps Python floats exactly, so gathered results equal the ones computed.
    """
    if jax.process_count() == 1:
        return [value]
    training_io.wait_for_all_processes("evaluation_gathered")
    data = np.frombuffer(json.dumps(value).encode(), np.uint8)
    sizes = multihost_utils.process_allgather(np.asarray([data.size])).reshape(-1)
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[: data.size] = data
    gathered = multihost_utils.process_allgather(padded)
    return [json.loads(row[:size].tobytes()) for row, size in zip(gathered, sizes)]


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
