"""Saving and restoring model variables as orbax checkpoints.

`restore_variables` accepts a converted or exported variables checkpoint, or a training work
directory (its best-by-AP model, else the latest training state); `restore_modules` reads some of
the model's top-level modules from one.
"""

import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import traverse_util

from logocap_jax import errors


def save_variables(directory: str, variables) -> None:
    """Writes `variables` ({'params', 'batch_stats'}) to `directory` (must not exist yet)."""
    path = os.path.abspath(directory)
    if os.path.exists(path):
        raise errors.OutputExistsError(f"Checkpoint directory already exists: {path}")
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(path, jax.tree_util.tree_map(np.asarray, variables))
    checkpointer.wait_until_finished()


def _latest_step(directory: str):
    steps = (
        [int(name) for name in os.listdir(directory) if name.isdigit()]
        if os.path.isdir(directory)
        else []
    )
    return max(steps) if steps else None


def _model_directory(path: str) -> str:
    """The checkpoint holding the model: a training work directory's best, else latest, step."""
    best = os.path.join(path, "best")
    if _latest_step(best) is not None:
        return os.path.join(best, str(_latest_step(best)), "default")
    latest = os.path.join(path, "checkpoints")
    if _latest_step(latest) is not None:
        return os.path.join(latest, str(_latest_step(latest)), "state")
    return path


def restore_variables(directory: str, template=None):
    """Reads model variables ({'params', 'batch_stats'}).

    Args:
      directory: a checkpoint written by `save_variables` (e.g. by `logocap_jax.convert`), or a
        training work directory: its best/ model if there is one, else the latest state in
        checkpoints/.
      template: optional variables or `jax.eval_shape` structs fixing tree, shapes and dtypes;
        a checkpoint that does not fit it raises an error naming the difference.

    Raises:
      InputNotFoundError: `directory` does not exist.
      InputFormatError: `directory` holds no readable checkpoint.
      CheckpointMismatchError: the checkpoint does not fit `template` (names the variable).
    """
    path = _checked_model_directory(directory)
    # A training state also holds the step and optimiser state: keep the model's part.
    try:
        restored = ocp.StandardCheckpointer().restore(path)
    except (FileNotFoundError, ValueError) as error:
        raise errors.InputFormatError(f"{path} is not a readable checkpoint ({error})") from error
    variables = _model_part(restored, path)
    if template is not None:
        _check_fits(path, variables, template)
    return variables


def check_fits(directory: str, template, *, missing_ok: bool = False) -> None:
    """Checks, from the metadata only, that the model variables `restore_variables` would read
    from `directory` fit `template` (see there).

    Args:
      directory: as for `restore_variables`.
      template: as for `restore_variables`.
      missing_ok: a training work directory without checkpoints (or not created yet) passes.

    Raises:
      InputNotFoundError, InputFormatError, CheckpointMismatchError: as `restore_variables`.
    """
    if missing_ok and _model_directory(os.path.abspath(directory)) == os.path.abspath(directory):
        return
    path = _checked_model_directory(directory)
    try:
        metadata = ocp.StandardCheckpointHandler().metadata(epath.Path(path))
    except (FileNotFoundError, ValueError) as error:
        raise errors.InputFormatError(f"{path} is not a readable checkpoint ({error})") from error
    _check_fits(path, _model_part(metadata, path), template)


def _checked_model_directory(directory: str) -> str:
    if not os.path.isdir(os.path.abspath(directory)):
        raise errors.InputNotFoundError(
            f"Checkpoint directory not found: {os.path.abspath(directory)}"
        )
    return _model_directory(os.path.abspath(directory))


def _model_part(tree, path: str) -> dict:
    if not all(key in tree for key in ("params", "batch_stats")):
        raise errors.InputFormatError(
            f"{path} is not a model checkpoint: it holds {sorted(tree)}, not params and batch_stats"
        )
    return {"params": tree["params"], "batch_stats": tree["batch_stats"]}


def _check_fits(path: str, variables, template) -> None:
    """Raises CheckpointMismatchError naming the first variable `variables` lacks, has in
    excess or holds in another shape than `template`."""
    have = traverse_util.flatten_dict(dict(variables), sep="/")
    want = traverse_util.flatten_dict(dict(template), sep="/")
    problem = None
    missing, unexpected = sorted(want.keys() - have.keys()), sorted(have.keys() - want.keys())
    if missing or unexpected:
        problem = (
            f"its variable tree differs: {len(missing)} missing (e.g. {missing[:1]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:1]})"
        )
    else:
        for key, value in want.items():
            if tuple(have[key].shape) != tuple(value.shape):
                problem = (
                    f"variable {key} has shape {tuple(have[key].shape)} where the model has "
                    f"{tuple(value.shape)}"
                )
                break
    if problem is not None:
        raise errors.CheckpointMismatchError(
            f"Checkpoint {path} does not fit the model of the config: {problem} "
            "(a checkpoint of another config?)"
        )


def _shapes(tree) -> dict:
    return {path: np.shape(x) for path, x in traverse_util.flatten_dict(dict(tree)).items()}


def restore_modules(directory: str, variables, *, exclude=()):
    """`variables` with every top-level module but those of `exclude` read from a checkpoint.

    E.g. a trained backbone and heads under a freshly initialised CMP variant:
    restore_modules(path, variables, exclude=("joints_mlp",)).

    Args:
      directory: as for `restore_variables`.
      variables: the model's variables ({'params', 'batch_stats'} of arrays).
      exclude: top-level module names whose values stay those of `variables`.

    Raises:
      ConfigError: a name of `exclude` is a module of neither the model nor the checkpoint.
      CheckpointMismatchError: a module to read is missing from the checkpoint or has another
        tree or shapes (named).
    """
    loaded = restore_variables(directory)
    known = {name for tree in (variables, loaded) for modules in tree.values() for name in modules}
    unknown = sorted(set(exclude) - known)
    if unknown:
        raise errors.ConfigError(
            f"Modules to exclude {unknown} are in neither the model nor the checkpoint: "
            f"{sorted(known)}"
        )
    restored = {}
    for collection, modules in variables.items():
        restored[collection] = {}
        for name, tree in modules.items():
            if name in exclude:
                restored[collection][name] = tree
                continue
            have = loaded.get(collection, {}).get(name)
            if have is None or _shapes(have) != _shapes(tree):
                raise errors.CheckpointMismatchError(
                    f"Checkpoint {directory}: {collection}/{name} is missing or does not fit the "
                    "model (another config or CMP variant? exclude the module to keep it fresh)"
                )
            restored[collection][name] = have
    return restored
