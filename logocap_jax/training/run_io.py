"""What a training run writes and reacts to: checkpoints, metrics, stop signals, NaN losses.

Everything here is safe with several processes: checkpoints are saved and restored by all
processes together (orbax), metrics.jsonl is written by process 0, and a stop signal that
reaches any one process stops every process after the same step (`StopSignals`).
"""

import contextlib
import itertools
import json
import os
import signal
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from logocap_jax import errors
from logocap_jax.weights import checkpoints


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


class ImageIdLog:
    """Appends the image ids this process fed at each step to
    <workdir>/image_ids/process_<index>.jsonl (when enabled): which images each process read."""

    def __init__(self, workdir: str, enabled: bool):
        self.path = None
        if enabled:
            folder = os.path.join(workdir, "image_ids")
            os.makedirs(folder, exist_ok=True)
            self.path = os.path.join(folder, f"process_{jax.process_index()}.jsonl")

    def write(self, step: int, image_ids):
        if self.path is None:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": int(step), "image_ids": [int(i) for i in image_ids]}))
            f.write("\n")


class StepMetrics:
    """The train step's metrics, kept on the device until they are needed.

    `add` takes each step's metrics (device arrays) without waiting for the step; `fetch`
    copies every pending step to the host in one `jax.device_get` and checks that the losses
    are finite; `mean` averages the fetched steps since the last `mean`. The loop fetches at
    log, checkpoint and evaluation steps only, so other steps never wait for the device.
    """

    def __init__(self, workdir: str):
        self.workdir = workdir
        self._pending = []  # (step, device metrics)
        self._fetched = []  # host metrics since the last mean()

    def add(self, step: int, metrics: dict):
        self._pending.append((step, metrics))

    def fetch(self, last_saved: int | None):
        """Copies the pending steps' metrics to the host.

        Raises:
          FloatingPointError: a loss term was NaN or infinite: the message gives the steps
            checked, the first bad step, its terms and the last good checkpoint.
        """
        if not self._pending:
            return
        steps = [step for step, _ in self._pending]
        values = jax.device_get([metrics for _, metrics in self._pending])
        self._pending = []
        for step, metrics in zip(steps, values):
            bad = {k: float(v) for k, v in metrics.items() if not np.all(np.isfinite(v))}
            if bad:
                raise FloatingPointError(
                    f"Non-finite training metrics in steps {steps[0]}-{steps[-1]} (fetched "
                    f"together), first at step {step}: {bad}; "
                    + _last_good(self.workdir, last_saved)
                    + ". Lower the learning rate or check the data, then resume."
                )
        self._fetched += values

    def mean(self) -> dict:
        """The mean of each metric over the fetched steps since the last call."""
        rows, self._fetched = self._fetched, []
        return {key: float(np.mean([row[key] for row in rows])) for key in rows[0]}


class Throughput:
    """Step time, examples per second and the share of the time spent waiting for the input,
    over the steps since the previous `summary`.

    Wall time of this process, so it covers the device work too: the loop waits for the device
    at every row. Time inside `excluded` (compiling, evaluating) is left out.
    """

    def __init__(self, global_batch_size: int):
        self.global_batch_size = global_batch_size
        self._restart(time.perf_counter())

    def _restart(self, now: float):
        self._start, self._waiting, self._excluded, self._steps = now, 0.0, 0.0, 0

    @contextlib.contextmanager
    def _adding_to(self, total: str):
        """Adds the time in the block to the attribute `total`."""
        start = time.perf_counter()
        try:
            yield
        finally:
            setattr(self, total, getattr(self, total) + time.perf_counter() - start)

    def waiting_for_input(self):
        """Counts the time in the block as waiting for the input."""
        return self._adding_to("_waiting")

    def excluded(self):
        """Leaves the time in the block out of the figures."""
        return self._adding_to("_excluded")

    def step_done(self):
        self._steps += 1

    def summary(self) -> dict:
        """{'step_time' (s), 'examples_per_second', 'input_wait_share'} over the steps since the
        previous call (at least one)."""
        now = time.perf_counter()
        seconds = now - self._start - self._excluded
        values = {
            "step_time": seconds / self._steps,
            "examples_per_second": self.global_batch_size * self._steps / seconds,
            "input_wait_share": self._waiting / seconds,
        }
        self._restart(now)
        return values


def _last_good(workdir: str, last_saved: int | None) -> str:
    if last_saved is None:
        return "no checkpoint was written yet"
    folder = os.path.join(workdir, checkpoints.LATEST_DIR)
    return f"the last good checkpoint is step {last_saved} in {folder}"


