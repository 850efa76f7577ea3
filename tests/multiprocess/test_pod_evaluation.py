"""eval.py as a two-process JAX job gives the results and stats of one process.

The tiny golden model scores AP 0 on coco_mini's people, which would make equal stats say
little, so the two-process run is scored against people made from the one-process run's own
poses (the two best per image): its AP is far from 0 and 1, and process 0's COCOeval must
reproduce what pycocotools gives here for the one-process results.
"""

import json

import pytest
from harness import ROOT, Job

from logocap_jax.evaluation import coco_eval

pytestmark = pytest.mark.slow

JOB_TIMEOUT = 600  # seconds; a job takes 20-40 s on a 2-core machine
# coco_mini images of one network input size at 128 px; an odd count, so the shares differ.
IMAGE_IDS = (192699, 196141, 488571, 100667, 129648)
ANNOTATIONS = ROOT / "data" / "coco_mini" / "annotations" / "person_keypoints_mini.json"
PEOPLE_PER_IMAGE = 2


def _evaluate(output_dir, annotations, cache, processes):
    argv = [
        str(ROOT / "eval.py"),
        "--config",
        str(ROOT / "configs" / "tiny.py"),
        "--state_dict",
        str(ROOT / "tests" / "data" / "golden" / "tiny_state_dict.npz"),
        "--annotations",
        str(annotations),
        "--images",
        str(ROOT / "data" / "coco_mini" / "images"),
        "--image_ids",
        ",".join(map(str, IMAGE_IDS)),
        "--output_dir",
        str(output_dir),
    ]
    if processes > 1:
        argv.append("--distributed")
    logs = output_dir.parent / f"{output_dir.name}_logs"
    Job(argv, num_processes=processes, devices=2, logs=logs, cache=cache).wait(JOB_TIMEOUT)
    return {
        name: json.loads((output_dir / f"{name}.json").read_text())
        for name in ("results", "stats", "speed")
    }


def _people_from(results, path):
    """An annotation file of IMAGE_IDS whose people are the best poses of `results`."""
    source = json.loads(ANNOTATIONS.read_text())
    annotations = []
    for image_id in IMAGE_IDS:
        poses = sorted(
            (r for r in results if r["image_id"] == image_id), key=lambda r: -r["score"]
        )[:PEOPLE_PER_IMAGE]
        for pose in poses:
            xs, ys = pose["keypoints"][0::3], pose["keypoints"][1::3]
            keypoints = [v for x, y in zip(xs, ys) for v in (round(x, 2), round(y, 2), 2)]
            box = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
            annotations.append(
                dict(
                    id=len(annotations) + 1,
                    image_id=image_id,
                    category_id=1,
                    iscrowd=0,
                    num_keypoints=17,
                    keypoints=keypoints,
                    bbox=box,
                    area=box[2] * box[3],
                )
            )
    images = [image for image in source["images"] if image["id"] in IMAGE_IDS]
    path.write_text(
        json.dumps(dict(images=images, annotations=annotations, categories=source["categories"]))
    )
    return path


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pod_eval")
    cache = tmp / "jax_cache"
    one = _evaluate(tmp / "one", ANNOTATIONS, cache, 1)
    people = _people_from(one["results"], tmp / "people.json")
    return one, _evaluate(tmp / "two", people, cache, 2), people


def test_two_processes_write_the_results_of_one(outputs):
    one, two, _ = outputs
    assert {entry["image_id"] for entry in one["results"]} <= set(IMAGE_IDS)
    assert len({entry["image_id"] for entry in one["results"]}) >= 3
    # Every pose, bit for bit, in the order of --image_ids.
    assert two["results"] == one["results"]


def test_process_0_scores_the_gathered_results(outputs):
    one, two, people = outputs
    expected = coco_eval.evaluate_keypoints(
        coco_eval.load_annotations(str(people)), one["results"], list(IMAGE_IDS)
    )
    assert 0.2 < expected["AP"] < 1.0
    assert {name: two["stats"][name] for name in expected} == pytest.approx(expected, abs=1e-12)


def test_each_process_predicted_its_share(outputs):
    one, two, _ = outputs
    assert one["speed"]["images"] == len(IMAGE_IDS)
    # speed.json is process 0's: images 0, 2 and 4 of the five.
    assert two["speed"]["images"] == 3
