"""A training run killed mid-way resumes from its last checkpoint and continues exactly as an
uninterrupted run: the same batches (iterator state) and the same parameters."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import jax
import numpy as np
import pytest
import train_runs

from logocap_jax.weights import checkpoints

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parent.parent
STEPS = 6


def _command(workdir, data_dir):
    return train_runs.mini_command(
        workdir,
        data_dir,
        STEPS,
        "--config.train.checkpoint_every_steps=2",
        "--config.train.eval_every_steps=0",
        "--config.data.input_size=128",
        "--config.data.output_size=32",
    )


def _env():
    # The session's persistent compilation cache (conftest) is in os.environ: the runs share
    # their programs with each other and with the other tests' runs of the same config.
    return dict(os.environ, JAX_PLATFORMS="cpu")


def _kill_after_first_checkpoint(command, env, workdir):
    process = subprocess.Popen(
        command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 600
    while 2 not in checkpoints.training_steps(workdir):
        assert process.poll() is None, "the run ended before its first checkpoint"
        assert time.time() < deadline, "no checkpoint within 10 minutes"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()


def _train_rows(workdir):
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row for row in rows if row["split"] == "train"}


def _final_state(workdir):
    """Every array of the saved train state: parameters, statistics, Adam moments, step."""
    return jax.tree_util.tree_leaves(checkpoints.read_training_checkpoint(workdir, STEPS)[0])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("resume")
    env = _env()
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    subprocess.run(
        _command(straight, tmp_path / "tfds"),
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=900,
    )
    _kill_after_first_checkpoint(_command(interrupted, tmp_path / "tfds"), env, interrupted)
    killed_at = max(_train_rows(interrupted))
    subprocess.run(
        _command(interrupted, tmp_path / "tfds"),
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=900,
    )
    return straight, interrupted, killed_at


def test_the_run_was_killed_before_the_end(runs):
    _, _, killed_at = runs
    assert 2 <= killed_at < STEPS


def test_resumed_steps_equal_the_uninterrupted_run(runs):
    straight, interrupted, _ = runs
    expected, resumed = _train_rows(straight), _train_rows(interrupted)
    assert sorted(expected) == list(range(1, STEPS + 1))
    assert set(resumed) == set(expected)
    for step in expected:
        for term in ("total", "heatmaps", "offsets", "oks", "refined_heatmaps"):
            # Same program on the same inputs: identical up to float32 summation order.
            np.testing.assert_allclose(
                resumed[step][term], expected[step][term], rtol=1e-6, err_msg=f"step {step} {term}"
            )


def test_final_parameters_equal(runs):
    straight, interrupted, _ = runs
    expected, resumed = _final_state(straight), _final_state(interrupted)
    # 347 variables, the two Adam moments of the 211 parameters, and three step counters.
    assert len(expected) == len(resumed) == 347 + 2 * 211 + 3
    for a, b in zip(expected, resumed):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-9)


def test_work_directory_restores_as_model_variables(runs, caplog):
    straight, _, _ = runs
    # No evaluation ran, so no best model: the latest training state, said in a warning.
    variables = checkpoints.restore_variables(straight)
    assert f"using its latest training state, step {STEPS}" in caplog.text
    assert set(variables) == {"params", "batch_stats"}
    state = checkpoints.read_training_checkpoint(straight, STEPS)[0]
    for name in variables:
        for a, b in zip(
            jax.tree_util.tree_leaves(variables[name]), jax.tree_util.tree_leaves(state[name])
        ):
            np.testing.assert_array_equal(a, b)


def test_resume_refuses_another_global_batch(runs, tmp_path):
    _, interrupted, _ = runs
    command = _command(interrupted, tmp_path / "tfds") + [
        f"--config.train.num_steps={STEPS + 1}",
        "--config.train.global_batch_size=2",
    ]
    result = subprocess.run(
        command, env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=900
    )
    assert result.returncode != 0
    assert "written with train.global_batch_size=4, this run has 2" in result.stderr
