"""What bfloat16 inference costs in accuracy: the same images through float32 and bfloat16.

  python bench/bf16_accuracy.py                                   # the golden tiny weights
  python bench/bf16_accuracy.py --config configs/mini.py --checkpoint workdir/mini

Runs the coco_mini images (all of them, or --image_ids) through the Predictor twice, with
config.test.compute_dtype float32 and bfloat16, and prints: the fraction of final keypoints
within 1 and 3 px (original image) of their float32 position, each bfloat16 person matched to
the float32 person of the same image with the nearest keypoints; people found by one run only;
keypoint AP / AP50 of each run (pycocotools) and the difference.
"""

import argparse
import os

import machine
import numpy as np

from logocap_jax import config_utils, weights
from logocap_jax.evaluation import evaluate
from logocap_jax.inference import predict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MINI = os.path.join(ROOT, "data", "coco_mini")
GOLDEN = os.path.join(ROOT, "tests", "data", "golden", "tiny_state_dict.npz")


def run(config, variables, dtype: str, image_ids):
    config = config.copy_and_resolve_references()
    config.test.compute_dtype = dtype
    predictor = predict.Predictor.from_config(config, variables)
    return evaluate.run_evaluation(
        predictor,
        os.path.join(MINI, "annotations", "person_keypoints_mini.json"),
        os.path.join(MINI, "images"),
        image_ids=image_ids,
        keep_people=True,
        progress=False,
    )


def keypoint_distances(reference: dict, other: dict) -> tuple[np.ndarray, int]:
    """Distances of matched keypoints [n] and the count of people without a match."""
    distances, unmatched = [], 0
    for image_id, ours in reference.items():
        theirs = other[image_id]
        unmatched += abs(len(ours.scores) - len(theirs.scores))
        if not len(ours.scores) or not len(theirs.scores):
            continue
        xy, other_xy = ours.keypoints[..., :2], theirs.keypoints[..., :2]
        # [P_ref, P_other] mean keypoint distance; each reference person takes its nearest.
        cost = np.linalg.norm(xy[:, None] - other_xy[None], axis=-1).mean(axis=-1)
        nearest = cost.argmin(axis=1)
        distances.append(np.linalg.norm(xy - other_xy[nearest], axis=-1).ravel())
    return np.concatenate(distances) if distances else np.zeros(0), unmatched


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=config_utils.default_config_path("tiny"))
    parser.add_argument("--checkpoint", help="orbax checkpoint or training work directory")
    parser.add_argument("--state_dict", help="official state dict; default the golden tiny one")
    parser.add_argument("--image_ids", help="comma-separated coco_mini ids (default: all)")
    args = parser.parse_args()
    config = config_utils.load_config(args.config)
    source = args.checkpoint or args.state_dict or GOLDEN
    variables = weights.load(config, source)
    image_ids = tuple(int(i) for i in args.image_ids.split(",")) if args.image_ids else ()
    float32 = run(config, variables, "float32", image_ids)
    bfloat16 = run(config, variables, "bfloat16", image_ids)
    distances, unmatched = keypoint_distances(float32.people, bfloat16.people)
    print(machine.describe())
    print(f"{source} ({os.path.basename(args.config)}), {len(float32.people)} coco_mini images")
    print(
        f"keypoints within 1 px of float32: {np.mean(distances <= 1):.3f}, within 3 px: "
        f"{np.mean(distances <= 3):.3f} ({len(distances)} keypoints); median "
        f"{np.median(distances):.2f} px; people without a match: {unmatched}"
    )
    for key in ("AP", "AP50"):
        ours, theirs = float32.stats[key], bfloat16.stats[key]
        print(
            f"{key}: float32 {100 * ours:.1f}, bfloat16 {100 * theirs:.1f}, "
            f"difference {100 * (theirs - ours):+.1f}"
        )


if __name__ == "__main__":
    main()
