"""Loading `configs/*.py` files and building what they describe.

Configs reach modules only as keyword arguments, so a misspelt key fails loudly as a TypeError.
"""

import importlib.util
import os
import sys

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
    """LogoCap(**config.model) with the local window of config.logo_ca, e.g.
    build_model(config, dtype=jnp.bfloat16)."""
    window = dict(local_half_size=config.logo_ca.local_half_size)
    return LogoCap(**{**config.model.to_dict(), **window, **overrides})


def logo_ca_settings(config) -> LogoCaSettings:
    """LogoCaSettings(**config.logo_ca), shared by the test-time and training settings."""
    return LogoCaSettings(**config.logo_ca.to_dict())


def decode_settings(config, **overrides) -> DecodeSettings:
    """DecodeSettings(**config.decode) with config.logo_ca; `overrides` replace decode fields."""
    return DecodeSettings(
        **{**config.decode.to_dict(), **overrides}, logo_ca=logo_ca_settings(config)
    )


def default_config_path(name: str) -> str:
    """Path of configs/<name>.py in this checkout."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.path.join(root, "configs", f"{name}.py")
