"""Loading configs, bundled ones by name ("w32") or any config file, and building what they
describe.

Configs reach modules only as keyword arguments; a key that is not one of them, or a value the
settings reject, is a `ConfigError` naming the section and key.
"""

import dataclasses
import hashlib
import importlib.util
import os
import re
import sys
import traceback
import types

import jax.numpy as jnp
import ml_collections
from absl import flags
from ml_collections import config_flags

from logocap_jax import errors, resources
from logocap_jax.data.input_pipeline import Augmentation
from logocap_jax.inference.pipeline import DecodeSettings
from logocap_jax.logo_ca import LogoCaSettings
from logocap_jax.models import LogoCap, remat
from logocap_jax.training.forward import TrainSettings
from logocap_jax.training.losses import LossWeights


def load_config(name_or_path) -> ml_collections.ConfigDict:
    """The `get_config()` of a bundled config (by name) or of a config file.

    Args:
      name_or_path: the name of a bundled config ("w32", "w48", "tiny", "mini": a name without
        a dot or path separator), or the path of a config file. A config file imports the
        config it extends relatively (`from . import w32`, a file in its own folder) or loads
        a bundled one with `config_utils.load_config("w32")`.

    Raises:
      InputNotFoundError: the file does not exist.
      ConfigError: the name is not a bundled config; the file fails to run (the message names
        the line), defines no get_config(), or get_config() returns no ConfigDict.
    """
    path = config_path(name_or_path)
    if not os.path.isfile(path):
        raise errors.InputNotFoundError(f"config file not found: {path}")
    try:
        module = _import_file(path)
        if not hasattr(module, "get_config"):
            raise errors.ConfigError(f"config file {path} defines no get_config()")
        config = module.get_config()
    except errors.UserError:
        raise
    except Exception as error:
        # The config file is the user's code: where it fails is what to report.
        raise errors.ConfigError(f"config file {path} fails: {_where(error, path)}") from error
    if not isinstance(config, ml_collections.ConfigDict):
        raise errors.ConfigError(
            f"config file {path}: get_config() returns a {type(config).__name__}, "
            "expected an ml_collections.ConfigDict"
        )
    return config


def is_config_name(value) -> bool:
    """Whether `value` names a bundled config (letters, digits, '_') rather than a file."""
    return isinstance(value, str) and re.fullmatch(r"\w+", value) is not None


def config_path(name_or_path) -> str:
    """The file of a bundled config's name (see `load_config`), or `name_or_path` itself.

    Raises:
      ConfigError: a name that is not a bundled config.
    """
    if not is_config_name(name_or_path):
        return os.fspath(name_or_path)
    names = resources.config_names()
    if name_or_path not in names:
        raise errors.ConfigError(
            f"no bundled config named {name_or_path!r}; bundled: {', '.join(names)} "
            "(or give the path of a config file)"
        )
    return os.path.join(resources.configs_dir(), f"{name_or_path}.py")


