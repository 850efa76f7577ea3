"""Fixtures shared by the test modules, and the two test tiers.

`python -m pytest -q` runs the default tier: every test not marked `slow`, at least one test of
every path (parity of each stage, a training step, the predict CLI, bad input, a CMP variant,
the pretrained download). `python -m pytest -q -m ""` runs the complete suite (`.ci/run`).

Session fixtures build the tiny model, its variables and its compiled predictors once for all
modules. Subprocesses (train.py, predict, eval) share one JAX compilation cache per session, so
a program that several of them compile is compiled once.
"""

import golden_arrays
import pytest

from logocap_jax import config_utils
from logocap_jax.inference import predict
from logocap_jax.weights import convert

TINY_CONFIG = str(golden_arrays.ROOT / "configs" / "tiny.py")


@pytest.fixture(scope="session", autouse=True)
def subprocess_compilation_cache(tmp_path_factory):
    """JAX's persistent compilation cache for the subprocesses this session starts.

    Set in the environment after collection imported JAX (JAX reads it at import), so the
    tests' own process does not use it: tests that count compilations see every one.
    """
    directory = tmp_path_factory.mktemp("jax_compilation_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JAX_COMPILATION_CACHE_DIR", str(directory))
        patch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
        yield directory


@pytest.fixture
def tiny_config():
    """configs/tiny.py, a fresh unlocked copy for each test."""
    return config_utils.load_config(TINY_CONFIG)


@pytest.fixture(scope="session")
def tiny_model():
    return config_utils.build_model(config_utils.load_config(TINY_CONFIG))


def _variables(model, state_dict: str) -> dict:
    return convert.variables_from_state_dict(
        convert.load_state_dict(str(golden_arrays.GOLDEN / state_dict)),
        convert.model_template(model),
    )


@pytest.fixture(scope="session")
def tiny_variables(tiny_model):
    """The weights of the official inference fixtures (tiny_state_dict.npz)."""
    return _variables(tiny_model, "tiny_state_dict.npz")


@pytest.fixture(scope="session")
def tiny_step_variables(tiny_model):
    """The weights right before the official training step (tiny_loss_state_dict.npz)."""
    return _variables(tiny_model, "tiny_loss_state_dict.npz")


@pytest.fixture(scope="session")
def golden_step():
    """The official training step's arrays (tiny_loss.npz)."""
    return golden_arrays.load("tiny_loss.npz")


@pytest.fixture(scope="session")
def golden_forward():
    """The official test-time intermediates, {flip test: arrays} (tiny_forward*.npz)."""
    return {
        True: golden_arrays.load("tiny_forward.npz"),
        False: golden_arrays.load("tiny_forward_noflip.npz"),
    }


@pytest.fixture(scope="session")
def tiny_predictors(tiny_variables):
    """Batch-1 Predictors of the tiny weights, {flip test: Predictor}, keeping the pipeline's
    outputs; shared so that each input shape compiles once per session."""
    config = config_utils.load_config(TINY_CONFIG)
    return {
        flip: predict.Predictor.from_config(
            config, tiny_variables, keep_outputs=True, flip_test=flip
        )
        for flip in (True, False)
    }
