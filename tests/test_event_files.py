"""training.event_files: TensorBoard event files written without TensorFlow, read back by
TensorBoard's own readers; trimming on resume (no step twice, none out of order), partial
records, file order."""

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator, event_file_loader

from logocap_jax.training import event_files

ROOT = Path(__file__).resolve().parents[1]


def accumulator(logdir):
    """TensorBoard's reader, keeping everything and purging nothing (a step written twice or
    out of order would show)."""
    reader = event_accumulator.EventAccumulator(
        str(logdir),
        size_guidance={"scalars": 0, "images": 0, "tensors": 0},
        purge_orphaned_data=False,
    )
    reader.Reload()
    return reader


def summaries(logdir):
    """[(tag, step)] of every summary value in the directory's files, in reading order."""
    return [
        (value.tag, event.step)
        for path in event_files.event_file_paths(str(logdir))
        for event in event_file_loader.EventFileLoader(path).Load()
        if event.HasField("summary")
        for value in event.summary.value
    ]


def _image(seed):
    return np.random.default_rng(seed).integers(0, 256, (12, 20, 3), dtype=np.uint8)


def _write_run(logdir, steps, *, last_step=None, scale=1.0):
    writer = event_files.EventWriter(str(logdir), last_step=last_step)
    for step in steps:
        writer.scalars(step, {"train/total": scale * step, "train/learning_rate": 0.1})
        if step % 3 == 0:
            writer.images(step, {"eval_images/7": _image(step)})
    writer.close()
    return writer.path


def test_scalars_images_and_text_read_back(tmp_path):
    writer = event_files.EventWriter(str(tmp_path), last_step=None)
    writer.text(0, "config", '    {\n      "a": 1\n    }')
    writer.scalars(1, {"train/total": 0.5, "eval/AP": 0.25})
    writer.images(3, {"eval_images/785": _image(0), "eval_images/139": _image(1)})
    writer.close()
    reader = accumulator(tmp_path)
    tags = reader.Tags()
    assert sorted(tags["scalars"]) == ["eval/AP", "train/total"]
    assert sorted(tags["images"]) == ["eval_images/139", "eval_images/785"]
    assert tags["tensors"] == ["config"]
    assert [(e.step, e.value) for e in reader.Scalars("train/total")] == [(1, 0.5)]
    (image,) = reader.Images("eval_images/785")
    assert (image.step, image.width, image.height) == (3, 20, 12)
    decoded = cv2.imdecode(np.frombuffer(image.encoded_image_string, np.uint8), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB), _image(0))
    (text,) = reader.Tensors("config")
    assert text.step == 0 and text.tensor_proto.string_val == [b'    {\n      "a": 1\n    }']
    assert reader.SummaryMetadata("config").plugin_data.plugin_name == "text"


def test_a_resumed_run_drops_what_came_after_its_checkpoint(tmp_path):
    first = _write_run(tmp_path, range(1, 8))
    _write_run(tmp_path, range(5, 11), last_step=4, scale=10.0)
    logged = summaries(tmp_path)
    assert len(logged) == len(set(logged)), "a step logged twice"
    for tag in ("train/total", "train/learning_rate"):
        steps = [step for name, step in logged if name == tag]
        assert steps == list(range(1, 11)), (tag, steps)
    assert [step for name, step in logged if name == "eval_images/7"] == [3, 6, 9]
    values = {e.step: e.value for e in accumulator(tmp_path).Scalars("train/total")}
    assert values == {s: (s if s <= 4 else 10.0 * s) for s in range(1, 11)}
    # The first run's file was rewritten in place, the resumed run has its own.
    assert len(event_files.event_file_paths(str(tmp_path))) == 2 and os.path.exists(first)


def test_a_fresh_start_removes_old_files(tmp_path):
    _write_run(tmp_path, range(1, 4))
    path = _write_run(tmp_path, range(1, 3), last_step=None)
    assert event_files.event_file_paths(str(tmp_path)) == [path]
    tags = ("train/total", "train/learning_rate")
    assert summaries(tmp_path) == [(tag, step) for step in (1, 2) for tag in tags]


def test_a_partial_last_record_is_dropped(tmp_path):
    path = _write_run(tmp_path, range(1, 4))
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size - 5)
    assert not event_files.read_records(path)[1]
    # The partial record is the last one, step 3's image.
    assert [e.step for e in event_files.read_events(path)][-1] == 3
    _write_run(tmp_path, [4], last_step=3)
    assert event_files.read_records(path)[1]
    assert [step for name, step in summaries(tmp_path) if name == "train/total"] == [1, 2, 3, 4]


def test_a_new_file_sorts_after_the_others_within_the_same_second(tmp_path):
    paths = [_write_run(tmp_path, [step], last_step=step - 1) for step in (1, 2, 3)]
    assert event_files.event_file_paths(str(tmp_path)) == paths


def test_writing_never_imports_tensorflow(tmp_path):
    """Not even an attempt: TensorBoard's `compat.tf` imports TensorFlow when it is installed,
    so an import that merely failed here would import it elsewhere."""
    code = f"""
import sys

attempts = []


class Watch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "tensorflow":
            attempts.append(name)
        return None


sys.meta_path.insert(0, Watch())
import numpy as np
import ml_collections
from logocap_jax.training import training_log

config = ml_collections.ConfigDict({{"train": {{"wandb_project": ""}}}})
log = training_log.TrainingLog({str(tmp_path)!r}, config, last_step=None)
log.write(1, "train", {{"total": 0.5}})
log.write(1, "eval", {{"AP": 0.1}}, images={{7: np.zeros((8, 8, 3), np.uint8)}})
log.close()
log = training_log.TrainingLog({str(tmp_path)!r}, config, last_step=0)
log.close()
assert not attempts, attempts
assert "tensorflow" not in sys.modules
"""
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # The second log trimmed the first one's files back to step 0.
    assert summaries(tmp_path / "tensorboard") == [("config", 0)]


@pytest.mark.parametrize("last_step", [None, 0, 5])
def test_trim_of_an_empty_or_missing_directory(tmp_path, last_step):
    event_files.trim(str(tmp_path / "missing"), last_step)
    event_files.trim(str(tmp_path), last_step)
    assert os.listdir(tmp_path) == []
