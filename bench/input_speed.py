"""Training input throughput per CPU core: how many host cores an accelerator needs.

  python bench/input_speed.py                                  # W32 recipe: 512 px, official
  python bench/input_speed.py --input_size 640                 # W48          augmentation

Runs `input_pipeline.train_example` (decode with cv2, the official random affine and flip,
heatmap / offset targets, OKS ground truth, normalisation) on every coco_mini image in turn in
this process with one cv2 thread, and counts its CPU time, so the rate is that of one busy core
even on a shared machine. Prints examples per second per core (and the share of JPEG
decoding), and the host cores per accelerator that keep a step of a given time fed:
cores = examples per accelerator per step / (step seconds x examples/s per core).
"""

import argparse
import os
import statistics
import time

import cv2
import machine
import numpy as np

from logocap_jax.data import coco_records, input_pipeline
from logocap_jax.inference import preprocess

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "data", "coco_mini")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input_size", type=int, default=512)
    parser.add_argument("--max_people", type=int, default=30)
    parser.add_argument("--passes", type=int, default=3, help="passes over the images")
    parser.add_argument(
        "--per_accelerator_batch", type=int, default=12, help="official: 12 images per GPU"
    )
    args = parser.parse_args()
    cv2.setNumThreads(1)
    print(machine.describe())

    records = list(
        coco_records.image_records(
            os.path.join(DATA, "annotations", "person_keypoints_mini.json"),
            os.path.join(DATA, "images"),
            keep_images_without_people=False,
        )
    )
    augmentation = input_pipeline.Augmentation()
    sizes = dict(input_size=args.input_size, max_people=args.max_people)
    # Warm-up: first-call costs of cv2 and numpy.
    input_pipeline.train_example(
        records[0], input_pipeline.example_rng(0, 0), output_size=args.input_size // 4, **sizes
    )
    seconds, wall, decode = [], 0.0, []
    for index in range(args.passes * len(records)):
        record = records[index % len(records)]
        start, start_wall = time.process_time(), time.perf_counter()
        input_pipeline.train_example(
            record,
            input_pipeline.example_rng(0, index),
            output_size=args.input_size // 4,
            augmentation=augmentation,
            **sizes,
        )
        seconds.append(time.process_time() - start)
        wall += time.perf_counter() - start_wall
        start = time.process_time()
        preprocess.read_image(record["image_path"])
        decode.append(time.process_time() - start)

    # CPU time of this process: the rate of one busy core, also on a shared machine.
    rate = len(seconds) / sum(seconds)
    print(
        f"{len(seconds)} coco_mini training examples at {args.input_size} px, official "
        f"augmentation: {rate:.1f} examples/s per core (CPU time; median "
        f"{1000 * statistics.median(seconds):.1f} ms per example; "
        f"{len(seconds) / wall:.1f} examples/s of wall time on this machine now)"
    )
    print(f"  of which JPEG decoding: {100 * sum(decode) / sum(seconds):.0f}%")
    batch = args.per_accelerator_batch
    print(f"Host cores per accelerator for {batch} examples per accelerator per step:")
    for step_seconds in (0.1, 0.25, 0.5, 1.0):
        cores = batch / (step_seconds * rate)
        print(f"  step {step_seconds:.2f} s: {np.ceil(cores * 10) / 10:.1f} cores")


if __name__ == "__main__":
    main()
