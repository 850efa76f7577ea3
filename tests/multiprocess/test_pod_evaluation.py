"""eval.py as a two-process JAX job gives the results and stats of one process."""

import json

import pytest
from harness import ROOT, Job

JOB_TIMEOUT = 1200  # seconds
# coco_mini images of one network input size at 128 px; an odd count, so the shares differ.
IMAGE_IDS = (192699, 196141, 488571, 100667, 129648)


def _evaluate(output_dir, cache, processes):
    argv = [
        str(ROOT / "eval.py"),
        "--config",
        str(ROOT / "configs" / "tiny.py"),
        "--state_dict",
        str(ROOT / "tests" / "data" / "golden" / "tiny_state_dict.npz"),
        "--annotations",
        str(ROOT / "data" / "coco_mini" / "annotations" / "person_keypoints_mini.json"),
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


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pod_eval")
    cache = tmp / "jax_cache"
    return _evaluate(tmp / "one", cache, 1), _evaluate(tmp / "two", cache, 2)


def test_two_processes_write_the_results_and_stats_of_one(outputs):
    one, two = outputs
    assert {entry["image_id"] for entry in one["results"]} == set(IMAGE_IDS)
    # Every pose, bit for bit, in the order of --image_ids.
    assert two["results"] == one["results"]
    assert two["stats"] == one["stats"]


def test_each_process_predicted_its_share(outputs):
    one, two = outputs
    assert one["speed"]["images"] == len(IMAGE_IDS)
    # speed.json is process 0's: images 0, 2 and 4 of the five.
    assert two["speed"]["images"] == 3
