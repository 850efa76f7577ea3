"""A light CMP for the CPU and latency budget: depthwise-separable convolutions, optionally
grouped per joint.

Question: how much of the official CMP's quality survives, and how much of the local KAMs' time
is saved, when each dense 3x3 convolution (the first alone, 1088 -> 512 channels in W32, holds
about three quarters of the official CMP's multiply-adds) becomes a depthwise 3x3 plus a
pointwise 1x1 convolution? With
`joint_groups`, the pointwise convolutions and the head are grouped per joint, so each joint's
KAM is computed from its own features only: is exchanging features between joints needed at
all?

Each layer: depthwise k x k, pointwise 1x1 to the layer's width, masked BatchNorm, ReLU; a 1x1
head gives the K KAMs.
"""

import flax.linen as nn
import jax.numpy as jnp

from logocap_jax.models.cmp_variants import depthwise_conv
from logocap_jax.models.layers import Dtype, batch_mask, batch_norm, relu


class Model(nn.Module):
    """Depthwise-separable CMP.

    Attributes:
      num_joints: K.
      widths: output channels of the separable layers (multiples of K with joint_groups).
      kernel_size: side of the depthwise convolutions.
      joint_groups: group the pointwise convolutions and the head per joint.
      dtype: compute dtype.
    """

    num_joints: int = 17
    widths: tuple = (136, 68)
    kernel_size: int = 3
    joint_groups: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, features, *, train: bool, mask=None):
        """[N, S, S, K*C] local KEM features -> [N, S, S, K] KAMs (see the module docstring)."""
        groups = self.num_joints if self.joint_groups else 1
        if any(width % groups for width in self.widths):
            raise ValueError(f"joint_groups needs widths divisible by K, got {self.widths}")
        x = features
        for index, width in enumerate(self.widths):
            depthwise = depthwise_conv(
                x.shape[-1], self.kernel_size, dtype=self.dtype, name=f"depthwise_{index}"
            )
            x = depthwise(x)
            x = nn.Conv(
                width,
                (1, 1),
                feature_group_count=groups,
                use_bias=False,
                dtype=self.dtype,
                name=f"pointwise_{index}",
            )(x)
            norm = batch_norm(train=train, dtype=self.dtype, name=f"norm_{index}")
            x = relu(norm(x, mask=batch_mask(mask, x)))
        return nn.Conv(
            self.num_joints, (1, 1), feature_group_count=groups, dtype=self.dtype, name="head"
        )(x)
