"""Rematerialisation (`jax.checkpoint`) of the network's blocks, to trade compute for memory.

A rematerialised block keeps only what its policy saves of its activations for the backward
pass and recomputes the rest there. The training step then holds the blocks' inputs instead of
every intermediate map, at the cost of running the blocks' forward pass twice. Parameters and
results are unchanged; only where the memory peak sits moves.

Scopes (`LogoCap.remat`): 'none'; 'stages', every HRNet stage module (the layer1 bottlenecks
and each HighResolutionModule); 'stages_and_heads', also the three head transitions. Policies
are the names of `jax.checkpoint_policies` that take no arguments, e.g. 'nothing_saveable'
(recompute everything) or 'dots_saveable' (keep matrix products).
"""

import flax.linen as nn
import jax

SCOPES = ("none", "stages", "stages_and_heads")
POLICIES = (
    "nothing_saveable",
    "everything_saveable",
    "dots_saveable",
    "dots_with_no_batch_dims_saveable",
)


def check(scope: str, policy: str) -> None:
    """Raises ValueError for a scope not in SCOPES or a policy not in POLICIES."""
    if scope not in SCOPES:
        raise ValueError(f"Unknown remat scope {scope!r}; one of {', '.join(SCOPES)}")
    if policy not in POLICIES:
        raise ValueError(f"Unknown remat policy {policy!r}; one of {', '.join(POLICIES)}")


def policies(scope: str, policy: str) -> tuple[str | None, str | None]:
    """(policy of the HRNet stages, policy of the head transitions); None: not rematerialised."""
    check(scope, policy)
    stages = policy if scope != "none" else None
    heads = policy if scope == "stages_and_heads" else None
    return stages, heads


def wrap(module_class, policy: str | None):
    """`module_class`, or its `nn.remat` under `policy` when one is given.

    The rematerialised class takes `train` as its second positional argument (static), so call
    sites pass it positionally: Module(...)(x, train).
    """
    if policy is None:
        return module_class
    return nn.remat(
        module_class, policy=getattr(jax.checkpoint_policies, policy), static_argnums=(2,)
    )
