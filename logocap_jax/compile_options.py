"""XLA compiler options of the package's jitted programs (docs/design.md §6).

On CPU, XLA 0.10 sends its convolutions and matrix products to YNNPACK one by one unless a list
of YNNPACK fusion types is given. With the list `dot`, matrix products (and the 1x1 convolutions
written as products) become YNNPACK fusions while the 3x3 convolutions run in XLA's own
convolution kernels, which were faster at every HRNet and CMP shape measured; the W32 inference
program at 512 x 512 with flip test ran 1.30 s -> 1.05 s (backbone) and 0.28 s -> 0.20 s (CMP).
Options are passed per program (`jax.jit(..., compiler_options=...)`), so nothing is set
process-wide and other JAX code is unaffected. Other backends get no options.
"""

import jax

CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"}

# A program that runs once, the parameter initialisation, costs its compile alone: one
# random-number kernel per parameter array, which LLVM optimises at length for nothing
# (docs/design.md §6).
CPU_RUN_ONCE_OPTIONS = {"xla_backend_optimization_level": 0}


def for_backend(backend: str | None = None, *, run_once: bool = False) -> dict | None:
    """The compiler options of `backend` (default: JAX's default backend), or None.

    run_once: options for a program that runs once, whose compile time is all its cost.
    """
    if (backend or jax.default_backend()) != "cpu":
        return None
    return dict(CPU_RUN_ONCE_OPTIONS if run_once else CPU_OPTIONS)


def jit(fn, backend: str | None = None, *, run_once: bool = False, **kwargs):
    """`jax.jit(fn, **kwargs)` with the options of `backend` (default: the default backend;
    name the platform when compiling ahead of time for another one); `run_once` as in
    `for_backend`."""
    return jax.jit(fn, compiler_options=for_backend(backend, run_once=run_once), **kwargs)
