"""Small CMP variant cases shared by the variant tests and tests/cmp_step_main.py.

Every built-in variant is a case (with its defaults unless listed here), so a variant file added
to logocap_jax/models/cmp_variants is tested without editing this file. Widths are tiny: the
tests check behaviour, not quality.
"""

import textwrap

import jax
import numpy as np

from logocap_jax.models import cmp_variants

NUM_JOINTS = 17
CHANNELS = 2  # C: features are [N, S, S, K*C]
SIDE = 5  # S
COUNT = 6  # N
# Instances counting towards batch statistics in training.
MASK = np.array([True, False, True, True, False, True])

SMALL_OPTIONS = {
    "conv": dict(widths=(8, 8, 8), num_affine=4),
    "skeleton_graph": dict(width=8, rounds=2),
    "joint_attention": dict(width=8, num_heads=2, window_attention=True),
    "separable": dict(widths=(34, 17)),
}
# Further cases: other settings of a variant that change its structure.
EXTRA_CASES = {
    "fixed_kernel-gaussian": ("fixed_kernel", dict(learned=False)),
    "separable-joint_groups": ("separable", dict(widths=(34, 17), joint_groups=True)),
}


def cases() -> dict:
    """{case id: (variant name, options)}."""
    out = {name: (name, SMALL_OPTIONS.get(name, {})) for name in cmp_variants.names()}
    out.update(EXTRA_CASES)
    return out


def features(seed: int, count: int = COUNT, side: int = SIDE):
    """[count, S, S, K*C] random local KEM features."""
    shape = (count, side, side, NUM_JOINTS * CHANNELS)
    return jax.random.normal(jax.random.key(seed), shape)


# A variant written as one file outside the package, loaded by its module path.
WINDOW_MLP = textwrap.dedent(
    '''
    """A window MLP: every window cell and joint from all of the window's features."""

    import flax.linen as nn
    import jax.numpy as jnp


    class Model(nn.Module):
        num_joints: int = 17
        hidden: int = 16
        dtype: type = jnp.float32

        @nn.compact
        def __call__(self, features, *, train, mask=None):
            count, side = features.shape[:2]
            x = features.reshape(count, -1).astype(self.dtype)
            x = nn.relu(nn.Dense(self.hidden, dtype=self.dtype)(x))
            x = nn.Dense(side * side * self.num_joints, dtype=self.dtype)(x)
            return x.reshape(count, side, side, self.num_joints)
    '''
)
