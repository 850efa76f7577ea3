"""What the benchmarks print about the machine, and the official timings they compare with.

Speed claims in this project are ratios against the official PyTorch implementation timed in
the same run on the same machine (docs/benchmarks.md); these helpers name the CPU and read the
official harness's JSON lines.
"""

import json
import os
import platform

import jax

# CPU features that decide the speed of convolutions and matrix products.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16")


def cpu_features() -> set:
    """The flags of /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe() -> str:
    """One line: CPU model, cores, vector and matrix ISA; JAX version and devices."""
    flags = cpu_features()
    isa = ", ".join(f for f in ISA_FLAGS if f in flags) or "none of " + ", ".join(ISA_FLAGS)
    devices = jax.devices()
    return (
        f"CPU: {cpu_model()} ({os.cpu_count()} cores; {isa}); JAX {jax.__version__} on "
        f"{len(devices)} x {devices[0].device_kind}"
    )


def read_official(path: str, **match) -> list:
    """The official harness's JSON records in `path` whose fields equal `match`; other lines
    (pycocotools prints its progress to the same stdout) are skipped."""
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            row = json.loads(line)
            if all(row.get(key) == value for key, value in match.items()):
                rows.append(row)
    return rows
