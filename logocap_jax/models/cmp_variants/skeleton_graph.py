"""Message passing along the COCO skeleton.

Question: do KAMs improve when joints exchange information only along the limbs of the
skeleton, through a learned transform per limb and direction over a few rounds, rather than the
official CMP's 3x3 convolutions, which mix all K joints' features at once with no notion of the
body's structure?

At each window position every joint is a node with a `width`-dimensional state, a per-joint
projection of its C features. Each round, node j receives the mean over its skeleton neighbours
i of W_(i->j) h_i (one learned matrix per directed limb of `keypoints.SKELETON`) plus a shared
transform of its own state; a depthwise k x k convolution over the window (per joint and channel,
so joints still meet only along limbs) adds spatial context, then masked BatchNorm, ReLU and a
residual connection. A per-joint linear head gives the KAM.
"""

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from logocap_jax.keypoints import SKELETON
from logocap_jax.models.cmp_variants import depthwise_conv, joint_kernel_init, per_joint
from logocap_jax.models.layers import Dtype, batch_mask, batch_norm, relu


def directed_limbs(num_joints: int):
    """(sources [E], targets [E], incoming [E, K]): both directions of every limb, and the
    matrix averaging each joint's incoming messages (rows of a joint's limbs hold 1 / degree)."""
    limbs = [(a, b) for a, b in SKELETON if a < num_joints and b < num_joints]
    sources = np.array([a for a, b in limbs] + [b for a, b in limbs])
    targets = np.array([b for a, b in limbs] + [a for a, b in limbs])
    incoming = np.zeros((len(sources), num_joints), np.float32)
    incoming[np.arange(len(targets)), targets] = 1.0
    degree = incoming.sum(axis=0)
    return sources, targets, incoming / np.maximum(degree, 1.0)


class Model(nn.Module):
    """Skeleton graph message passing.

    Attributes:
      num_joints: K.
      width: state channels per joint.
      rounds: message-passing rounds.
      spatial_kernel: side of the depthwise convolution over the window in each round.
      dtype: compute dtype.
    """

    num_joints: int = 17
    width: int = 32
    rounds: int = 3
    spatial_kernel: int = 3
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, features, *, train: bool, mask=None):
        """[N, S, S, K*C] local KEM features -> [N, S, S, K] KAMs (see the module docstring)."""
        x = per_joint(features, self.num_joints).astype(self.dtype)
        num_joints, channels = x.shape[-2:]
        sources, _, incoming = directed_limbs(num_joints)
        project = self.param(
            "project", joint_kernel_init(), (num_joints, channels, self.width)
        ).astype(self.dtype)
        offset = self.param("project_bias", nn.initializers.zeros, (num_joints, self.width))
        h = jnp.einsum("...kc,kcd->...kd", x, project) + offset.astype(self.dtype)
        for index in range(self.rounds):
            limbs = self.param(
                f"limbs_{index}", joint_kernel_init(), (len(sources), self.width, self.width)
            ).astype(self.dtype)
            messages = jnp.einsum("...ed,edf->...ef", h[..., sources, :], limbs)
            z = jnp.einsum("...ef,ek->...kf", messages, incoming.astype(self.dtype))
            z = z + nn.Dense(self.width, use_bias=False, dtype=self.dtype, name=f"self_{index}")(h)
            z = z.reshape(*z.shape[:-2], num_joints * self.width)
            spatial = depthwise_conv(
                z.shape[-1], self.spatial_kernel, dtype=self.dtype, name=f"spatial_{index}"
            )
            z = spatial(z)
            norm = batch_norm(train=train, dtype=self.dtype, name=f"norm_{index}")
            z = norm(z, mask=batch_mask(mask, z))
            h = h + relu(z).reshape(h.shape)
        head = self.param("head", joint_kernel_init(), (num_joints, self.width, 1))
        bias = self.param("head_bias", nn.initializers.zeros, (num_joints,))
        return jnp.einsum("...kd,kd->...k", h, head[..., 0].astype(self.dtype)) + bias.astype(
            self.dtype
        )
