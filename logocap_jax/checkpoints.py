"""Model variables and training checkpoints on disk (orbax).

A training work directory holds two orbax `CheckpointManager`s, named here and nowhere else:
`LATEST_DIR` (the train state and the input position, every checkpoint_every_steps, keep-N)
and `BEST_DIR` (the model variables of the best evaluation AP). Their inside (step folders, item
folders, commit markers) is orbax's and is reached only through its `CheckpointManager` API.

`restore_variables` accepts a converted or exported variables checkpoint, or a training work
directory (its best-by-AP model, else the latest training state).
"""

import logging
import os

import jax
import numpy as np
import orbax.checkpoint as ocp

LATEST_DIR = "checkpoints"
BEST_DIR = "best"
# Items of a LATEST_DIR checkpoint: the TrainState and the input position (JSON).
STATE_ITEM = "state"
DATA_ITEM = "data"
MODEL_COLLECTIONS = ("params", "batch_stats")

_LOG = logging.getLogger(__name__)


def _ap(metrics: dict) -> float:
    return metrics["AP"]


def latest_manager(workdir: str, *, max_to_keep: int | None = None) -> ocp.CheckpointManager:
    """The keep-N manager of a work directory's training checkpoints (asynchronous saves)."""
    return ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), LATEST_DIR),
        item_names=(STATE_ITEM, DATA_ITEM),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, enable_async_checkpointing=True
        ),
    )


def best_manager(workdir: str) -> ocp.CheckpointManager:
    """The manager of a work directory's best model by evaluation AP (one kept)."""
    return ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), BEST_DIR),
        options=ocp.CheckpointManagerOptions(max_to_keep=1, best_fn=_ap, best_mode="max"),
    )


def _reader(directory: str, item_handlers, **options) -> ocp.CheckpointManager:
    """A read-only manager that reads pytree items with their metadata."""
    return ocp.CheckpointManager(
        directory,
        item_handlers=item_handlers,
        options=ocp.CheckpointManagerOptions(read_only=True, create=False, **options),
    )


def save_variables(directory: str, variables) -> None:
    """Writes `variables` ({'params', 'batch_stats'}) to `directory` (must not exist yet)."""
    path = os.path.abspath(directory)
    if os.path.exists(path):
        raise FileExistsError(f"Checkpoint directory already exists: {path}")
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(path, jax.tree_util.tree_map(np.asarray, variables))
    checkpointer.wait_until_finished()


def _as_numpy(item):
    return jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)


def training_steps(workdir: str) -> list:
    """The complete (committed) training checkpoint steps of a work directory, ascending."""
    return sorted(_reader(os.path.join(workdir, LATEST_DIR), {}).all_steps())


def read_training_checkpoint(workdir: str, step: int | None = None) -> tuple[dict, dict]:
    """A training checkpoint as saved, for inspection (default: the latest step).

    Returns:
      (state, data): the train state's tree as numpy arrays (step, params, batch_stats,
      opt_state) and the input position ({'next_example', 'global_batch_size',
      'process_count'}).

    Raises:
      ValueError: the work directory has no such complete checkpoint.
    """
    manager = _reader(
        os.path.join(os.path.abspath(workdir), LATEST_DIR),
        {STATE_ITEM: ocp.PyTreeCheckpointHandler(), DATA_ITEM: ocp.JsonCheckpointHandler()},
    )
    step = manager.latest_step() if step is None else step
    if step not in manager.all_steps():
        raise ValueError(f"{workdir} has no complete training checkpoint of step {step}")
    metadata = manager.item_metadata(step)[STATE_ITEM]
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            **{
                STATE_ITEM: ocp.args.PyTreeRestore(metadata, restore_args=_as_numpy(metadata)),
                DATA_ITEM: ocp.args.JsonRestore(),
            }
        ),
    )
    return restored[STATE_ITEM], restored[DATA_ITEM]


def _model_restore_args(metadata):
    """PyTreeRestore of the model collections of a checkpoint's tree, as numpy arrays."""
    missing = [name for name in MODEL_COLLECTIONS if name not in metadata]
    if missing:
        raise ValueError(f"the checkpoint holds no {' or '.join(missing)}: not a LOGO-CAP model")
    item = {name: metadata[name] for name in MODEL_COLLECTIONS}
    # A training state also holds the step and the optimiser state: read the model's part.
    return ocp.args.PyTreeRestore(item, restore_args=_as_numpy(item), partial_restore=True)


def _restore_from_workdir(path: str):
    """(variables, description) from a work directory's best model, else its latest state;
    None when `path` holds neither manager's checkpoints."""
    best = _reader(
        os.path.join(path, BEST_DIR), ocp.PyTreeCheckpointHandler(), best_fn=_ap, best_mode="max"
    )
    step = best.best_step()
    if step is not None:
        args = _model_restore_args(best.item_metadata(step))
        return best.restore(step, args=args), f"{path} (best model, step {step})"
    latest = _reader(os.path.join(path, LATEST_DIR), {STATE_ITEM: ocp.PyTreeCheckpointHandler()})
    step = latest.latest_step()
    if step is None:
        return None
    _LOG.warning(
        "%s has no best model (no evaluation yet): using its latest training state, step %d",
        path,
        step,
    )
    args = _model_restore_args(latest.item_metadata(step)[STATE_ITEM])
    restored = latest.restore(step, args=ocp.args.Composite(**{STATE_ITEM: args}))
    return restored[STATE_ITEM], f"{path} (latest training state, step {step})"


def restore_variables(directory: str, template=None):
    """Reads model variables ({'params', 'batch_stats'}) as numpy arrays.

    Args:
      directory: a checkpoint written by `save_variables` (e.g. by `logocap_jax.convert`), or a
        training work directory: its best model if an evaluation has run, else (with a
        warning) the latest training state.
      template: optional variables or `jax.eval_shape` structs fixing tree, shapes and dtypes;
        a checkpoint that does not fit it raises an error naming the difference.

    Raises:
      FileNotFoundError: `directory` does not exist.
      ValueError: `directory` is neither kind of checkpoint, a work directory without a
        complete checkpoint, or does not fit `template`.
    """
    path = os.path.abspath(directory)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"Checkpoint directory not found: {path}")
    found = _restore_from_workdir(path)
    if found is not None:
        variables, path = found
    else:
        checkpointer = ocp.PyTreeCheckpointer()
        metadata = checkpointer.metadata(path).item_metadata
        if metadata is None:
            raise ValueError(
                f"{path} is neither a variables checkpoint (logocap_jax.convert, "
                f"checkpoints.save_variables) nor a training work directory with a complete "
                f"checkpoint in {BEST_DIR}/ or {LATEST_DIR}/"
            )
        variables = checkpointer.restore(path, args=_model_restore_args(metadata))
    variables = {name: variables[name] for name in MODEL_COLLECTIONS}
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
