"""User errors: bad input that the user can fix, told apart from bugs.

The command lines (`logocap_jax.commands.cli.run_main`) print a user error as one line and exit with
status 2; every other exception is a bug or a failure of the environment and keeps its traceback.

A user error is either

* an exception of the classes below, raised where input enters the package: a file or folder that
  is missing, a file whose content is not what it should be, a config file, key or value that does
  not exist or does not fit, a checkpoint that does not fit the config's model, an unknown data
  set name, a command line that does not parse, a feature asked for whose optional package is
  not installed; or
* an `OSError` that names a file (its `filename` is set: permission denied, is a directory, no
  space left), raised by the operating system while the inputs are read or the outputs written.

Plain `ValueError`, `KeyError`, `TypeError` ... are never user errors: code that checks input
raises one of the classes below. Each class also derives from the builtin exception such input
raised before (`FileNotFoundError`, `ValueError`, ...), so existing `except` clauses still work.
"""


class UserError(Exception):
    """Bad input that the user can fix; the message names the file, key or value and what was
    expected."""


class InputNotFoundError(UserError, FileNotFoundError):
    """A file or folder that the user named, or that an input file lists, does not exist."""


class InputFormatError(UserError, ValueError):
    """A file exists but its content is not what it should be: not JSON, not COCO format, not a
    decodable image, not a state dict, or it lists nothing to work on."""


class ConfigError(UserError, ValueError):
    """A config file that cannot be loaded, or a config key or value (in the file, from a
    `--config.<key>=<value>` override or a command-line flag) that does not exist or fit."""


class CheckpointMismatchError(UserError, ValueError):
    """A checkpoint or state dict whose variables do not fit the model of the config."""


class CheckpointKeysError(CheckpointMismatchError, KeyError):
    """A state dict with missing or unexpected keys (also a KeyError, as before)."""

    def __str__(self) -> str:
        # KeyError quotes its message; this one is a sentence.
        return str(self.args[0]) if self.args else ""


class UnknownDatasetError(UserError, ValueError):
    """A data set name that is neither known nor built."""


class UsageError(UserError, ValueError):
    """A command line or call whose arguments do not fit together."""


class OutputExistsError(UserError, FileExistsError):
    """An output that would overwrite existing data."""


class MissingDependencyError(UserError, ImportError):
    """An optional package that an asked-for feature needs is not installed (the message names
    the package extra to install)."""


def is_user_error(error: BaseException) -> bool:
    """Tells whether `error` is a user error (see the module docstring)."""
    if isinstance(error, UserError):
        return True
    return isinstance(error, OSError) and error.filename is not None


def describe(error: BaseException) -> str:
    """The error's message on one line; an OSError as '<file>: <reason>'."""
    if not isinstance(error, UserError) and isinstance(error, OSError) and error.strerror:
        names = [error.filename] + ([error.filename2] if error.filename2 else [])
        text = f"{' -> '.join(str(name) for name in names)}: {error.strerror}"
    else:
        text = str(error) or type(error).__name__
    return " ".join(text.split())
