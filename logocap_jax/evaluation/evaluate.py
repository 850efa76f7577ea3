"""Evaluation runs: a data set through the Predictor, results JSON, COCOeval, speed report.

Data sets are COCO-format annotation files with an image folder; `DATASETS` names the standard
layouts under a data root (the official repository's data/coco and data/OCHuman layouts).

An image that cannot be read counts as having no detections, so AP is still over the whole set;
it is named in a warning and listed in stats.json under `skipped_images`. A partially decoded
image is evaluated, and listed under `partially_decoded_images`.

With several JAX processes (multi-host), every process runs `run_evaluation` on the same set:
each predicts its share of the images on its own devices, the results and image problems are
gathered, COCOeval runs on process 0 and every process gets its stats.
"""

import dataclasses
import json
import os

import jax
import numpy as np
from jax.experimental import multihost_utils

from logocap_jax import errors
from logocap_jax import progress as progress_lib
from logocap_jax.data import coco_records
from logocap_jax.evaluation import coco_eval
from logocap_jax.evaluation import upper_bound as upper_bound_lib
from logocap_jax.inference import postprocess, predict, preprocess, speed, visualize
from logocap_jax.training import run_io

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
        raise errors.UnknownDatasetError(
            f"Unknown data set {name!r}; known: {sorted(DATASETS)} "
            "(or pass --annotations and --images)"
        )
    annotations, images = DATASETS[name]
    return os.path.join(data_root, annotations), os.path.join(data_root, images)


@dataclasses.dataclass
class EvaluationResult:
    """Attributes: results (COCO results entries, in the order of the annotation file's images);
    stats (AP... or None for results-only sets); speed (SpeedReport.summary() of this
    process's images); people ({image_id: People} of this process's images) when kept; skipped
    and partially_decoded (`predict.ImageProblem`s keyed by image id, of every process: images
    that could not be read and count as having no detections, images evaluated on a partial
    decode); images (how many the evaluated set holds); drawings ({image_id: RGB uint8
    [h, w, 3]} of the images `run_evaluation` was asked to draw, see `drawing`)."""

    results: list
    stats: dict | None
    speed: dict
    people: dict
    skipped: list = dataclasses.field(default_factory=list)
    partially_decoded: list = dataclasses.field(default_factory=list)
    images: int = 0
    drawings: dict = dataclasses.field(default_factory=dict)


def describe(problem: predict.ImageProblem) -> str:
    """One line for an image of the set that could not be read, or only partially: its id, the
    file, what is wrong, and how it counts."""
    counted = ", counted as having no detections" if problem.skipped else ""
    return f"image {problem.key}: {problem.describe()}{counted}"


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
    on_problem=None,
    draw_images: int = 0,
) -> EvaluationResult:
    """Predicts every image of a COCO-format set and scores the results with COCOeval.

    With several JAX processes every process must call it with the same set: process p of P
    predicts images p, p + P, ... and all processes return the same results and stats.

    Args:
      predictor: a Predictor; its `report` collects the timings; `upper_bound` needs it to keep
        its inspection outputs (`keep_outputs`).
      annotation_file, image_dir: the set. Files without annotations (test-dev) give
        results only.
      max_images: evaluate only the first images of the file (and score on those).
      image_ids: evaluate only these images, in this order (before max_images applies);
        empty: all.
      keep_people: keep every image's `People` (with pipeline outputs) in the result.
      progress: show the progress (`logocap_jax.progress`: a bar on a terminal, else lines).
      upper_bound: score the oracle local search of `evaluation.upper_bound` instead of the
        model's poses (the paper's Fig. 2 bound; needs ground truth).
      on_problem: called with the `predict.ImageProblem` (key: image id) of each image that
        cannot be read (skipped: no detections) or decodes only partially; default a
        warning (`predict.warn_about`) saying `describe(problem)`.
      draw_images: draw the first `draw_images` images this process predicts (in file order)
        into the result's `drawings`.

    Raises:
      InputNotFoundError: the annotation file or an image it lists is missing (named, with its
        entry and id).
      CocoFormatError: the file is not in COCO person-keypoint format.
      InputFormatError: the file lists no images.
      ConfigError: the file lacks one of image_ids.
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
        raise errors.InputFormatError(f"{annotation_file} lists no images: nothing to evaluate")
    if upper_bound and not predictor.keep_outputs:
        raise ValueError("the upper bound needs the local meshes: a Predictor with keep_outputs")
    if upper_bound and not coco_eval.can_evaluate(gt):
        raise errors.UsageError(f"{annotation_file} has no annotations: the upper bound needs them")
    position = {r["image_id"]: i for i, r in enumerate(records)}
    mine = records[jax.process_index() :: jax.process_count()]
    entries, people_by_image, problems = [], {}, []
    report = on_problem or (lambda problem: predict.warn_about(problem, describe(problem)))

    def collect(problem):
        problems.append(problem)
        report(problem)

    items = ((r["image_id"], r["image_path"]) for r in mine)
    drawn = {r["image_id"] for r in mine[:draw_images]}
    drawings = {}
    predictions = progress_lib.Progress(
        predictor.predict_many(items, on_problem=collect),
        total=len(mine),
        unit="img",
        desc="images",
        enabled=progress,
    )
    for image_id, people in predictions:
        if upper_bound:
            people = _oracle_people(predictor, people, records[position[image_id]])
        results = postprocess.coco_results(image_id, people.keypoints, people.scores)
        entries.append((position[image_id], results))
        if keep_people:
            people_by_image[image_id] = people
        if image_id in drawn:
            drawings[image_id] = drawing(records[position[image_id]], people)
    # The Predictor yields images grouped by size: back to the file's order.
    entries, problems = _gathered_in_order((entries, problems), position)
    results = [entry for _, image_results in entries for entry in image_results]
    stats = None
    if coco_eval.can_evaluate(gt):
        if jax.process_index() == 0:
            stats = coco_eval.evaluate_keypoints(gt, results, [r["image_id"] for r in records])
        stats = _from_every_process(stats)[0]
    return EvaluationResult(
        results,
        stats,
        predictor.report.summary(),
        people_by_image,
        skipped=[p for p in problems if p.skipped],
        partially_decoded=[p for p in problems if not p.skipped],
        images=len(records),
        drawings=dict(sorted(drawings.items(), key=lambda item: position[item[0]])),
    )


def drawing(record: dict, people: predict.People) -> np.ndarray:
    """An evaluated image with its ground truth (white, hollow joints) under the predicted
    people (colored, with their scores): RGB uint8 [h, w, 3]."""
    image = preprocess.decode_image_file(record["image_path"]).image
    image = visualize.draw_poses(image, record["keypoints"], style="gt")
    return visualize.draw_poses(image, people.keypoints, scores=people.scores)


def _gathered_in_order(shares, position: dict):
    """(entries, problems) of every process: (position, results) pairs and ImageProblems,
    each sorted by the image's position in the evaluated set."""
    gathered = _from_every_process(shares)
    entries = sorted((tuple(e) for share in gathered for e in share[0]), key=lambda e: e[0])
    problems = [predict.ImageProblem(*p) for share in gathered for p in share[1]]
    return entries, sorted(problems, key=lambda p: position[p.key])


