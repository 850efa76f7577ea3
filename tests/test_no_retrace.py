"""The jitted test-time pipeline compiles once per input size.

`pipeline.make_predict_fn` jits `functools.partial(pipeline.predict_poses, model, ...)`. Three
independent counters are checked:
- traces: the module-level `predict_poses` is replaced by a wrapper that records each trace
  (guarded by `chex.assert_max_traces`);
- XLA compilations: a `jax.monitoring` listener counts backend compile events;
- the jitted function's dispatch cache size (`_cache_size()`).
All images are created as jax arrays before counting: the C++ dispatch cache keys on the Python
type of an argument, so mixing numpy and jax arrays adds a dispatch entry (no trace, no compile),
and `jnp.asarray` itself compiles a tiny helper the first time.
Small images keep the two compiles cheap (~4 s each on CPU).
"""

import functools
from pathlib import Path

import chex
import jax
import numpy as np
import pytest
from jax import monitoring

from logocap_jax import config_utils
from logocap_jax.inference import pipeline
from logocap_jax.weights import convert

ROOT = Path(__file__).resolve().parent.parent
SIZE_A = (64, 128)
SIZE_B = (64, 96)
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


@pytest.fixture(scope="module")
def tiny():
    # Converted weights: a real jitted init of the model takes ~40 s to compile on CPU.
    config = config_utils.load_config(str(ROOT / "configs" / "tiny.py"))
    model = config_utils.build_model(config)
    variables = convert.variables_from_state_dict(
        convert.load_state_dict(str(ROOT / "tests" / "data" / "golden" / "tiny_state_dict.npz")),
        convert.model_template(model),
    )
    return config, model, jax.device_put(variables)


@pytest.fixture
def compile_events():
    events = []

    def listener(name, duration, **kwargs):
        if name == COMPILE_EVENT:
            events.append(duration)

    monitoring.register_event_duration_secs_listener(listener)
    yield events
    monitoring.unregister_event_duration_listener(listener)


def _image(seed, size):
    image = np.random.default_rng(seed).normal(size=(1, *size, 3)).astype(np.float32)
    return jax.block_until_ready(jax.device_put(image))


@pytest.mark.slow
def test_compiles_once_per_input_size(tiny, monkeypatch, compile_events):
    config, model, variables = tiny
    images = [
        _image(0, SIZE_A),
        _image(1, SIZE_A),
        _image(2, SIZE_B),
        _image(3, SIZE_A),
        _image(4, SIZE_B),
    ]
    traces = []
    original = pipeline.predict_poses

    @functools.wraps(original)
    def counted(model, variables, images, settings):
        traces.append(images.shape)
        return original(model, variables, images, settings=settings)

    chex.clear_trace_counter()
    monkeypatch.setattr(pipeline, "predict_poses", chex.assert_max_traces(counted, n=2))
    predict = pipeline.make_predict_fn(model, config_utils.decode_settings(config))
    compile_events.clear()

    first = jax.device_get(predict(variables, images[0]))
    second = jax.device_get(predict(variables, images[1]))
    assert traces == [(1, *SIZE_A, 3)]
    assert len(compile_events) == 1
    assert predict._cache_size() == 1
    # A different image really was processed (not a stale result).
    assert first.poses.shape == (1, 30, 17, 3)
    assert not np.array_equal(first.poses, second.poses)

    third = jax.device_get(predict(variables, images[2]))
    assert traces == [(1, *SIZE_A, 3), (1, *SIZE_B, 3)]  # exactly one more
    assert len(compile_events) == 2
    assert predict._cache_size() == 2
    assert third.poses.shape == (1, 30, 17, 3)

    # Both sizes stay cached: alternating sizes neither traces nor compiles again.
    jax.block_until_ready(predict(variables, images[3]))
    jax.block_until_ready(predict(variables, images[4]))
    assert len(traces) == 2 and len(compile_events) == 2 and predict._cache_size() == 2
