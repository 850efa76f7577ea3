"""What the command lines share: absl flags, the config flag, one-line user errors, exit statuses.

Every command of this package parses its command line with `parse` (absl flags on a fresh
`FlagValues`, and for a config `ml_collections.config_flags`) and runs through `run_main`, which
turns a user error (`logocap_jax.errors`, or a command line that does not parse) into one line
on stderr,

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

Config: `--config` names a bundled config (w32, w48, tiny, mini) or a config file, and any
number of `--config.<key>=<value>` after it change its fields, parsed by
`ml_collections.config_flags` with the type of the field they replace (`--noconfig.<key>` sets a
boolean to false). A key the config does not have is a user error naming the known keys of its
section.
"""

import os
import re
import sys
import traceback
from collections.abc import Callable, Sequence

import jax
from absl import flags
from ml_collections import config_flags

from logocap_jax import config_utils, errors

EXIT_OK = 0
EXIT_INTERNAL_ERROR = 1
EXIT_USER_ERROR = 2
EXIT_SKIPPED = 3
EXIT_INTERRUPTED = 130

VERBOSE_FLAG = "--verbose"
HELP_FLAGS = ("-h", "--help", "--helpfull")
_OVERRIDE = re.compile(r"^--?(?:no)?config\.([^=]+)")


def _program(argv0: str | None = None) -> str:
    return os.path.basename(argv0 or sys.argv[0] or "logocap")


def run_main(main: Callable[[list], int | None], argv: Sequence[str] | None = None):
    """Runs a command's `main` and exits with its status (see the module docstring).

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
        if VERBOSE_FLAG in argv:
            traceback.print_exception(error)
        print(f"{program}: error: {errors.describe(error)}", file=sys.stderr)
        sys.stderr.flush()
        sys.exit(EXIT_USER_ERROR)
    sys.exit(EXIT_OK if status is None else status)


def parse(
    argv: Sequence[str] | None,
    define_flags: Callable[[flags.FlagValues], None],
    *,
    doc: str,
    config: bool = False,
    default_config: str | None = None,
    positional: bool = False,
) -> tuple[flags.FlagValues, list[str]]:
    """Parses a command line into a fresh set of absl flags.

    Args:
      argv: the arguments without the program name; default sys.argv[1:].
      define_flags: defines the command's flags on the `FlagValues` it is given.
      doc: what `--help` prints above the flags.
      config: whether the command takes `--config` (with its overrides) and
        `--compilation_cache`.
      default_config: the config when no `--config` is given; without one, `--config` is
        required.
      positional: whether the command takes arguments other than flags.

    Returns:
      (the flags, the positional arguments). With `config`, `flags.config` is the loaded
      ConfigDict with its overrides applied, checked and locked.

    Raises:
      UsageError: the command line does not parse (unknown flag, bad value, missing flag).
      ConfigError, InputNotFoundError: the config cannot be loaded, or an override names a key
        it lacks or a value its field rejects.
      SystemExit: --help was given (status 0, after printing the help).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    flag_values = flags.FlagValues()
    flags.DEFINE_bool("verbose", False, "Show the traceback of an error.", flag_values=flag_values)
    if config:
        if default_config is not None and not _given(argv, "--config"):
            argv = ["--config", default_config, *argv]
        _define_config(flag_values, argv)
        flags.DEFINE_string(
            "compilation_cache",
            None,
            "Keep compiled XLA programs in this directory (JAX's persistent compilation "
            "cache), so later runs with the same model, input sizes and JAX version skip "
            "compiling.",
            flag_values=flag_values,
        )
    define_flags(flag_values)
    if any(arg in HELP_FLAGS for arg in _options(argv)):
        print(doc.strip())
        print("\nflags:")
        print(flag_values.get_help(prefix="  ", include_special_flags=False))
        sys.exit(EXIT_OK)
    if config and not _given(argv, "--config"):
        other = " (or --pretrained)" if "pretrained" in flag_values else ""
        raise errors.UsageError(
            f"--config{other} is required: --config takes a bundled config name or a file"
        )
    try:
        arguments = flag_values(["logocap", *argv])[1:]
        flag_values.validate_all_flags()
    except flags.Error as error:
        # A config that cannot be loaded keeps its own message and class.
        if isinstance(error.__context__, errors.UserError):
            raise error.__context__ from None
        raise errors.UsageError(f"{error} (see --help)") from None
    if arguments and not positional:
        raise errors.UsageError(f"unexpected arguments: {' '.join(arguments)} (see --help)")
    if config:
        config_utils.validate(flag_values.config)
        if flag_values.compilation_cache:
            use_compilation_cache(flag_values.compilation_cache)
    return flag_values, arguments


def definer(flag_values: flags.FlagValues) -> Callable:
    """`define(flags.DEFINE_<kind>, name, default, help, **kwargs)` on `flag_values`, for the
    commands' `define_flags` (flags live on a fresh FlagValues per parse, not absl's global
    one, so a command can be parsed many times in one process)."""

    def define(kind, name, default, help_string, **kwargs):
        return kind(name, default, help=help_string, flag_values=flag_values, **kwargs)

    return define


def _options(argv: Sequence[str]) -> list[str]:
    """The arguments before a `--` separator (the ones that may be flags)."""
    return list(argv[: argv.index("--")] if "--" in argv else argv)


def _given(argv: Sequence[str], flag: str) -> bool:
    return any(arg == flag or arg.startswith(f"{flag}=") for arg in _options(argv))


def flag_value(argv: Sequence[str], flag: str) -> str | None:
    """The value of the last `<flag> VALUE` / `<flag>=VALUE` in a command line, before it is
    parsed (for the defaults that depend on another flag, such as --pretrained's config)."""
    value, options = None, _options(argv)
    for index, arg in enumerate(options):
        if arg == flag and index + 1 < len(options):
            value = options[index + 1]
        elif arg.startswith(f"{flag}="):
            value = arg.split("=", 1)[1]
    return value


class _ConfigParser(flags.ArgumentParser):
    """Loads `--config` with `config_utils.load_config` (bundled names and files) and checks
    that every override of the command line names one of its keys."""

    def __init__(self, argv: Sequence[str]):
        self._keys = [m.group(1) for m in map(_OVERRIDE.match, _options(argv)) if m]

    def parse(self, argument):
        config = config_utils.load_config(argument)
        for key in self._keys:
            config_utils.check_key(config, key, argument)
        config.lock()
        return config

    def flag_type(self):
        return "config"


def _define_config(flag_values: flags.FlagValues, argv: Sequence[str]) -> None:
    config_flags.DEFINE_config_file(
        "config",
        None,
        "A bundled config (w32, w48, tiny, mini) or a config file, e.g. configs/w32.py; "
        "change any of its fields with --config.<key>=<value> after it, e.g. "
        "--config.logo_ca.reweigh=false.",
        flag_values=flag_values,
        sys_argv=["logocap", *argv],
    )
    flag_values["config"].parser = _ConfigParser(argv)


def use_compilation_cache(directory: str) -> None:
    """Turns on JAX's persistent compilation cache in `directory`, for every program however
    short its compilation (JAX's default keeps only programs compiling for over a second)."""
    jax.config.update("jax_compilation_cache_dir", os.path.abspath(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
