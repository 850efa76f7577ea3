"""A fixed-kernel baseline: one KAM per joint, the same for every instance.

Question: what does adapting the KAMs to each instance bring? The kernels ignore the local KEM
features, so LOGO-CA becomes the same per-joint filter of the reweighed global heatmaps for every
person; comparing with a learned variant isolates what instance-adaptive KAMs add. The kernels
are learned (one S x S map per joint, initialised as a Gaussian), or with `learned=False` stay
the Gaussian: no parameters, no learning at all.
"""

import flax.linen as nn
import jax.numpy as jnp

from logocap_jax.models.layers import Dtype


def gaussian_kernels(side: int, num_joints: int, sigma: float):
    """[S, S, K] Gaussians of peak 1 at the window center, sigma in window cells."""
    offsets = jnp.arange(side, dtype=jnp.float32) - side // 2
    squared = offsets[:, None] ** 2 + offsets[None, :] ** 2
    kernel = jnp.exp(-squared / (2 * sigma * sigma))
    return jnp.broadcast_to(kernel[:, :, None], (side, side, num_joints))


class Model(nn.Module):
    """Instance-independent KAMs.

    Attributes:
      num_joints: K.
      sigma: standard deviation of the (initial) Gaussian kernels, in window cells.
      learned: learn the kernels from the Gaussian, or keep the Gaussian.
      dtype: compute dtype.
    """

    num_joints: int = 17
    sigma: float = 2.0
    learned: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, features, *, train: bool, mask=None):
        """[N, S, S, K*C] features (only their shape is used) -> [N, S, S, K] KAMs."""
        del train, mask  # no batch statistics
        count, side = features.shape[:2]
        gaussian = gaussian_kernels(side, self.num_joints, self.sigma)
        # Learned kernels start as the Gaussian; its shape is the parameter's shape.
        kernels = self.param("kernels", lambda _: gaussian) if self.learned else gaussian
        return jnp.broadcast_to(kernels.astype(self.dtype), (count,) + kernels.shape)
