"""Memory, FLOPs and roofline time per chip of the training step and the inference program of a
config on a TPU slice, compiled on this host (`programs`), with a cache of the results.

A plan is a plain dict (JSON in the cache):
  program, topology, chip, chips, per_chip_batch, hbm_bytes, fits, compile_seconds, and when it
  compiled: argument_bytes, temp_bytes, output_bytes, alias_bytes, total_bytes (arguments +
  temporaries + outputs - aliased), flops, bytes_accessed, roofline_seconds (the
  larger of compute_seconds, the FLOPs at the chip's peak rate, and hbm_seconds, XLA's bytes
  accessed at its HBM bandwidth),
  examples_per_second, op_counts, custom_call_targets, peak_buffers; when XLA found it does
  not fit: error.
"""

import hashlib
import json
import os
import tempfile
import time

import jax

from logocap_jax.planning import chips as chips_lib
from logocap_jax.planning import hlo_report, programs

PROGRAMS = ("train", "inference")
DEFAULT_CACHE = os.path.join("~", ".cache", "logocap_jax", "tpu_plans.json")
# Phrases of XLA's TPU compile errors for programs larger than the chip's memory.
_OUT_OF_MEMORY = ("RESOURCE_EXHAUSTED", "Ran out of memory", "exceeds the memory")


def _libtpu_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("libtpu")
    except metadata.PackageNotFoundError:
        return "unknown"


def plan_key(config, topology: str, per_chip_batch: int, program: str, effort: float = 0.0) -> str:
    """The cache key: the TPU form of the config, the slice, the batch, the program, the
    optimisation effort and the compiler versions."""
    described = {
        "config": programs.for_tpu(config).to_dict(),
        "topology": topology,
        "per_chip_batch": per_chip_batch,
        "program": program,
        "effort": effort,
        "jax": jax.__version__,
        "libtpu": _libtpu_version(),
    }
    text = json.dumps(described, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class Cache:
    """Plans in one JSON file, keyed by `plan_key`; None: no cache."""

    def __init__(self, path: str | None):
        self.path = os.path.expanduser(path) if path else None
        self.entries = {}
        if self.path and os.path.exists(self.path):
            with open(self.path) as f:
                self.entries = json.load(f)

    def get(self, key: str):
        return self.entries.get(key)

    def put(self, key: str, plan: dict) -> None:
        self.entries[key] = plan
        if not self.path:
            return
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        temporary = f"{self.path}.tmp"
        with open(temporary, "w") as f:
            json.dump(self.entries, f, indent=1, sort_keys=True)
        os.replace(temporary, self.path)


def _lowered(config, program: str, per_chip_batch: int, devices):
    if program == "train":
        return programs.train_step_lowered(config, per_chip_batch, devices)
    if program == "inference":
        return programs.inference_lowered(config, per_chip_batch, devices)
    raise ValueError(f"unknown program {program!r}; one of {', '.join(PROGRAMS)}")


def compile_plan(
    config,
    topology: str,
    per_chip_batch: int,
    program: str = "train",
    *,
    buffers: int = 10,
    dump_dir: str | None = None,
    effort: float = 0.0,
) -> dict:
    """Compiles `program` of `config` for `topology` with `per_chip_batch` images per chip and
    measures it (see the module docstring); uses no cache. XLA's dumps (the optimised program,
    its buffer assignment) go to `dump_dir`, or to a temporary directory removed afterwards;
    the buffer assignment is written well before the compile ends.

    `effort` is XLA's `exec_time_optimization_effort`, from -1 to 1: 0 (XLA's default) plans
    the program a run would use; -1 compiles the TPU program much faster but
    optimises it less, so its memory and bytes are those of a less optimised program (what the
    tests use to check that a program compiles).

    Raises:
      MissingDependencyError: libtpu is not installed.
      ConfigError: an unknown topology or chip.
    """
    chip = chips_lib.chip_of(topology)
    devices = programs.topology_devices(topology, chip.chip_config)
    plan = {
        "program": program,
        "topology": topology,
        "chip": chip.name,
        "chips": len(devices),
        "per_chip_batch": per_chip_batch,
        "hbm_bytes": chip.hbm_bytes,
        "effort": effort,
    }
    start = time.perf_counter()
    lowered = _lowered(config, program, per_chip_batch, devices)
    with tempfile.TemporaryDirectory(prefix="logocap_plan_") as temporary:
        dump_dir = dump_dir or temporary
        try:
            options = {
                **hlo_report.dump_options(dump_dir),
                "exec_time_optimization_effort": effort,
            }
            compiled = lowered.compile(compiler_options=options)
        except Exception as error:  # XLA raises a generic runtime error.
            message = str(error)
            if not any(phrase in message for phrase in _OUT_OF_MEMORY):
                raise
            plan.update(
                fits=False,
                compile_seconds=time.perf_counter() - start,
                error=message.strip().splitlines()[0],
            )
            return plan
        plan["compile_seconds"] = time.perf_counter() - start
        text = compiled.as_text()
        plan["op_counts"] = hlo_report.op_counts(text)
        plan["custom_call_targets"] = hlo_report.custom_call_targets(text)
        plan["peak_buffers"] = hlo_report.peak_buffers(dump_dir, text, buffers)
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    total = (
        memory.argument_size_in_bytes
        + memory.temp_size_in_bytes
        + memory.output_size_in_bytes
        - memory.alias_size_in_bytes
    )
    flops, bytes_accessed = float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))
    seconds = max(chip.compute_seconds(flops), chip.hbm_seconds(bytes_accessed))
    plan.update(
        fits=total <= chip.hbm_bytes,
        argument_bytes=memory.argument_size_in_bytes,
        temp_bytes=memory.temp_size_in_bytes,
        output_bytes=memory.output_size_in_bytes,
        alias_bytes=memory.alias_size_in_bytes,
        total_bytes=total,
        flops=flops,
        bytes_accessed=bytes_accessed,
        roofline_seconds=seconds,
        compute_seconds=chip.compute_seconds(flops),
        hbm_seconds=chip.hbm_seconds(bytes_accessed),
        examples_per_second=per_chip_batch * len(devices) / seconds if seconds else None,
    )
    return plan


