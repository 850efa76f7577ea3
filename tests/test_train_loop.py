"""The training loop's host side: waits for the device per step, non-finite losses and stop
signals, with a stand-in train step (the loop treats the step as an opaque jitted function)."""

import json
import os
import signal
from pathlib import Path

import jax
import jax.numpy as jnp
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from logocap_jax import config_utils
from logocap_jax.training import run_io, trainer
from logocap_jax.weights import checkpoints

NUM_STEPS = 6
MINI = Path(__file__).parent.parent / "configs" / "mini.py"


def _config(tmp_path, **train):
    config = config_utils.load_config(str(MINI))
    config.data.data_dir = str(tmp_path / "tfds")
    config.data.input_size = 64
    config.data.output_size = 16
    config.train.update(
        num_steps=NUM_STEPS, log_every_steps=3, checkpoint_every_steps=3, eval_every_steps=0
    )
    config.train.update(train)
    return config


def _stand_in_state(model, tx, rng, input_size, mesh):
    del model, tx, rng, input_size
    state = trainer.TrainState.create(
        apply_fn=None, params={"w": jnp.zeros(3)}, tx=optax.sgd(0.1), batch_stats={}
    )
    return jax.device_put(state, NamedSharding(mesh, PartitionSpec()))


def _stand_in_step(nan_at=None):
    """make_train_step's stand-in: the metrics depend on the batch, `nan_at` makes the total
    NaN at that step (1-based)."""

    def make(model, settings, loss_weights, mesh, state, schedule=None):
        replicated = NamedSharding(mesh, PartitionSpec())

        def step(state, batch):
            total = jnp.mean(batch["heatmaps"]) + state.step
            if nan_at is not None:
                total = jnp.where(state.step + 1 == nan_at, jnp.nan, total)
            metrics = {"total": total, "learning_rate": schedule(state.step)}
            return state.replace(step=state.step + 1), metrics

        shardings = jax.tree_util.tree_map(lambda x: x.sharding, state)
        return jax.jit(step, out_shardings=(shardings, replicated), donate_argnums=(0,))

    return make


@pytest.fixture
def stand_in(monkeypatch):
    monkeypatch.setattr(trainer, "create_train_state", _stand_in_state)
    monkeypatch.setattr(trainer, "make_train_step", _stand_in_step())


def _slow_step(model, settings, loss_weights, mesh, state, schedule=None):
    """make_train_step's stand-in that computes for a while (a chain of matrix products, about
    a second on a 2-core machine): a step is still running unless the loop waited."""
    replicated = NamedSharding(mesh, PartitionSpec())

    def step(state, batch):
        start = jnp.full((SLOW_SIDE, SLOW_SIDE), jnp.mean(batch["heatmaps"]))
        chain = jax.lax.fori_loop(
            0, SLOW_PRODUCTS, lambda _, a: jnp.tanh(a @ a + 1.0) / SLOW_SIDE, start
        )
        total = jnp.mean(batch["heatmaps"]) + state.step + 0.0 * chain[0, 0]
        metrics = {"total": total, "learning_rate": schedule(state.step)}
        return state.replace(step=state.step + 1), metrics

    shardings = jax.tree_util.tree_map(lambda x: x.sharding, state)
    return jax.jit(step, out_shardings=(shardings, replicated), donate_argnums=(0,))


SLOW_SIDE, SLOW_PRODUCTS = 512, 240


