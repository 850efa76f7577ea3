"""What the command lines share: exit statuses, one-line user errors, config overrides.

Every command of this package (train, eval, predict, convert, pretrained, build_data, ablate) runs
its `main` through `run_main` (argparse) or `run_absl` (absl), which turn a user error
(`logocap_jax.errors`) into one line on stderr,

  <program>: error: <what is wrong, naming the file, key or value, and what was expected>

and exit status 2; `--verbose` prints the traceback above that line. Any other exception is a
bug or an environment failure and keeps Python's traceback (exit status 1).

Exit statuses:
  0  done.
  1  internal error (traceback).
  2  user error, or a command line that does not parse (one line).
  3  done, but some inputs were skipped; they are named on stderr and listed in the outputs
     (predict: failures.json, eval: stats.json's skipped_images).
  130  interrupted (Ctrl-C).

Config overrides: a command line that takes `--config FILE` also takes any number of
`--config.<key>=<value>` (`--config.logo_ca.reweigh=false`, `--config.decode.scales=0.5,1`); the
value is parsed by `ml_collections.config_flags` as for `train.py`, with the type of the field it
replaces; `--noconfig.<key>` sets a boolean to false. A key the config does not have is a user
error naming the known keys of its section.
"""

import argparse
import os
import re
import sys
import traceback
from collections.abc import Callable, Sequence

import jax
import ml_collections
from absl import flags
from ml_collections import config_flags

from logocap_jax import config_utils, errors

EXIT_OK = 0
EXIT_INTERNAL_ERROR = 1
EXIT_USER_ERROR = 2
EXIT_SKIPPED = 3
EXIT_INTERRUPTED = 130

VERBOSE_FLAG = "--verbose"
_OVERRIDE = re.compile(r"^--?(no)?config\.([^=]+)(=.*)?$", re.DOTALL)


def _program(argv0: str | None = None) -> str:
    return os.path.basename(argv0 or sys.argv[0] or "logocap")


def _report_user_error(program: str, error: BaseException, verbose: bool) -> None:
    """Prints the one-line message (and the traceback first, when verbose)."""
    if verbose:
        traceback.print_exception(error)
    print(f"{program}: error: {errors.describe(error)}", file=sys.stderr)
    sys.stderr.flush()