class StopSignals:
    """SIGTERM (and the first SIGINT) ask for a checkpoint and a stop after a step that every
    process agrees on.

    With several processes (`jax.distributed` initialised) the agreement is JAX's preemption
    sync protocol, the one behind orbax's `reached_preemption`: the process that gets SIGTERM
    tells the coordination service, every process reports its step, and all of them stop at
    the step after the furthest one. JAX's own SIGTERM handler feeds it, so SIGTERM is left
    alone here; SIGINT is forwarded to it as a SIGTERM. Without jax.distributed there is one
    process and a Python SIGTERM handler sets the flag.

    The first SIGINT is taken over once: the previous SIGINT handler is back in place at
    once, so a second Ctrl-C interrupts as usual. Every handler changed here is restored when
    the `with` block ends.
    """

    def __init__(self):
        self._requested = False
        self._previous = {}
        self._synced = jax.distributed.is_initialized()

    def __enter__(self) -> "StopSignals":
        if self._synced and not jax.config.jax_enable_preemption_service:
            raise RuntimeError(
                "jax.distributed is initialised without its preemption service, so the "
                "processes could not agree on a step to stop at; keep the "
                "jax_enable_preemption_service option on (the default)"
            )
        if not self._synced:
            self._install(signal.SIGTERM, self._on_sigterm)
        self._install(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc_info):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _install(self, signum, handler):
        self._previous[signum] = signal.getsignal(signum)
        signal.signal(signum, handler)

    def _on_sigterm(self, signum, frame):
        del signum, frame
        self._requested = True

    def _on_sigint(self, signum, frame):
        del frame
        signal.signal(signum, self._previous.pop(signum))
        if self._synced:
            os.kill(os.getpid(), signal.SIGTERM)
        else:
            self._requested = True

    def reached(self, count: int) -> bool:
        """Whether to checkpoint and stop after the `count`-th step this process ran.

        Call it after every step with count = 1, 2, 3, ...: the sync protocol compares the
        processes' counts, which all start at 1 (a resumed run starts counting anew), so a
        signal that comes before the first step stops every process after it.
        """
        if self._synced:
            return multihost_utils.reached_preemption_sync_point(count)
        return self._requested


# How long a process waits at a barrier for the others (compilation, evaluation, data sets).
BARRIER_TIMEOUT_MS = 4 * 3600 * 1000
_barriers = itertools.count()


def wait_for_all_processes(name: str):
    """Returns once every process got here (a coordination-service barrier, no device work).

    Put before a collective that processes may reach far apart: CPU collectives (gloo) fail
    when a process waits more than 30 s for another at one. Every process must make the same
    sequence of calls.
    """
    barrier = ocp.multihost.get_barrier_sync_fn()
    barrier(key=f"logocap_jax_{name}_{next(_barriers)}", timeout_ms=BARRIER_TIMEOUT_MS)


def compile_together(jitted, *args):
    """`jitted` compiled for `args`, returned once every process has compiled it.

    Processes compile at different speeds (one may find the program in the persistent
    compilation cache); without the barrier the first collective of the program would keep
    the fast ones waiting.
    """
    compiled = jitted.lower(*args).compile()
    wait_for_all_processes("compiled")
    return compiled


def save_checkpoint(manager, step: int, state, next_example: int, global_batch_size: int):
    """Saves the train state and the input position (asynchronously, by all processes)."""
    position = {
        "next_example": int(next_example),
        "global_batch_size": int(global_batch_size),
        "process_count": jax.process_count(),
    }
    manager.save(
        step,
        args=ocp.args.Composite(
            **{
                checkpoints.STATE_ITEM: ocp.args.StandardSave(state),
                checkpoints.DATA_ITEM: ocp.args.JsonSave(position),
            }
        ),
    )


def restore_checkpoint(manager, target, global_batch_size: int):
    """Restores the latest step into the shapes and shardings of `target` (a train state or
    its `jax.ShapeDtypeStruct`s).

    The train state is resharded onto this run's mesh, so the run may have another process or
    device count than the one that saved it; the input resumes at the same global batch.

    Returns:
      (state, next_example): the restored state and the stream position of the next example.

    Raises:
      ConfigError: the checkpoint was written with another global batch size (the step count,
        the learning-rate schedule and the data position would no longer agree).
    """
    step = manager.latest_step()
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            **{
                checkpoints.STATE_ITEM: ocp.args.StandardRestore(abstract),
                checkpoints.DATA_ITEM: ocp.args.JsonRestore(),
            }
        ),
    )
    position = restored[checkpoints.DATA_ITEM]
    if position["global_batch_size"] != global_batch_size:
        raise errors.ConfigError(
            f"the checkpoint of step {step} in {manager.directory} was written with "
            f"train.global_batch_size={position['global_batch_size']}, this run has "
            f"{global_batch_size}: resuming would change what a step is (schedule, data "
            "position); keep the batch size or start a new work directory"
        )
    print(
        f"Resumed from step {step} (saved by {position['process_count']} processes, "
        f"this run has {jax.process_count()})"
    )
    return restored[checkpoints.STATE_ITEM], position["next_example"]
