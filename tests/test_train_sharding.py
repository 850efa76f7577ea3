"""A training step on 8 (fake) CPU devices equals the same step on one device."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).parent / "train_step_main.py"


def _start_step(out, device_count):
    env = dict(
        os.environ,
        XLA_FLAGS=f"--xla_force_host_platform_device_count={device_count}",
        JAX_PLATFORMS="cpu",
    )
    return subprocess.Popen([sys.executable, str(SCRIPT), str(out)], env=env, cwd=SCRIPT.parent)


@pytest.fixture(scope="module")
def steps(tmp_path_factory):
    """Both steps at once: each process compiles mostly on one core."""
    tmp_path = tmp_path_factory.mktemp("sharding")
    outs = [tmp_path / f"step_{count}.npz" for count in (1, 8)]
    processes = [_start_step(out, count) for out, count in zip(outs, (1, 8))]
    try:
        for process in processes:
            assert process.wait(timeout=900) == 0, process.args
    finally:
        for process in processes:
            process.kill()  # a no-op for a process that has ended
    results = []
    for out in outs:
        with np.load(out) as data:
            results.append({k: data[k] for k in data.files})
    return tuple(results)


def test_ran_on_the_requested_devices(steps):
    single, multi = steps
    assert int(single["device_count"]) == 1 and int(multi["device_count"]) == 8


def test_same_loss_terms(steps):
    single, multi = steps
    metrics = [k for k in single if k.startswith("metric/")]
    assert {"metric/total", "metric/oks", "metric/refined_heatmaps"} <= set(metrics)
    # The 4 x (6 + 5) golden instances are selected on both, so every term is non-trivial.
    assert float(single["metric/selected_instances"]) == 44
    for key in metrics:
        # float32 reductions split over devices: relative differences measured below 1e-6.
        np.testing.assert_allclose(multi[key], single[key], rtol=1e-5, err_msg=key)


def test_same_gradients(steps):
    single, multi = steps
    names = [k for k in single if k.startswith("grad/")]
    assert len(names) == 211  # every parameter of the tiny model
    # Sums split over devices, through a deep backward pass in float32. Measured: 2e-4 relative
    # L2 error over all gradients, at most 6e-3 for one tensor (stem and fuse-layer biases,
    # whose gradients are ~1e-6 sums of cancelling terms).
    error = sum(np.sum((multi[k] - single[k]) ** 2) for k in names)
    norm = sum(np.sum(single[k] ** 2) for k in names)
    assert np.sqrt(error / norm) < 1e-3
    for key in names:
        relative = np.linalg.norm(multi[key] - single[key]) / np.linalg.norm(single[key])
        assert relative < 2e-2, (key, relative)


def test_same_updated_variables(steps):
    single, multi = steps
    names = [k for k in single if k.startswith(("params/", "batch_stats/"))]
    assert len(names) == 347  # every parameter and BatchNorm statistic of the tiny model
    learning_rate = float(single["learning_rate"])
    for key in names:
        atol = np.full(single[key].shape, 1e-6)
        if key.startswith("params/"):
            # Adam's first step moves a weight by lr * g / (|g| + 1e-8), i.e. lr * sign(g) once
            # |g| >> 1e-8. Where |g| is not clearly above the two runs' gradient difference (or
            # 1e-8), the step's size or sign is float noise: allow up to two steps there.
            name = "grad/" + key.removeprefix("params/")
            gradient, noise = single[name], np.abs(multi[name] - single[name])
            atol = np.where(np.abs(gradient) < 10 * noise + 1e-6, 2 * learning_rate, 1e-6)
        assert np.all(np.abs(multi[key] - single[key]) <= atol + 1e-5 * np.abs(single[key])), key
