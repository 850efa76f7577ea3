"""Convolution and normalisation layers with the official model's conventions.

PyTorch and Flax differ in four places that matter for converted weights: 3x3 stride-2
convolutions pad symmetrically (Flax 'SAME' would pad (0, 1) on even sizes), BatchNorm momentum
0.1 in PyTorch is 0.9 in Flax, PyTorch's running variance folds in the unbiased batch variance
(Flax's the biased one), and the default initialisers differ (used only when training).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any

BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

# The official backbone initialises every convolution with N(0, 0.001).
backbone_kernel_init = nn.initializers.normal(stddev=0.001)
# PyTorch's default convolution init, kaiming_uniform(a=sqrt(5)), is U(+-1/sqrt(fan_in)).
torch_default_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_default_bias_init(fan_in: int):
    """PyTorch's default convolution bias init, U(+-1/sqrt(fan_in))."""
    bound = 1.0 / fan_in**0.5

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class PointwiseConv(nn.Conv):
    """A 1x1 convolution computed as a matrix product over channels.

    Same parameters as `nn.Conv` with kernel (1, 1), so checkpoints are interchangeable; XLA:CPU
    runs the matrix product 1.5-3x faster than its 1x1 convolution at HRNet's shapes.
    """

    @nn.compact
    def __call__(self, inputs):
        kernel = self.param(
            "kernel", self.kernel_init, (1, 1, inputs.shape[-1], self.features), self.param_dtype
        )
        bias = (
            self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias
            else None
        )
        inputs, kernel, bias = nn.dtypes.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
        outputs = jnp.einsum("...c,cd->...d", inputs, kernel[0, 0])
        return outputs if bias is None else outputs + bias


def conv(
    features: int,
    kernel_size: int,
    *,
    stride: int = 1,
    use_bias: bool = False,
    kernel_init=backbone_kernel_init,
    bias_init=nn.initializers.zeros,
    dtype: Dtype = jnp.float32,
    name: str | None = None,
) -> nn.Conv:
    """A square convolution with PyTorch's symmetric padding of kernel_size // 2."""
    pad = kernel_size // 2
    conv_cls = PointwiseConv if kernel_size == 1 and stride == 1 else nn.Conv
    return conv_cls(
        features,
        (kernel_size, kernel_size),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        use_bias=use_bias,
        kernel_init=kernel_init,
        bias_init=bias_init,
        dtype=dtype,
        name=name,
    )


class BatchNorm(nn.BatchNorm):
    """`nn.BatchNorm` whose running variance is updated as PyTorch's.

    Both normalise a training batch with its biased variance, but PyTorch moves the running
    variance towards the unbiased one, var * n / (n - 1), n the elements per channel (those of
    `mask` when given). Over a few steps the biased update drifts by about 0.1 * var / n per step
    (3e-3 relative on the tiny model's 8 x 8 stage-4 branch, n = 128). Batch statistics are
    global under jit, so `axis_name` (per-device statistics) is not supported.
    """

    momentum: float = BN_MOMENTUM
    epsilon: float = BN_EPSILON

    @nn.compact
    def __call__(self, x, use_running_average=None, *, mask=None):
        if self.axis_name is not None:
            raise NotImplementedError("BatchNorm counts its elements without axis_name")
        running = nn.merge_param(
            "use_running_average", self.use_running_average, use_running_average
        )
        update = not running and not self.is_initializing()
        old = self.get_variable("batch_stats", "var") if update else None
        outputs = super().__call__(x, use_running_average=use_running_average, mask=mask)
        if update:
            # Flax stored m * old + (1 - m) * var; adding (1 - m) * var / (n - 1) gives PyTorch's
            # m * old + (1 - m) * var * n / (n - 1).
            features = _feature_axes(x.ndim, self.axis)
            reduced = tuple(i for i in range(x.ndim) if i not in features)
            count = (
                x.size / np.prod([x.shape[i] for i in features])
                if mask is None
                else jnp.sum(jnp.broadcast_to(mask, x.shape), axis=reduced)
            )
            new = self.get_variable("batch_stats", "var")
            correction = (new - self.momentum * old) / jnp.maximum(count - 1, 1)
            self.put_variable("batch_stats", "var", new + correction)
        return outputs


def _feature_axes(ndim: int, axis) -> tuple[int, ...]:
    axes = axis if isinstance(axis, tuple | list) else (axis,)
    return tuple(a % ndim for a in axes)


def batch_norm(
    *, train: bool, dtype: Dtype = jnp.float32, name: str | None = None, **kwargs
) -> BatchNorm:
    """BatchNorm with the official epsilon and momentum; batch statistics when training."""
    return BatchNorm(
        use_running_average=not train,
        dtype=dtype,
        name=name,
        **kwargs,
    )
