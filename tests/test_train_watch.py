"""A short training run watched through TensorBoard, resumed after losing its last checkpoint:
the event files read back through TensorBoard's own reader hold every tag at its steps once, in
order, agree with metrics.jsonl, hold the evaluation drawings and the config; the redirected
output has plain progress lines and no carriage returns, and none with --quiet.

The crash is made deterministic: after the first run (6 steps, checkpoints at 2, 4, 6) the
checkpoint of step 6 is deleted, as if the run had died after logging steps 5 and 6 but before
that checkpoint was committed. The second run (to step 8) resumes from step 4, so it logs steps
5 and 6 again; TensorBoard must show them once, with the second run's values.
"""

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import train_runs
from tensorboard.backend.event_processing import event_accumulator, event_file_loader

from logocap_jax.training import curves, event_files, training_log
from logocap_jax.weights import checkpoints

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
DRAWN_IDS = (785, 165518)  # the first two of configs/mini.py's evaluation images
EVAL_STEPS = [0, 3, 6, 8]


def _command(workdir, data_dir, steps, *flags):
    return train_runs.mini_command(
        workdir,
        data_dir,
        steps,
        "--config.train.checkpoint_every_steps=2",
        "--config.train.eval_every_steps=3",
        "--config.eval.logged_images=2",
        "--config.data.input_size=128",
        "--config.data.output_size=32",
        "--config.test.input_size=128",
        *flags,
    )


def _train(command):
    # Pipes: stdout and stderr are not terminals, as in a SLURM log or `> train.log`.
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stderr[-5000:]
    return result


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("watch")
    workdir, data_dir = tmp_path / "work", tmp_path / "tfds"
    first = _train(_command(workdir, data_dir, 6, "--quiet"))
    assert checkpoints.training_steps(workdir) == [2, 4, 6]
    shutil.rmtree(workdir / checkpoints.LATEST_DIR / "6")
    resumed_at = time.time()
    second = _train(_command(workdir, data_dir, 8))
    return dict(workdir=workdir, first=first, second=second, resumed_at=resumed_at)


def _events(workdir):
    """Every summary value in the event files, in TensorBoard's reading order:
    [(tag, step, wall time)]."""
    logdir = str(workdir / training_log.TENSORBOARD_DIR)
    return [
        (value.tag, event.step, event.wall_time)
        for path in event_files.event_file_paths(logdir)
        for event in event_file_loader.EventFileLoader(path).Load()
        if event.HasField("summary")
        for value in event.summary.value
    ]


def _accumulator(workdir):
    reader = event_accumulator.EventAccumulator(
        str(workdir / training_log.TENSORBOARD_DIR),
        size_guidance={"scalars": 0, "images": 0, "tensors": 0},
        purge_orphaned_data=False,
    )
    reader.Reload()
    return reader


def test_every_tag_at_its_steps_once_and_in_order(runs):
    events = _events(runs["workdir"])
    steps = {}
    for tag, step, _ in events:
        steps.setdefault(tag, []).append(step)
    expected_train = [
        *curves.LOSS_TERMS,
        "learning_rate",
        "grad_norm",
        "selected_instances",
        "step_time",
        "examples_per_second",
        "input_wait_share",
        "replaced_records",
    ]
    for name in expected_train:
        assert steps.pop(f"train/{name}") == list(range(1, 9)), name
    for name in ("AP", "AP50", "AP75", "APM", "APL", "AR", "AR50", "AR75", "ARM", "ARL"):
        assert steps.pop(f"eval/{name}") == EVAL_STEPS, name
    for image_id in DRAWN_IDS:
        assert steps.pop(f"eval_images/{image_id}") == EVAL_STEPS
    assert steps.pop("config") == [0]
    assert steps == {}


def test_resumed_steps_come_from_the_resumed_run(runs):
    for tag, step, wall_time in _events(runs["workdir"]):
        assert (wall_time > runs["resumed_at"]) == (step > 4), (tag, step)


def test_tensorboard_and_metrics_jsonl_agree(runs):
    reader = _accumulator(runs["workdir"])
    metrics = curves.read_metrics(str(runs["workdir"]))
    assert sorted(metrics["train"]) == list(range(1, 9))
    assert sorted(metrics["eval"]) == EVAL_STEPS
    for split, rows in metrics.items():
        for step, row in rows.items():
            for name, value in row.items():
                if name in ("step", "split", "time"):
                    continue
                (event,) = [e for e in reader.Scalars(f"{split}/{name}") if e.step == step]
                assert event.value == pytest.approx(value, rel=1e-6), (split, step, name)


def test_the_drawings_are_there(runs):
    reader = _accumulator(runs["workdir"])
    for image_id in DRAWN_IDS:
        images = reader.Images(f"eval_images/{image_id}")
        assert [image.step for image in images] == EVAL_STEPS
        assert all(image.encoded_image_string.startswith(b"\x89PNG") for image in images)
    sizes = {(image.width, image.height) for image in reader.Images("eval_images/785")}
    assert sizes == {(640, 425)}  # the photo's own size


def test_redirected_output_has_plain_lines_and_no_carriage_returns(runs):
    first, second = runs["first"], runs["second"]
    for result in (first, second):
        assert "\r" not in result.stdout + result.stderr
    assert not [line for line in first.stderr.splitlines() if line.startswith("train:")]
    lines = [line for line in second.stderr.splitlines() if line.startswith("train:")]
    assert [line.split(" ")[1] for line in lines] == ["5/8", "6/8", "7/8", "8/8"], lines
    assert all("loss=" in line and "examples/s=" in line for line in lines)
