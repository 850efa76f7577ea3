"""What a training run writes and reacts to: checkpoints, metrics, stop signals, NaN losses."""

import json
import os
import signal
import time

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp


def check_finite(metrics: dict, step: int, workdir: str, last_saved: int | None):
    """Raises FloatingPointError naming the step and terms when a loss is NaN or infinite."""
    bad = {k: v for k, v in metrics.items() if not np.all(np.isfinite(v))}
    if bad:
        where = (
            f"the last good checkpoint is step {last_saved} in {workdir}/checkpoints"
            if last_saved is not None
            else "no checkpoint was written yet"
        )
        raise FloatingPointError(
            f"Non-finite training metrics at step {step}: {bad}; {where}. "
            "Lower the learning rate or check the data, then resume."
        )


class MetricsWriter:
    """Appends one JSON object per line to <workdir>/metrics.jsonl (process 0 only)."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.enabled = jax.process_index() == 0

    def write(self, step: int, split: str, values: dict):
        if not self.enabled:
            return
        row = {"step": int(step), "split": split, "time": time.time()}
        row.update({k: float(v) for k, v in values.items()})
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


class PreemptionFlag:
    """Set by SIGTERM/SIGINT so the loop can checkpoint and stop at the next step."""

    def __init__(self):
        self.raised = False
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        del signum, frame
        self.raised = True


def checkpoint_managers(workdir: str, config):
    """(latest, best): keep-N periodic checkpoints with the data iterator, and the best by AP."""
    latest = ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), "checkpoints"),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=config.train.keep_checkpoints, enable_async_checkpointing=True
        ),
    )
    best = ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), "best"),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=1, best_fn=lambda m: m["AP"], best_mode="max"
        ),
    )
    return latest, best


def save_checkpoint(manager, step: int, state, iterator):
    """Saves the train state and the data iterator's position (asynchronously)."""
    manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(iterator)
        ),
    )


def restore_checkpoint(manager, state, iterator):
    """Restores the latest step into `state`'s shapes and shardings; rewinds `iterator`."""
    step = manager.latest_step()
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, state)
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract),
            data=grain.checkpoint.CheckpointRestore(iterator),
        ),
    )
    print(f"Resumed from step {step}")
    return restored["state"]