def _from_every_process(value) -> list:
    """Every process's JSON-serialisable `value`, in process order (all processes call it).

    JSON keeps Python floats exactly, so gathered results equal the ones computed.
    """
    if jax.process_count() == 1:
        return [value]
    run_io.wait_for_all_processes("evaluation_gathered")
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


def _image_entries(problems) -> list:
    return [
        {"image_id": p.key, "path": p.path, "problem": p.problem, "reason": p.reason}
        for p in problems
    ]


def stats_json(result: EvaluationResult, annotation_file: str | None = None) -> dict:
    """stats.json: the COCO stats (fractions), or `results_only` with the reason for a file
    without annotations, and `skipped_images` / `partially_decoded_images` (image_id, path,
    problem, reason)."""
    if result.stats is not None:
        payload = {name: float(value) for name, value in result.stats.items()}
    else:
        payload = {"results_only": True, "reason": results_only_note(annotation_file)}
    payload["skipped_images"] = _image_entries(result.skipped)
    payload["partially_decoded_images"] = _image_entries(result.partially_decoded)
    return payload


def results_only_note(annotation_file: str | None) -> str:
    """What the report says of a file without annotations."""
    return (
        f"{annotation_file or 'the annotation file'} has no 'annotations' (an image-info file "
        "such as COCO test-dev): results only, not evaluated; results.json holds the "
        "predictions"
    )


def _problems_note(result: EvaluationResult) -> list:
    lines = []
    for problems, what in (
        (result.skipped, "could not be read and count as having no detections"),
        (result.partially_decoded, "were decoded only partially and evaluated as decoded"),
    ):
        if problems:
            names = ", ".join(str(p.key) for p in problems[:10])
            more = " ..." if len(problems) > 10 else ""
            lines.append(
                f"{len(problems)} of {result.images} images {what} (stats.json lists them): "
                f"image ids {names}{more}"
            )
    return lines


def write_outputs(
    result: EvaluationResult,
    output_dir: str,
    name: str,
    report: speed.SpeedReport,
    annotation_file: str | None = None,
):
    """Writes results.json, stats.json (Table 1 form, see `stats_json`), speed.json and
    report.md; returns the printed text."""
    os.makedirs(output_dir, exist_ok=True)
    coco_eval.save_results(os.path.join(output_dir, "results.json"), result.results)
    with open(os.path.join(output_dir, "stats.json"), "w") as f:
        json.dump(stats_json(result, annotation_file or name), f, indent=1)
    lines = []
    if result.stats is not None:
        lines += [coco_eval.format_table(result.stats, name), ""]
    else:
        lines += [results_only_note(annotation_file or name), ""]
    notes = _problems_note(result)
    if notes:
        lines += notes + [""]
    with open(os.path.join(output_dir, "speed.json"), "w") as f:
        json.dump(result.speed, f, indent=1)
    lines.append(report.table())
    text = "\n".join(lines)
    with open(os.path.join(output_dir, "report.md"), "w") as f:
        f.write(text + "\n")
    return text
