"""Saving and restoring model variables as orbax checkpoints."""

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


def restore_variables(directory: str, template=None):
    """Reads variables written by `save_variables` (or a training checkpoint's model state).

    Args:
      directory: the checkpoint directory.
      template: optional variables or `jax.eval_shape` structs fixing tree, shapes and dtypes;
        a checkpoint that does not fit it raises an error naming the difference.
    """
    path = os.path.abspath(directory)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"Checkpoint directory not found: {path}")
    checkpointer = ocp.StandardCheckpointer()
    if template is None:
        return checkpointer.restore(path)
    abstract = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), template)
    return checkpointer.restore(path, abstract)
