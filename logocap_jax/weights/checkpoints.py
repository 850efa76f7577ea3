"""Model variables and training checkpoints on disk (orbax).

A training work directory holds two orbax `CheckpointManager`s, named here and nowhere else:
`LATEST_DIR` (the train state and the input position, every checkpoint_every_steps, keep-N)
and `BEST_DIR` (the model variables of the best evaluation AP). Their inside (step folders, item
folders, commit markers) is orbax's and is reached only through its `CheckpointManager` API.

`restore_variables` accepts a converted or exported variables checkpoint, or a training work
directory (its best-by-AP model, else the latest training state); `restore_modules` reads some of
the model's top-level modules from one.
"""

import logging
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from logocap_jax import errors

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


def _this_process_only() -> ocp.options.MultiprocessingOptions:
    """Orbax options for reading in this process alone (no barrier with the others), so that
    any process may read a checkpoint at any time, also in a multi-process job."""
    return ocp.options.MultiprocessingOptions(
        primary_host=jax.process_index(), active_processes={jax.process_index()}
    )


def _reader(directory: str, item_handlers, **options) -> ocp.CheckpointManager:
    """A manager of this process that reads pytree items with their metadata and writes
    nothing (orbax's read_only option would log a warning on every command line)."""
    return ocp.CheckpointManager(
        directory,
        item_handlers=item_handlers,
        options=ocp.CheckpointManagerOptions(
            create=False,
            save_root_metadata=False,
            multiprocessing_options=_this_process_only(),
            **options,
        ),
    )


def save_variables(directory: str, variables) -> None:
    """Writes `variables` ({'params', 'batch_stats'}) to `directory` (must not exist yet)."""
    path = os.path.abspath(directory)
    if os.path.exists(path):
        raise errors.OutputExistsError(f"Checkpoint directory already exists: {path}")
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
      InputNotFoundError: the work directory has no such complete checkpoint.
    """
    manager = _reader(
        os.path.join(os.path.abspath(workdir), LATEST_DIR),
        {STATE_ITEM: ocp.PyTreeCheckpointHandler(), DATA_ITEM: ocp.JsonCheckpointHandler()},
    )
    step = manager.latest_step() if step is None else step
    if step not in manager.all_steps():
        raise errors.InputNotFoundError(
            f"{workdir} has no complete training checkpoint of step {step}"
        )
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


class _ModelCheckpoint(NamedTuple):
    """Where `restore_variables` reads a model: the tree metadata of the item holding it, a
    function reading that item with PyTreeRestore args, a description naming it, and a warning
    to give when it is read (or "")."""

    metadata: Any
    restore: Callable
    description: str
    warning: str = ""


def _workdir_model(path: str) -> _ModelCheckpoint | None:
    """A work directory's best model, else its latest training state; None when `path` holds
    neither manager's complete checkpoints."""
    best_dir = os.path.join(path, BEST_DIR)
    best = _reader(best_dir, ocp.PyTreeCheckpointHandler(), best_fn=_ap, best_mode="max")
    # A best model saved without metrics (by hand) counts too.
    step = best.best_step() or best.latest_step()
    if step is not None:
        return _ModelCheckpoint(
            best.item_metadata(step),
            lambda args: best.restore(step, args=args),
            f"{best_dir} (best model, step {step})",
        )
    latest_dir = os.path.join(path, LATEST_DIR)
    latest = _reader(latest_dir, {STATE_ITEM: ocp.PyTreeCheckpointHandler()})
    step = latest.latest_step()
    if step is None:
        return None

    def restore(args):
        return latest.restore(step, args=ocp.args.Composite(**{STATE_ITEM: args}))[STATE_ITEM]

    return _ModelCheckpoint(
        latest.item_metadata(step)[STATE_ITEM],
        restore,
        f"{latest_dir} (latest training state, step {step})",
        f"{path} has no best model (no evaluation yet): using its latest training state, "
        f"step {step}",
    )


def _variables_checkpoint(path: str) -> _ModelCheckpoint:
    """A checkpoint written by `save_variables`."""
    checkpointer = ocp.Checkpointer(
        ocp.PyTreeCheckpointHandler(), multiprocessing_options=_this_process_only()
    )
    try:
        metadata = checkpointer.metadata(path).item_metadata
    except (FileNotFoundError, ValueError) as error:
        metadata, reason = None, f" ({error})"
    else:
        reason = ""
    if metadata is None:
        raise errors.InputFormatError(
            f"{path} is neither a variables checkpoint (the convert command, "
            "checkpoints.save_variables) nor a training work directory with a complete "
            f"checkpoint in {BEST_DIR}/ or {LATEST_DIR}/{reason}"
        )
    return _ModelCheckpoint(metadata, lambda args: checkpointer.restore(path, args=args), path)


def _model_checkpoint(directory: str) -> _ModelCheckpoint:
    path = os.path.abspath(directory)
    if not os.path.isdir(path):
        raise errors.InputNotFoundError(f"Checkpoint directory not found: {path}")
    return _workdir_model(path) or _variables_checkpoint(path)


def _model_part(tree, path: str) -> dict:
    missing = [name for name in MODEL_COLLECTIONS if name not in tree]
    if missing:
        raise errors.InputFormatError(
            f"{path} is not a model checkpoint: it holds {sorted(tree)}, not "
            f"{' and '.join(MODEL_COLLECTIONS)}"
        )
    return {name: tree[name] for name in MODEL_COLLECTIONS}


def restore_variables(directory: str, template=None):
    """Reads model variables ({'params', 'batch_stats'}) as numpy arrays.

    Args:
      directory: a checkpoint written by `save_variables` (e.g. by the convert command), or a
        training work directory: its best model if an evaluation has run, else (with a
        warning) the latest training state.
      template: optional variables or `jax.eval_shape` structs fixing tree, shapes and dtypes;
        a checkpoint that does not fit it raises an error naming the difference.

    Raises:
      InputNotFoundError: `directory` does not exist.
      InputFormatError: `directory` is neither kind of checkpoint, or a work directory without
        a complete checkpoint.
      CheckpointMismatchError: the checkpoint does not fit `template` (names the variable).
    """
    found = _model_checkpoint(directory)
    item = _model_part(found.metadata, found.description)
    if template is not None:
        _check_fits(found.description, item, template)
    if found.warning:
        _LOG.warning(found.warning)
    # A training state also holds the step and the optimiser state: read the model's part.
    args = ocp.args.PyTreeRestore(item, restore_args=_as_numpy(item), partial_restore=True)
    return _model_part(found.restore(args), found.description)


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
    path = os.path.abspath(directory)
    if missing_ok and (not os.path.isdir(path) or _workdir_model(path) is None):
        return
    found = _model_checkpoint(directory)
    _check_fits(found.description, _model_part(found.metadata, found.description), template)


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