def _import_file(path: str):
    """Runs a config file as a module of a package that stands for its folder, so that it can
    import the configs next to it relatively (`from . import w32`), wherever the folder is."""
    directory, file_name = os.path.split(os.path.abspath(path))
    package = f"_logocap_configs_{hashlib.sha256(directory.encode()).hexdigest()[:16]}"
    if package not in sys.modules:
        module = types.ModuleType(package)
        module.__path__ = [directory]
        sys.modules[package] = module
    stem = re.sub(r"\W", "_", os.path.splitext(file_name)[0])
    spec = importlib.util.spec_from_file_location(f"{package}.{stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _where(error: Exception, path: str) -> str:
    """'<Type>: <message> (line N)', N the last line of `path` in the traceback."""
    lines = [
        frame.lineno
        for frame in traceback.extract_tb(error.__traceback__)
        if os.path.abspath(frame.filename) == os.path.abspath(path)
    ]
    if isinstance(error, SyntaxError) and error.lineno:
        lines.append(error.lineno)
    where = f" (line {lines[-1]})" if lines else ""
    return f"{type(error).__name__}: {error}{where}"


def checked_section(config, section: str, settings_class, *, exclude=(), ignore=()) -> dict:
    """`config.<section>` as keyword arguments of `settings_class` (a dataclass): its fields
    but `exclude`, without the section's keys in `ignore` (read elsewhere).

    Raises:
      ConfigError: the config has no such section, or the section has a key that is not a
        field of `settings_class`.
    """
    if section not in config:
        raise errors.ConfigError(f"the config has no section {section!r}")
    values = {k: v for k, v in config[section].to_dict().items() if k not in ignore}
    fields = {f.name for f in dataclasses.fields(settings_class) if f.init} - set(exclude)
    unknown = sorted(set(values) - fields)
    if unknown:
        raise errors.ConfigError(
            f"config.{section}.{unknown[0]} is not a setting of {settings_class.__name__} "
            f"(config.{section} takes: {', '.join(sorted(fields))})"
        )
    return values


def _settings(settings_class, section: str, **kwargs):
    """settings_class(**kwargs); a value it rejects is a ConfigError naming the section."""
    try:
        return settings_class(**kwargs)
    except ValueError as error:
        raise errors.ConfigError(f"config.{section}: {error}") from error


def build_model(config, **overrides) -> LogoCap:
    """LogoCap(**config.model) with the local window of config.logo_ca, e.g.
    build_model(config, dtype=jnp.bfloat16)."""
    model = checked_section(
        config,
        "model",
        LogoCap,
        exclude=("parent", "name", "local_half_size", "remat", "remat_policy"),
    )
    window = dict(local_half_size=config.logo_ca.local_half_size)
    return LogoCap(**{**model, **window, **overrides})


def build_train_model(config) -> LogoCap:
    """The model training runs: `build_model` in config.train.compute_dtype, with the
    rematerialisation of config.train.remat and config.train.remat_policy.

    Raises:
      ConfigError: an unknown remat scope or policy.
    """
    scope = config.train.get("remat", "none")
    policy = config.train.get("remat_policy", "nothing_saveable")
    try:
        remat.check(scope, policy)
    except ValueError as error:
        raise errors.ConfigError(f"config.train: {error}") from error
    return build_model(config, dtype=train_dtype(config), remat=scope, remat_policy=policy)


def logo_ca_settings(config) -> LogoCaSettings:
    """LogoCaSettings(**config.logo_ca), shared by the test-time and training settings."""
    return _settings(
        LogoCaSettings, "logo_ca", **checked_section(config, "logo_ca", LogoCaSettings)
    )


def decode_settings(config, **overrides) -> DecodeSettings:
    """DecodeSettings(**config.decode) with config.logo_ca; `overrides` replace decode fields."""
    decode = checked_section(config, "decode", DecodeSettings, exclude=("logo_ca",))
    return _settings(
        DecodeSettings,
        "decode",
        **{**decode, **overrides},
        logo_ca=logo_ca_settings(config),
    )


def train_settings(config) -> TrainSettings:
    """The training path's settings: config.train's instance limits, config.decode's number of
    centers and config.logo_ca."""
    return _settings(
        TrainSettings,
        "train",
        num_centers=config.decode.num_centers,
        max_instances=config.train.max_instances,
        instance_budget=config.train.instance_budget,
        logo_ca=logo_ca_settings(config),
    )


def loss_weights(config) -> LossWeights:
    """LossWeights(**config.train.loss_weights)."""
    weights = config.train.loss_weights
    return _settings(LossWeights, "train.loss_weights", **weights.to_dict())


def augmentation(config) -> Augmentation:
    """Augmentation of the config.data fields of that name."""
    fields = {f.name for f in dataclasses.fields(Augmentation)}
    return _settings(Augmentation, "data", **{k: config.data[k] for k in fields})


DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def dtype_named(name: str):
    """The JAX dtype of a config's dtype name ('float32' or 'bfloat16')."""
    if name not in DTYPES:
        raise errors.ConfigError(
            f"Unknown compute dtype {name!r}; expected one of {sorted(DTYPES)}"
        )
    return DTYPES[name]


def inference_dtype(config):
    """The compute dtype of inference, config.test.compute_dtype."""
    return dtype_named(config.test.compute_dtype)


def train_dtype(config):
    """The compute dtype of training (config.train.compute_dtype)."""
    return dtype_named(config.train.compute_dtype)


def validate(config) -> None:
    """Checks the sections every entry point builds (model, logo_ca, decode) without building
    anything heavy, so that a bad key or value fails before weights or data are read.

    Raises:
      ConfigError: as `build_model` and `decode_settings`.
    """
    build_model(config)
    decode_settings(config)
    inference_dtype(config)


def default_config_path(name: str) -> str:
    """The file of the bundled config `name` (see `resources.configs_dir`)."""
    return config_path(name)


def check_key(config, key: str, config_name: str = "the config") -> None:
    """Raises ConfigError naming the known keys when the dotted `key` is not in `config`."""
    node, parts = config, key.split(".")
    for depth, part in enumerate(parts):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            section = ".".join(parts[:depth])
            known = (
                f"{section or 'the config'} has: {', '.join(sorted(node.keys()))}"
                if isinstance(node, ml_collections.ConfigDict)
                else f"{section} is a value, not a section"
            )
            raise errors.ConfigError(
                f"--config.{key}: {config_name} has no config key {key!r} ({known})"
            )
        node = node[part]


def override(config, overrides) -> ml_collections.ConfigDict:
    """A copy of `config` with `<key>=<value>` overrides applied as a command line's
    `--config.<key>=<value>` are (`ml_collections.config_flags`, typed by the field), locked.

    Raises:
      ConfigError: a key the config lacks, or a value that does not parse as the field's type.
    """
    argv = ["logocap"]
    for entry in overrides:
        key, equals, value = entry.partition("=")
        if not equals:
            raise errors.ConfigError(f"{entry!r} is not a <key>=<value> override")
        check_key(config, key)
        argv.append(f"--config.{key}={value}")
    flag_values = flags.FlagValues()
    try:
        config_flags.DEFINE_config_dict(
            "config", config.copy_and_resolve_references(), flag_values=flag_values, sys_argv=argv
        )
        flag_values(argv)
    except flags.Error as error:
        raise errors.ConfigError(str(error)) from error
    return flag_values.config
