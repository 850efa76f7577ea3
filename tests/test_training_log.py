"""What a training run reports: metrics.jsonl and TensorBoard agree, the config once, timing
figures, and the training loop's rows and progress with a stand-in train step."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec
from tensorboard.backend.event_processing import event_accumulator

from logocap_jax import config_utils, train_lib, training_io, training_log

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


def test_throughput_leaves_out_excluded_time(monkeypatch):
    clock = iter([0.0, 1.0, 1.5, 2.0, 5.0, 10.0, 12.0, 14.0])
    monkeypatch.setattr(training_io.time, "perf_counter", lambda: next(clock))
    throughput = training_io.Throughput(global_batch_size=4)  # starts at 0
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


def _stand_in_state(model, tx, rng, input_size, mesh):
    del model, tx, rng, input_size
    state = train_lib.TrainState.create(
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
    monkeypatch.setattr(train_lib, "create_train_state", _stand_in_state)
    monkeypatch.setattr(train_lib, "make_train_step", _stand_in_step)
    config = _config(
        num_steps=STEPS, log_every_steps=2, checkpoint_every_steps=STEPS, eval_every_steps=0
    )
    config.data.update(data_dir=str(tmp_path / "tfds"), input_size=64, output_size=16)
    workdir = tmp_path / "work"
    train_lib.train_and_evaluate(config, str(workdir), progress=progress)
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
