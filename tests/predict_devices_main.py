"""The Predictor on a few coco_mini images with the golden tiny weights, saved to a .npz.

Run as a script by tests/test_inference_devices.py, once per device count (XLA_FLAGS must be set
before JAX starts): python tests/predict_devices_main.py OUT.npz BATCH_SIZE
"""

import sys
from pathlib import Path

import jax
import numpy as np

from logocap_jax import config_utils, weights
from logocap_jax.inference import predict

ROOT = Path(__file__).resolve().parent.parent
IMAGE_IDS = (197388, 129648, 229358, 196141, 211325)


def run(batch_size: int) -> dict:
    """{'<id>/keypoints', '<id>/scores', 'device_count'} of IMAGE_IDS."""
    config = config_utils.load_config(str(ROOT / "configs" / "tiny.py"))
    variables = weights.load(config, ROOT / "tests" / "data" / "golden" / "tiny_state_dict.npz")
    predictor = predict.Predictor.from_config(config, variables, batch_size=batch_size)
    items = [(i, str(ROOT / "data" / "coco_mini" / "images" / f"{i:012d}.jpg")) for i in IMAGE_IDS]
    arrays = {"device_count": np.asarray(jax.device_count())}
    for image_id, people in predictor.predict_many(items):
        arrays[f"{image_id}/keypoints"] = people.keypoints
        arrays[f"{image_id}/scores"] = people.scores
    return arrays


if __name__ == "__main__":
    np.savez(sys.argv[1], **run(int(sys.argv[2])))