def run_main(main: Callable[[list], int | None], argv: Sequence[str] | None = None):
    """Runs an argparse command line and exits with its status (see the module docstring).

    Args:
      main: takes the arguments (without the program name) and returns an exit status
        (None is 0).
      argv: the arguments; default sys.argv[1:].

    Raises:
      SystemExit: always, with the exit status.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    program = _program()
    try:
        status = main(argv)
    except KeyboardInterrupt:
        print(f"{program}: interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except Exception as error:
        if not errors.is_user_error(error):
            raise
        _report_user_error(program, error, VERBOSE_FLAG in argv)
        sys.exit(EXIT_USER_ERROR)
    sys.exit(EXIT_OK if status is None else status)


def run_absl(main: Callable[[list, ml_collections.ConfigDict], int | None], flag_values=None):
    """Runs an absl command line whose `--config` flag is a config file path (train.py).

    The config is loaded and its overrides applied as for the argparse command lines
    (`parse_args`); a flag, override or user error is one line with exit status 2.

    Args:
      main: takes the remaining arguments (program name first) and the config.
      flag_values: the absl flags; default absl.flags.FLAGS. They must define `config` (a
        string) and `verbose` (a bool).
    """
    from absl import app

    flag_values = flags.FLAGS if flag_values is None else flag_values
    parsed = {}

    def parse(argv):
        program, verbose = _program(argv[0]), VERBOSE_FLAG in argv
        try:
            config, rest = config_from_argv(argv[1:])
            remaining = flag_values([argv[0], *rest])
        except flags.Error as error:
            _report_user_error(program, errors.UsageError(str(error)), verbose)
            sys.exit(EXIT_USER_ERROR)
        except Exception as error:
            if not errors.is_user_error(error):
                raise
            _report_user_error(program, error, verbose)
            sys.exit(EXIT_USER_ERROR)
        parsed["config"] = config
        return remaining

    def run(argv):
        # absl has consumed --verbose by now: pass its value on.
        verbose = "verbose" in flag_values and flag_values["verbose"].value
        run_main(lambda _: main(argv, parsed["config"]), [VERBOSE_FLAG] if verbose else [])

    app.run(run, flags_parser=parse)


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line with exit status 2; abbreviations are off, so
    `--config` is only ever the config file."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(
            EXIT_USER_ERROR, f"{self.prog}: error: {' '.join(message.split())} (see --help)\n"
        )


def add_config_arguments(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    """Adds --config (a bundled config's name or a file; overrides in the help), --verbose and
    --compilation_cache.

    Args:
      parser: the command line's parser.
      required: whether --config must be given; if not, `parse_args` takes a default config.
    """
    parser.add_argument(
        "--config",
        required=required,
        metavar="CONFIG",
        help="a bundled config (w32, w48, tiny, mini) or a config file, e.g. configs/w32.py; "
        "change any of its fields with --config.<key>=<value>, e.g. "
        "--config.logo_ca.reweigh=false",
    )
    parser.add_argument(VERBOSE_FLAG, action="store_true", help="show the traceback of an error")
    parser.add_argument(
        "--compilation_cache",
        metavar="DIR",
        help="keep compiled XLA programs in DIR (JAX's persistent compilation cache), so that "
        "later runs with the same model, input sizes and JAX version skip compiling",
    )


def parse_args(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None = None,
    *,
    default_config: str | None = None,
):
    """`parser.parse_args` with the config loaded and its `--config.<key>=<value>` overrides.

    Args:
      parser: the command line's parser (with `add_config_arguments`).
      argv: the arguments; default sys.argv[1:].
      default_config: the config (name or file) when no --config is given.

    Returns:
      The namespace; `config` is the loaded ConfigDict (overrides applied, locked), or None
      without --config and default; `config_file` its name or path.

    Raises:
      ConfigError: the config file cannot be loaded, an override names a key the config lacks,
        or its value does not parse as the field's type.
      InputNotFoundError: the config file does not exist.
      SystemExit: the rest of the command line does not parse (one line, status 2).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    config, rest = config_from_argv(argv, default_config)
    args = parser.parse_args(rest)
    args.config_file, args.config = args.config or default_config, config
    if getattr(args, "compilation_cache", None):
        use_compilation_cache(args.compilation_cache)
    return args


def use_compilation_cache(directory: str) -> None:
    """Turns on JAX's persistent compilation cache in `directory`, for every program however
    short its compilation (JAX's default keeps only programs compiling for over a second)."""
    jax.config.update("jax_compilation_cache_dir", os.path.abspath(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def config_from_argv(argv: Sequence[str], default_config: str | None = None):
    """(config with overrides, the other arguments) from a command line's arguments.

    The config is `default_config`'s when no `--config` is given, or None without a default
    (the parser then reports it missing).

    Raises:
      InputNotFoundError, ConfigError: see `parse_args`; also a config whose model, logo_ca or
        decode section has an unknown key or a value the settings reject.
      UsageError: an override without --config.
    """
    path = option_value(argv, "--config") or default_config
    if path is None:
        overrides = [arg for arg in _options(argv) if _OVERRIDE.match(arg)]
        if overrides:
            raise errors.UsageError(f"{overrides[0]} overrides a config, but no --config is given")
        return None, list(argv)
    config = config_utils.load_config(path)
    overrides, rest = split_overrides(argv, config, path)
    config = apply_overrides(config, overrides)
    config_utils.validate(config)
    return config, rest


def _options(argv):
    """The arguments before a `--` separator (the ones that may be options)."""
    return argv[: argv.index("--")] if "--" in argv else argv


def option_value(argv: Sequence[str], option: str) -> str | None:
    """The value of the last `<option> VALUE` / `<option>=VALUE` before any `--`, or None."""
    value, options = None, _options(argv)
    for index, arg in enumerate(options):
        if arg == option and index + 1 < len(options):
            value = options[index + 1]
        elif arg.startswith(f"{option}="):
            value = arg.split("=", 1)[1]
    return value


def split_overrides(argv: Sequence[str], config, config_file: str = "the config"):
    """Separates the overrides from the other arguments.

    Args:
      argv: the arguments.
      config: the config they override; a key it lacks is an error.
      config_file: named in errors.

    Returns:
      (overrides as `--config.<key>=<value>` strings, the other arguments in order). A value
      may follow its key as the next argument, except for booleans (`--config.<key>` alone sets
      true, `--noconfig.<key>` false).

    Raises:
      ConfigError: an override names a key the config lacks, or lacks its value.
    """
    argv = list(argv)
    end = argv.index("--") if "--" in argv else len(argv)
    overrides, rest, index = [], [], 0
    while index < end:
        arg = argv[index]
        match = _OVERRIDE.match(arg)
        index += 1
        if match is None:
            rest.append(arg)
            continue
        negated, key, value = match.groups()
        field = _config_field(config, key, config_file)
        boolean = isinstance(field, bool)
        if negated:
            if value is not None or not boolean:
                raise errors.ConfigError(
                    f"{arg}: --noconfig.<key> sets a boolean to false, and {key} is "
                    f"{type(field).__name__} ({field!r})"
                )
            value = "=false"
        elif value is None and boolean:
            value = "=true"
        elif value is None:
            if index >= end:
                raise errors.ConfigError(f"{arg} needs a value: --config.{key}=<value>")
            value, index = "=" + argv[index], index + 1
        overrides.append(f"--config.{key}{value}")
    return overrides, rest + argv[end:]


def _config_field(config, key: str, config_file: str):
    """The value of a dotted config key; a key the config lacks is a ConfigError."""
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
                f"--config.{key}: {config_file} has no config key {key!r} ({known})"
            )
        node = node[part]
    return node


def apply_overrides(config, overrides: Sequence[str]) -> ml_collections.ConfigDict:
    """`config` with `--config.<key>=<value>` overrides applied as train.py applies them
    (`ml_collections.config_flags`), locked.

    Raises:
      ConfigError: a key the config lacks, or a value that does not parse as the field's type.
    """
    flag_values = flags.FlagValues()
    argv = ["logocap", *overrides]
    try:
        config_flags.DEFINE_config_dict(
            "config", config, flag_values=flag_values, lock_config=True, sys_argv=argv
        )
        flag_values(argv)
    except flags.Error as error:
        raise errors.ConfigError(str(error)) from error
    return flag_values.config
