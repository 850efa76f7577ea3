"""Convolutional message passing (CMP): local KEM features in, keypoint attraction maps out.

`ConvMessagePassing` is the CMP variant `conv`; other variants have its interface,
`__call__(features [N, S, S, K*C], *, train, mask=None) -> [N, S, S, K]`, where `mask` [N]
marks the instances that count towards batch statistics (see `logocap_jax.models.cmp_variants`).
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from logocap_jax.models.layers import (
    BN_EPSILON,
    BN_MOMENTUM,
    BatchNorm,
    Dtype,
    batch_mask,
    conv,
    relu,
    torch_default_bias_init,
    torch_default_kernel_init,
)


class AttentiveNorm(BatchNorm):
    """Attentive normalisation (design §3.4): affine-free BatchNorm, then a per-instance mixture
    of `num_affine` affine transforms weighted by a hard-sigmoid attention.

    The attention reads the per-channel mean over the window divided by the (unbiased) standard
    deviation of the *input*, so it is computed per instance in training and evaluation alike.
    Subclassing BatchNorm keeps the running statistics at this module's level, as in the official
    checkpoint (`joints_mlp.4.running_mean`).
    """

    num_affine: int = 20
    variance_epsilon: float = 1e-3
    use_scale: bool = False
    use_bias: bool = False
    momentum: float = BN_MOMENTUM
    epsilon: float = BN_EPSILON

    @nn.compact
    def __call__(self, x, use_running_average=None, *, mask=None):
        channels = x.shape[-1]
        normalized = super().__call__(x, use_running_average=use_running_average, mask=mask)
        window = x.shape[1] * x.shape[2]
        mean = jnp.mean(x, axis=(1, 2), keepdims=True)
        variance = jnp.sum((x - mean) ** 2, axis=(1, 2), keepdims=True) / (window - 1)
        standardized_mean = mean * jax.lax.rsqrt(variance + self.variance_epsilon)
        attention = nn.Conv(
            self.num_affine,
            (1, 1),
            use_bias=False,
            dtype=self.dtype,
            kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
            name="attn_weights.attention.0",
        )(standardized_mean)
        attention = jax.nn.hard_sigmoid(attention[:, 0, 0, :])
        weight = self.param(
            "weight_", lambda k, s: 1.0 + 0.1 * jax.random.normal(k, s), (self.num_affine, channels)
        )
        bias = self.param(
            "bias_", lambda k, s: 0.1 * jax.random.normal(k, s), (self.num_affine, channels)
        )
        gamma = attention @ weight.astype(attention.dtype)
        beta = attention @ bias.astype(attention.dtype)
        return gamma[:, None, None, :] * normalized + beta[:, None, None, :]


class ConvMessagePassing(nn.Module):
    """The official CMP: (conv-norm-ReLU) x len(widths), then a 1x1 conv to one map per joint.

    Layers are named by their index in the official `joints_mlp` Sequential (ReLUs take the
    indices 2, 5, 8), so converted checkpoints map one-to-one.

    Attributes:
      num_joints: K, output maps.
      widths: output channels of the hidden convolutions.
      attentive_norm: per hidden layer, AttentiveNorm (True) or BatchNorm (False).
      num_affine: affine transforms mixed by each AttentiveNorm.
      kernel_size: hidden convolution kernel size.
      conv_form: how the hidden convolutions are computed (`conv_forms.FORMS`), set by LogoCap.
    """

    num_joints: int = 17
    widths: Sequence[int] = (512, 256, 128)
    attentive_norm: Sequence[bool] = (False, True, False)
    num_affine: int = 20
    kernel_size: int = 3
    dtype: Dtype = jnp.float32
    conv_form: str = "native"

    @nn.compact
    def __call__(self, features, *, train: bool, mask=None):
        """Computes keypoint attraction maps (KAMs).

        Args:
          features: [N, S, S, K*C] local KEM features, channel index k*C + c.
          train: batch statistics (over the instances selected by `mask`) instead of running ones.
          mask: optional [N] bool, the instances that count towards batch statistics.

        Returns:
          [N, S, S, K] KAMs, unclamped.
        """
        assert features.ndim == 4, f"Expected [N, S, S, K*C], got {features.shape}"
        assert len(self.widths) == len(self.attentive_norm), "one attentive_norm flag per width"
        x = features
        for layer, (width, attentive) in enumerate(zip(self.widths, self.attentive_norm)):
            x = conv(
                width,
                self.kernel_size,
                kernel_init=torch_default_kernel_init,
                dtype=self.dtype,
                form=self.conv_form,
                name=str(3 * layer),
            )(x)
            norm_cls = AttentiveNorm if attentive else BatchNorm
            norm_kwargs = (
                dict(num_affine=self.num_affine)
                if attentive
                else dict(momentum=BN_MOMENTUM, epsilon=BN_EPSILON)
            )
            norm = norm_cls(
                use_running_average=not train,
                dtype=self.dtype,
                name=str(3 * layer + 1),
                **norm_kwargs,
            )
            x = relu(norm(x, mask=batch_mask(mask, x)))
        return conv(
            self.num_joints,
            1,
            use_bias=True,
            kernel_init=torch_default_kernel_init,
            bias_init=torch_default_bias_init(x.shape[-1]),
            dtype=self.dtype,
            name=str(3 * len(self.widths)),
        )(x)
