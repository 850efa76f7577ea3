"""Attention across the joints of an instance: a small transformer over the K joint tokens.

Question: do KAMs improve when every joint weighs every other joint's features with weights
computed from the features themselves, instead of the official CMP's fixed convolution weights
or a fixed skeleton graph?

At each window position the K joints are tokens: a per-joint projection of their C features plus
a learned joint embedding. `num_layers` pre-norm blocks apply multi-head self-attention across
the K tokens and an MLP. With `window_attention`, each block also attends across the S x S
positions of each joint (axial attention, with a learned position embedding): the window's
spatial context, which the official CMP gets from its 3x3 convolutions. LayerNorm keeps
instances independent: no batch statistics.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from logocap_jax.models.cmp_variants import joint_kernel_init, per_joint
from logocap_jax.models.layers import Dtype


class Block(nn.Module):
    """Pre-norm multi-head self-attention across axis -2 of [..., L, D] tokens, then an MLP."""

    num_heads: int
    mlp_ratio: int
    dtype: Dtype

    @nn.compact
    def __call__(self, tokens):
        *lead, length, width = tokens.shape
        if width % self.num_heads:
            raise ValueError(f"num_heads {self.num_heads} does not divide width {width}")
        normed = nn.LayerNorm(dtype=self.dtype, name="norm_attention")(tokens)
        qkv = nn.Dense(3 * width, dtype=self.dtype, name="qkv")(normed)
        qkv = qkv.reshape(*lead, length, 3, self.num_heads, width // self.num_heads)
        query, key, value = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]
        logits = jnp.einsum("...qhd,...khd->...hqk", query, key) / jnp.sqrt(query.shape[-1])
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
        attended = jnp.einsum("...hqk,...khd->...qhd", weights, value).reshape(tokens.shape)
        tokens = tokens + nn.Dense(width, dtype=self.dtype, name="out")(attended)
        hidden = nn.Dense(self.mlp_ratio * width, dtype=self.dtype, name="mlp_in")(
            nn.LayerNorm(dtype=self.dtype, name="norm_mlp")(tokens)
        )
        return tokens + nn.Dense(width, dtype=self.dtype, name="mlp_out")(nn.gelu(hidden))


class Model(nn.Module):
    """A transformer over joint tokens (and optionally window positions).

    Attributes:
      num_joints: K.
      width: token channels.
      num_heads: attention heads (divides width).
      num_layers: transformer blocks.
      mlp_ratio: MLP hidden channels per token channel.
      window_attention: also attend across the window positions of each joint.
      dtype: compute dtype.
    """

    num_joints: int = 17
    width: int = 32
    num_heads: int = 4
    num_layers: int = 1
    mlp_ratio: int = 2
    window_attention: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, features, *, train: bool, mask=None):
        """[N, S, S, K*C] local KEM features -> [N, S, S, K] KAMs (see the module docstring)."""
        del train, mask  # no batch statistics
        x = per_joint(features, self.num_joints).astype(self.dtype)
        count, side, _, num_joints, channels = x.shape
        project = self.param("project", joint_kernel_init(), (num_joints, channels, self.width))
        joints = self.param(
            "joint_embedding", nn.initializers.normal(0.02), (num_joints, self.width)
        )
        tokens = jnp.einsum("...kc,kcd->...kd", x, project.astype(self.dtype))
        tokens = tokens + joints.astype(self.dtype)
        if self.window_attention:
            positions = self.param(
                "position_embedding", nn.initializers.normal(0.02), (side, side, 1, self.width)
            )
            tokens = tokens + positions.astype(self.dtype)
        for index in range(self.num_layers):
            block = dict(num_heads=self.num_heads, mlp_ratio=self.mlp_ratio, dtype=self.dtype)
            tokens = Block(**block, name=f"joints_{index}")(tokens)
            if self.window_attention:
                # [N, S, S, K, D] -> [N, K, S*S, D]: attend across the window per joint.
                window = tokens.transpose(0, 3, 1, 2, 4).reshape(count, num_joints, -1, self.width)
                window = Block(**block, name=f"window_{index}")(window)
                tokens = window.reshape(count, num_joints, side, side, self.width).transpose(
                    0, 2, 3, 1, 4
                )
        tokens = nn.LayerNorm(dtype=self.dtype, name="norm_head")(tokens)
        head = self.param("head", joint_kernel_init(), (num_joints, self.width, 1))
        bias = self.param("head_bias", nn.initializers.zeros, (num_joints,))
        return jnp.einsum("...kd,kd->...k", tokens, head[..., 0].astype(self.dtype)) + bias.astype(
            self.dtype
        )
