"""What a training run reports: metrics.jsonl and TensorBoard agree, the config once, timing
figures, optional Weights & Biases (a missing package, the calls it gets, its offline mode),
and the training loop's rows and progress with a stand-in train step."""

import json
import os
import struct
import subprocess
import sys
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec
from tensorboard.backend.event_processing import event_accumulator

from logocap_jax import config_utils, errors
from logocap_jax.training import run_io, trainer, training_log, wandb_log

ROOT = Path(__file__).resolve().parents[1]
MINI = ROOT / "configs" / "mini.py"
STEPS = 6


def _config(**train):
    config = config_utils.load_config(str(MINI))
    config.train.update(train)
    return config


def _rows(workdir):
    return [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def _scalars(workdir):
    reader = event_accumulator.EventAccumulator(
        str(Path(workdir) / training_log.TENSORBOARD_DIR),
        size_guidance={"scalars": 0, "images": 0, "tensors": 0},
        purge_orphaned_data=False,
    )
    reader.Reload()
    return reader


def test_rows_and_scalars_agree_and_the_config_is_written_once(tmp_path):
    config = _config()
    log = training_log.TrainingLog(str(tmp_path), config, last_step=None)
    log.write(1, "train", {"total": 0.5, "examples_per_second": 8.0})
    log.write(2, "eval", {"AP": 0.25, "AR": 0.5}, images={785: jnp.zeros((4, 6, 3), jnp.uint8)})
    log.close()
    log = training_log.TrainingLog(str(tmp_path), config, last_step=2)
    log.write(3, "train", {"total": 0.25, "examples_per_second": 9.0})
    log.close()
    reader = _scalars(tmp_path)
    for row in _rows(tmp_path):
        for name, value in row.items():
            if name not in ("step", "split", "time"):
                (event,) = [
                    e for e in reader.Scalars(f"{row['split']}/{name}") if e.step == row["step"]
                ]
                assert event.value == pytest.approx(value)
    assert [e.step for e in reader.Images("eval_images/785")] == [2]
    (text,) = reader.Tensors("config")
    assert text.step == 0
    markdown = text.tensor_proto.string_val[0].decode()
    assert all(line.startswith("    ") for line in markdown.splitlines())
    assert json.loads(markdown)["train"]["global_batch_size"] == 4


def test_only_process_0_writes(tmp_path, monkeypatch):
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    log = training_log.TrainingLog(str(tmp_path), _config(wandb_project="p"), last_step=None)
    log.write(1, "train", {"total": 0.5})
    log.close()
    assert os.listdir(tmp_path) == []


def test_throughput_leaves_out_excluded_time(monkeypatch):
    clock = iter([0.0, 1.0, 1.5, 2.0, 5.0, 10.0, 12.0, 14.0])
    monkeypatch.setattr(run_io.time, "perf_counter", lambda: next(clock))
    throughput = run_io.Throughput(global_batch_size=4)  # starts at 0
    with throughput.waiting_for_input():  # 1.0 - 1.5
        pass
    throughput.step_done()
    with throughput.excluded():  # 2.0 - 5.0
        pass
    throughput.step_done()
    # At 10: 10 s, 3 of them excluded, over 2 steps.
    assert throughput.summary() == pytest.approx(
        {"step_time": 3.5, "examples_per_second": 8 / 7, "input_wait_share": 0.5 / 7}
    )
    throughput.step_done()
    assert throughput.summary()["step_time"] == pytest.approx(2.0)  # 10 -> 12


def test_wandb_missing_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    with pytest.raises(errors.MissingDependencyError) as error:
        training_log.TrainingLog(str(tmp_path), _config(wandb_project="lab"), last_step=None)
    message = errors.describe(error.value)
    assert message == (
        "train.wandb_project='lab' needs wandb, which is not installed: pip install "
        "'logocap-jax[wandb]' (or leave train.wandb_project empty)"
    )
    assert errors.is_user_error(error.value)
    assert not (tmp_path / training_log.TENSORBOARD_DIR).exists()


class FakeWandb(types.ModuleType):
    """Records the calls a W&B run gets."""

    def __init__(self):
        super().__init__("wandb")
        self.calls = []

    def init(self, **kwargs):
        self.calls.append(("init", kwargs))
        return self

    def define_metric(self, name, **kwargs):
        self.calls.append(("define_metric", name, kwargs))

    def log(self, values):
        self.calls.append(("log", values))

    def finish(self):
        self.calls.append(("finish",))

    def Image(self, image):  # noqa: N802 (wandb's name)
        return ("image", image.shape)


def test_wandb_gets_the_same_values_against_the_step(tmp_path, monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    config = _config(wandb_project="lab")
    for last_step, step in ((None, 1), (1, 2)):
        log = training_log.TrainingLog(str(tmp_path / "run"), config, last_step=last_step)
        log.write(step, "train", {"total": 1.0 / step})
        log.write(step, "eval", {"AP": 0.1}, images={785: jnp.zeros((4, 6, 3), jnp.uint8)})
        log.close()
    inits = [call[1] for call in fake.calls if call[0] == "init"]
    assert len(inits) == 2 and inits[0]["id"] == inits[1]["id"]  # the resumed run is the same
    assert inits[0]["project"] == "lab" and inits[0]["resume"] == "allow"
    assert inits[0]["dir"] == str(tmp_path / "run") and inits[0]["name"] == "run"
    assert inits[0]["config"]["train"]["wandb_project"] == "lab"
    assert (tmp_path / "run" / wandb_log.RUN_ID_FILE).read_text().strip() == inits[0]["id"]
    kinds = [call[0] for call in fake.calls]
    assert kinds == 2 * ["init", "define_metric", "define_metric", "log", "log", "finish"]
    assert fake.calls[1] == ("define_metric", "step", {})
    assert fake.calls[2] == ("define_metric", "*", {"step_metric": "step"})
    logs = [call[1] for call in fake.calls if call[0] == "log"]
    assert logs[0] == {"step": 1, "train/total": 1.0}
    assert logs[1] == {"step": 1, "eval/AP": 0.1, "eval_images/785": ("image", (4, 6, 3))}
    assert logs[2] == {"step": 2, "train/total": 0.5}


def _leveldb_records(data: bytes):
    """The records of a W&B run file (a LevelDB log: 32 KiB blocks of chunks after a 7-byte
    file header)."""
    records, pending, offset, block = [], b"", 7, 32768
    while offset + 7 <= len(data):
        if block - offset % block < 7:
            offset += block - offset % block
            continue
        _, length, kind = struct.unpack_from("<IHB", data, offset)
        if kind == 0:
            break
        pending += data[offset + 7 : offset + 7 + length]
        offset += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            records.append(pending)
            pending = b""
    return records


@pytest.mark.slow
def test_wandb_offline_run(tmp_path):
    pytest.importorskip("wandb")
    from wandb.proto import wandb_internal_pb2

    code = f"""
import ml_collections, numpy as np
from logocap_jax.training import training_log
config = ml_collections.ConfigDict({{"train": {{"wandb_project": "lab"}}}})
log = training_log.TrainingLog({str(tmp_path)!r}, config, last_step=None)
for step in (1, 2):
    log.write(step, "train", {{"total": 1.0 / step}})
log.write(2, "eval", {{"AP": 0.25}}, images={{7: np.zeros((8, 8, 3), np.uint8)}})
log.close()
"""
    env = dict(os.environ, PYTHONPATH=str(ROOT), WANDB_MODE="offline", WANDB_SILENT="true")
    env["WANDB_CONSOLE"] = "off"
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run_file,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    history = []
    for data in _leveldb_records(run_file.read_bytes()):
        record = wandb_internal_pb2.Record.FromString(data)
        if record.WhichOneof("record_type") == "history":
            items = {
                "/".join(item.nested_key) or item.key: item.value_json
                for item in record.history.item
            }
            history.append({k: v for k, v in items.items() if not k.startswith("_")})
    assert history[0] == {"step": "1", "train/total": "1"}
    assert history[1] == {"step": "2", "train/total": "0.5"}
    assert history[2]["step"] == "2" and history[2]["eval/AP"] == "0.25"
    assert history[2]["eval_images/7/_type"] == '"image-file"'
    assert (history[2]["eval_images/7/width"], history[2]["eval_images/7/height"]) == ("8", "8")


def _stand_in_state(model, tx, rng, input_size, mesh):
    del model, tx, rng, input_size
    state = trainer.TrainState.create(
        apply_fn=None, params={"w": jnp.zeros(3)}, tx=optax.sgd(0.1), batch_stats={}
    )
    return jax.device_put(state, NamedSharding(mesh, PartitionSpec()))


def _stand_in_step(model, settings, loss_weights, mesh, state, schedule=None):
    replicated = NamedSharding(mesh, PartitionSpec())

    def step(state, batch):
        metrics = {"total": jnp.mean(batch["heatmaps"]) + state.step, "grad_norm": 1.0}
        return state.replace(step=state.step + 1), metrics

    shardings = jax.tree_util.tree_map(lambda x: x.sharding, state)
    return jax.jit(step, out_shardings=(shardings, replicated), donate_argnums=(0,))


@pytest.mark.parametrize("progress", [True, False])
def test_the_loop_logs_throughput_and_reports_progress(monkeypatch, tmp_path, capsys, progress):
    monkeypatch.setattr(trainer, "create_train_state", _stand_in_state)
    monkeypatch.setattr(trainer, "make_train_step", _stand_in_step)
    config = _config(
        num_steps=STEPS, log_every_steps=2, checkpoint_every_steps=STEPS, eval_every_steps=0
    )
    config.data.update(data_dir=str(tmp_path / "tfds"), input_size=64, output_size=16)
    workdir = tmp_path / "work"
    trainer.train_and_evaluate(config, str(workdir), progress=progress)
    rows = _rows(workdir)
    assert [row["step"] for row in rows] == [2, 4, 6]
    for row in rows:
        assert row["examples_per_second"] == pytest.approx(4 / row["step_time"])
        assert 0 <= row["input_wait_share"] < 1
    reader = _scalars(workdir)
    for name in ("total", "grad_norm", "step_time", "examples_per_second", "input_wait_share"):
        assert [e.step for e in reader.Scalars(f"train/{name}")] == [2, 4, 6], name
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("train:")]
    if progress:
        assert [line.split(" ")[1] for line in lines] == ["2/6", "4/6", "6/6"], lines
        assert "loss=" in lines[0] and "examples/s=" in lines[0]
    else:
        assert lines == []
