"""Saving and restoring model variables as orbax checkpoints.

`restore_variables` accepts a converted or exported variables checkpoint, or a training work
directory (its best-by-AP model, else the latest training state).
"""

import os

import jax
import numpy as np
import orbax.checkpoint as ocp


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