def plan(
    config,
    topology: str,
    per_chip_batch: int,
    program: str = "train",
    *,
    cache: Cache | None = None,
    buffers: int = 10,
    dump_dir: str | None = None,
    effort: float = 0.0,
) -> dict:
    """`compile_plan`, or its cached result; adds 'cached' (whether it came from the cache)."""
    cache = cache or Cache(None)
    key = plan_key(config, topology, per_chip_batch, program, effort)
    found = cache.get(key)
    if found is not None:
        return dict(found, cached=True)
    result = compile_plan(
        config,
        topology,
        per_chip_batch,
        program,
        buffers=buffers,
        dump_dir=dump_dir,
        effort=effort,
    )
    cache.put(key, result)
    return dict(result, cached=False)


def max_batch(config, topology: str, program: str = "train", *, start: int, cache=None, **kw):
    """The largest per-chip batch whose program fits the chip's memory, and the plans tried.

    Each next try is the batch at which the line through the nearest tried batches meets the
    chip's memory, kept strictly between the largest batch that fits and the smallest that
    does not. The line is only a guess: near the limit XLA recomputes values to fit, and the
    memory grows more slowly than the batch.
    """
    tried = {}

    def attempt(batch):
        tried[batch] = plan(config, topology, batch, program, cache=cache, **kw)
        return tried[batch]

    low, high = (start, None) if attempt(start)["fits"] else (0, start)
    while high is None or high - low > 1:
        guess = _linear_guess(tried, tried[start]["hbm_bytes"])
        upper = max(guess, low + 1) if high is None else high - 1
        candidate = min(max(guess, low + 1), upper)
        if attempt(candidate)["fits"]:
            low = candidate
        else:
            high = candidate
    return low, tried


def _linear_guess(tried: dict, hbm_bytes: int) -> int:
    """The batch at which memory reaches `hbm_bytes` on the line through the two measured
    batches nearest to it (through the origin's argument bytes with one)."""
    measured = sorted((b, p["total_bytes"]) for b, p in tried.items() if "total_bytes" in p)
    if not measured:
        smallest_failure = min(tried)
        return max(1, smallest_failure // 2)
    if len(measured) == 1:
        batch, total = measured[0]
        fixed = tried[batch]["argument_bytes"]
        per_example = max(1.0, (total - fixed) / batch)
        return int((hbm_bytes - fixed) // per_example)
    measured.sort(key=lambda item: abs(item[1] - hbm_bytes))
    (b0, m0), (b1, m1) = measured[:2]
    slope = (m1 - m0) / (b1 - b0) if b1 != b0 else 0
    if slope <= 0:
        return max(b0, b1) + 1
    return int(b0 + (hbm_bytes - m0) // slope)
