"""Accelerator-shaped inference: variables placed once, batches sharded over all local devices,
only poses, scores and flags back to the host; the bfloat16 mode."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from predict_devices_main import IMAGE_IDS, ROOT, run

from logocap_jax import config_utils, weights
from logocap_jax.inference import predict, preprocess

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).parent / "predict_devices_main.py"
GOLDEN_IMAGE = ROOT / "data" / "coco_mini" / "images" / "000000197388.jpg"
# Batch composition changes the matrix products' blocking (test_predict.BATCH_RTOL): keypoints in
# original pixels (up to 640) measured 2.5e-6 relative, 1.5e-4 px.
RTOL, ATOL_PX = 1e-5, 1e-3


@pytest.fixture(scope="module")
def config():
    return config_utils.load_config(str(ROOT / "configs" / "tiny.py"))


@pytest.fixture(scope="module")
def variables(config):
    return weights.load(config, ROOT / "tests" / "data" / "golden" / "tiny_state_dict.npz")


def test_eight_devices_give_the_same_people(tmp_path):
    """Batch 8 sharded over 8 fake CPU devices (5 images, padded) against batch 1 on one."""
    out = tmp_path / "eight.npz"
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=8",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=str(ROOT),
    )
    subprocess.run([sys.executable, str(SCRIPT), str(out), "8"], check=True, env=env, timeout=600)
    with np.load(out) as data:
        eight = {k: data[k] for k in data.files}
    one = run(batch_size=1)
    assert int(eight["device_count"]) == 8 and int(one["device_count"]) == 1
    assert sum(len(one[f"{i}/scores"]) for i in IMAGE_IDS) >= 5
    for image_id in IMAGE_IDS:
        np.testing.assert_allclose(
            eight[f"{image_id}/keypoints"], one[f"{image_id}/keypoints"], rtol=RTOL, atol=ATOL_PX
        )
        np.testing.assert_allclose(
            eight[f"{image_id}/scores"], one[f"{image_id}/scores"], rtol=RTOL
        )


def test_only_poses_cross_to_the_host(config, variables):
    """Under a transfer guard nothing moves implicitly (variables stay on the device); the
    explicit copies are the input images in and poses, scores and flags out."""
    images = [preprocess.read_image(GOLDEN_IMAGE)] * 2
    light = predict.Predictor.from_config(config, variables)
    inspect = predict.Predictor.from_config(config, variables, keep_outputs=True)
    with jax.transfer_guard("disallow"):
        for predictor in (light, inspect):
            people = [p for _, p in predictor.predict_many(enumerate(images))]
            assert len(people) == 2 and len(people[0].scores) > 0
    image_bytes = preprocess.prepare_test_image(images[0], config.test.input_size)[0].nbytes
    slots, joints = config.decode.num_centers, config.model.num_joints
    light_summary, inspect_summary = light.report.summary(), inspect.report.summary()
    assert light_summary["bytes_to_device_per_image"] == image_bytes
    # poses [N, K, 3] and scores [N] float32, valid [N] bool.
    assert light_summary["bytes_to_host_per_image"] == slots * (joints * 3 * 4 + 4 + 1)
    # The inspection outputs are the refined maps above all: 30 x 17 x 97 x 97 floats.
    assert inspect_summary["bytes_to_host_per_image"] > 30 * 17 * 97 * 97 * 4
    assert people[0].outputs.refined is not None
    light_people = light(images[0])
    assert light_people.outputs.refined is None and light_people.outputs.mesh is None


def test_bfloat16_inference(config, variables):
    """Parameters cast once to bfloat16 on the device, statistics and decoding in float32; the
    people stay near where float32 puts them."""
    bf16_config = config.copy_and_resolve_references()
    bf16_config.test.compute_dtype = "bfloat16"
    float32 = predict.Predictor.from_config(config, variables)
    bfloat16 = predict.Predictor.from_config(bf16_config, variables)
    params = jax.tree_util.tree_leaves(bfloat16._device_variables["params"])
    stats = jax.tree_util.tree_leaves(bfloat16._device_variables["batch_stats"])
    assert {x.dtype for x in params} == {np.dtype(jax.numpy.bfloat16)}
    assert {x.dtype for x in stats} == {np.dtype(np.float32)}
    image = preprocess.read_image(GOLDEN_IMAGE)
    ours, reference = bfloat16(image), float32(image)
    assert ours.keypoints.dtype == np.float32
    assert len(ours.scores) == len(reference.scores) > 0
    order = np.argsort(-reference.scores)
    matched = np.argsort(-ours.scores)
    distance = np.linalg.norm(
        ours.keypoints[matched, :, :2] - reference.keypoints[order, :, :2], axis=-1
    )
    # In network-input pixels (short side 128): measured median 1.2, 90th percentile 6.9. The
    # golden weights are perturbed random ones, flatter than trained maps; bench/bf16_accuracy.py
    # measures trained weights.
    network_px = distance * ours.resize.size_wh[0] / image.shape[1]
    assert np.median(network_px) < 2.0, np.median(network_px)
