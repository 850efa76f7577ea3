"""Loading `configs/*.py` files and building what they describe.

Configs reach modules only as keyword arguments, so a misspelt key fails loudly as a TypeError.
"""

import importlib.util
import os
import sys

import jax.numpy as jnp
import ml_collections

from logocap_jax.logo_ca import LogoCaSettings
from logocap_jax.models import LogoCap
from logocap_jax.pipeline import DecodeSettings


def load_config(path: str) -> ml_collections.ConfigDict:
    """Imports a config file and returns its `get_config()`."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"Config file not found: {path}")
    root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
    if root not in sys.path:
        # Config files import their base config as `configs.<name>`.
        sys.path.insert(0, root)
    spec = importlib.util.spec_from_file_location(f"_logocap_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise AttributeError(f"Config file {path} defines no get_config()")
    return module.get_config()


def build_model(config, **overrides) -> LogoCap:
    """LogoCap(**config.model), e.g. build_model(config, dtype=jnp.bfloat16)."""
    return LogoCap(**{**config.model.to_dict(), **overrides})


def logo_ca_settings(config) -> LogoCaSettings:
    """LogoCaSettings(**config.logo_ca), shared by the test-time and training settings."""
    return LogoCaSettings(**config.logo_ca.to_dict())


def decode_settings(config, **overrides) -> DecodeSettings:
    """DecodeSettings(**config.decode) with config.logo_ca; `overrides` replace decode fields."""
    return DecodeSettings(
        **{**config.decode.to_dict(), **overrides}, logo_ca=logo_ca_settings(config)
    )


DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def dtype_named(name: str):
    """The JAX dtype of a config's dtype name ('float32' or 'bfloat16')."""
    if name not in DTYPES:
        raise ValueError(f"Unknown compute dtype {name!r}; expected one of {sorted(DTYPES)}")
    return DTYPES[name]


def inference_dtype(config):
    """The compute dtype of inference, config.test.compute_dtype."""
    return dtype_named(config.test.compute_dtype)


def default_config_path(name: str) -> str:
    """Path of configs/<name>.py in this checkout."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.path.join(root, "configs", f"{name}.py")