def test_steps_between_log_steps_never_wait_for_the_device(monkeypatch, tmp_path):
    """When the loop takes the batch of step k + 1, step k must still be running (it takes
    about a second; handing over a batch takes milliseconds) unless k is a log or checkpoint
    step (2, 4, 6 here): any wait for the device (jax.device_get, np.asarray, float() of a
    metric) would have let it finish. The explicit fetches are counted per step as well."""
    outputs, ready, fetches = [], {}, []
    compile_together, shard_batch, device_get = (
        run_io.compile_together,
        trainer.shard_batch,
        jax.device_get,
    )

    def recording_compile(jitted, *args):
        compiled = compile_together(jitted, *args)

        def run(*args):
            state, metrics = compiled(*args)
            outputs.append(metrics["total"])
            return state, metrics

        return run

    def handing_over(local, mesh):
        if outputs:
            ready[len(outputs)] = outputs[-1].is_ready()
        return shard_batch(local, mesh)

    def counting_device_get(tree):
        fetches.append(len(outputs))
        return device_get(tree)

    monkeypatch.setattr(trainer, "create_train_state", _stand_in_state)
    monkeypatch.setattr(trainer, "make_train_step", _slow_step)
    monkeypatch.setattr(run_io, "compile_together", recording_compile)
    monkeypatch.setattr(trainer, "shard_batch", handing_over)
    monkeypatch.setattr(jax, "device_get", counting_device_get)
    config = _config(tmp_path, log_every_steps=2, checkpoint_every_steps=NUM_STEPS)
    trainer.train_and_evaluate(config, str(tmp_path / "work"))
    assert ready == {1: False, 2: True, 3: False, 4: True, 5: False}, ready
    per_step = {s: fetches.count(s) for s in range(1, NUM_STEPS + 1)}
    # One jax.device_get fetches the pending steps' metrics at each log step.
    assert per_step == {1: 0, 2: 1, 3: 0, 4: 1, 5: 0, 6: 1}, per_step
    rows = [json.loads(line) for line in (tmp_path / "work" / "metrics.jsonl").open()]
    assert [row["step"] for row in rows] == [2, 4, 6]
    # Rows average the steps since the previous row: total = mean heatmap + step index.
    assert rows[1]["total"] - rows[0]["total"] == pytest.approx(2.0, abs=0.1)


def test_non_finite_loss_names_its_steps_and_the_last_good_checkpoint(monkeypatch, tmp_path):
    monkeypatch.setattr(trainer, "create_train_state", _stand_in_state)
    monkeypatch.setattr(trainer, "make_train_step", _stand_in_step(nan_at=5))
    workdir = tmp_path / "work"
    with pytest.raises(FloatingPointError) as error:
        trainer.train_and_evaluate(_config(tmp_path), str(workdir))
    message = str(error.value)
    assert "in steps 4-6" in message and "first at step 5" in message, message
    assert f"last good checkpoint is step 3 in {workdir / checkpoints.LATEST_DIR}" in message
    assert checkpoints.training_steps(workdir) == [3]


@pytest.fixture
def python_sigint_handler():
    """Python's own SIGINT handler during the test, whatever an earlier test left, so that a
    Ctrl-C given back raises KeyboardInterrupt."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_stop_signals_stop_once_and_restore_the_handlers(python_sigint_handler):
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    with run_io.StopSignals() as stop:
        assert signal.getsignal(signal.SIGTERM) != before[signal.SIGTERM]
        assert not stop.reached(1)
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.reached(2)
    assert {s: signal.getsignal(s) for s in before} == before
    with run_io.StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.reached(1)
        # The first Ctrl-C asked for a stop and gave SIGINT back: a second one interrupts.
        assert signal.getsignal(signal.SIGINT) == before[signal.SIGINT]
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert {s: signal.getsignal(s) for s in before} == before


def test_the_loop_restores_signal_handlers(stand_in, tmp_path):
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    trainer.train_and_evaluate(_config(tmp_path), str(tmp_path / "work"))
    assert {s: signal.getsignal(s) for s in before} == before


def test_metrics_mean_covers_the_fetched_steps():
    metrics = run_io.StepMetrics("unused")
    for step in (1, 2, 3):
        metrics.add(step, {"total": jnp.float32(step)})
    metrics.fetch(last_saved=None)
    metrics.add(4, {"total": jnp.float32(10.0)})
    metrics.fetch(last_saved=None)
    assert metrics.mean() == {"total": pytest.approx(4.0)}
    metrics.add(5, {"total": jnp.float32(-1.0)})
    metrics.fetch(last_saved=None)
    assert metrics.mean() == {"total": pytest.approx(-1.0)}
