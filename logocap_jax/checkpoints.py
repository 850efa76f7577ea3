"""Saving and restoring model variables as orbax checkpoints.

`restore_variables` accepts a converted or exported variables checkpoint, or a training work
directory (its best-by-AP model, else the latest training state); `restore_modules` reads some of
the model's top-level modules from one.
"""

import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util


def save_variables(directory: str, variables) -> None:
    """Writes `variables` ({'params', 'batch_stats'}) to `directory` (must not exist yet)."""
    path = os.path.abspath(directory)
    if os.path.exists(path):
        raise FileExistsError(f"Checkpoint directory already exists: {path}")
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
    """
    if not os.path.isdir(os.path.abspath(directory)):
        raise FileNotFoundError(f"Checkpoint directory not found: {os.path.abspath(directory)}")
    path = _model_directory(os.path.abspath(directory))
    # A training state also holds the step and optimiser state: keep the model's part.
    restored = ocp.StandardCheckpointer().restore(path)
    variables = {"params": restored["params"], "batch_stats": restored["batch_stats"]}
    if template is None:
        return variables
    expected = jax.tree_util.tree_structure(dict(template))
    if jax.tree_util.tree_structure(variables) != expected:
        raise ValueError(
            f"Checkpoint {path} does not fit the model: its variable tree differs (another config?)"
        )
    for have, want in zip(
        jax.tree_util.tree_leaves(variables), jax.tree_util.tree_leaves(dict(template))
    ):
        if tuple(have.shape) != tuple(want.shape):
            raise ValueError(
                f"Checkpoint {path} does not fit the model: an array of shape "
                f"{tuple(have.shape)} where the model has {tuple(want.shape)}"
            )
    return variables


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
      ValueError: a name of `exclude` is a module of neither the model nor the checkpoint, or a
        module to read is missing from the checkpoint or has another tree or shapes (named).
    """
    loaded = restore_variables(directory)
    known = {name for tree in (variables, loaded) for modules in tree.values() for name in modules}
    unknown = sorted(set(exclude) - known)
    if unknown:
        raise ValueError(
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
                raise ValueError(
                    f"Checkpoint {directory}: {collection}/{name} is missing or does not fit the "
                    "model (another config or CMP variant? exclude the module to keep it fresh)"
                )
            restored[collection][name] = have
    return restored
