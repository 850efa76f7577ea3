"""A training run killed (SIGKILL) while orbax writes a checkpoint: the previous checkpoint stays
usable, and a rerun resumes from it and recomputes the same steps.

Saves are asynchronous: orbax writes `<step>.orbax-checkpoint-tmp` and renames it to `<step>`
when complete (about a second for the mini model here, while the next steps train). With a
checkpoint every step, the run is killed as soon as a later save is under way.
"""

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
STEPS = 4
TIMEOUT = 1200


def _command(workdir, data_dir):
    return train_runs.mini_command(
        workdir,
        data_dir,
        STEPS,
        "--config.train.checkpoint_every_steps=1",
        "--config.train.eval_every_steps=0",
        "--config.data.input_size=64",
        "--config.data.output_size=16",
    )


def _steps(directory):
    """(finished checkpoint steps, steps whose save is under way)."""
    names = os.listdir(directory) if directory.is_dir() else []
    finished = sorted(int(name) for name in names if name.isdigit())
    writing = sorted(int(name.split(".")[0]) for name in names if ".orbax-checkpoint-tmp" in name)
    return finished, writing


def _train_rows(workdir):
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [row for row in rows if row["split"] == "train"]


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    """(workdir, step being saved when killed, the rerun's process) of a run killed mid-save."""
    tmp = tmp_path_factory.mktemp("kill_during_save")
    workdir = tmp / "work"
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=str(tmp / "jax_cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    )
    command = _command(workdir, tmp / "tfds")
    process = subprocess.Popen(
        command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + TIMEOUT
    try:
        while True:
            finished, writing = _steps(workdir / "checkpoints")
            if finished and any(step > finished[-1] for step in writing):
                process.send_signal(signal.SIGKILL)
                break
            assert process.poll() is None, "the run ended before a second save began"
            assert time.time() < deadline, "no second save within the time limit"
            time.sleep(0.002)
    finally:
        process.kill()
        process.wait()
    finished, writing = _steps(workdir / "checkpoints")
    assert writing, "the save finished before the kill landed"
    saving = max(writing)
    state_after_kill = {
        "finished": finished,
        "rows": _train_rows(workdir),
        "variables": checkpoints.restore_variables(workdir),
    }
    rerun = subprocess.run(
        command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT
    )
    return workdir, saving, state_after_kill, rerun


def test_the_kill_interrupted_a_save(killed):
    _, saving, after_kill, _ = killed
    assert saving not in after_kill["finished"]
    assert after_kill["finished"] and max(after_kill["finished"]) == saving - 1


def test_the_previous_checkpoint_is_usable(killed):
    _, saving, after_kill, _ = killed
    variables = after_kill["variables"]
    assert set(variables) == {"params", "batch_stats"}
    leaves = jax.tree_util.tree_leaves(variables)
    assert len(leaves) == 347 and all(np.all(np.isfinite(leaf)) for leaf in leaves)


def test_the_rerun_resumes_from_it_and_recomputes_the_same_steps(killed):
    workdir, saving, after_kill, rerun = killed
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    previous = saving - 1
    assert f"Resumed from step {previous}" in rerun.stdout
    before = {row["step"]: row for row in after_kill["rows"]}
    after = _train_rows(workdir)[len(after_kill["rows"]) :]
    assert [row["step"] for row in after] == list(range(previous + 1, STEPS + 1))
    # The killed run logged the steps up to the one it was saving: the rerun, from the previous
    # checkpoint's parameters and data position, computes them again identically.
    recomputed = [row for row in after if row["step"] in before]
    assert recomputed and recomputed[0]["step"] == previous + 1
    for row in recomputed:
        for term in ("total", "heatmaps", "offsets", "oks", "refined_heatmaps"):
            np.testing.assert_allclose(row[term], before[row["step"]][term], rtol=1e-6)
    finished, _ = _steps(workdir / "checkpoints")
    assert STEPS in finished
    final = checkpoints.restore_variables(workdir)
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(final))
