"""Convolution and normalisation layers with the official model's conventions.

PyTorch and Flax differ in four places that matter for converted weights: 3x3 stride-2
convolutions pad symmetrically (Flax 'SAME' would pad (0, 1) on even sizes), BatchNorm momentum
0.1 in PyTorch is 0.9 in Flax, PyTorch's running variance folds in the unbiased batch variance
(Flax's the biased one), and the default initialisers differ (used only when training).
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from logocap_jax.models import conv_forms

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

    Same parameters as `nn.Conv` with kernel (1, 1), so checkpoints are interchangeable. With
    `compile_options.cpu_options` XLA:CPU runs these products through YNNPACK, much faster than
    its 1x1 convolutions at the heads' and fuse layers' shapes.
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


def upsample_bilinear(x, factor: int):
    """Bilinear upsampling by an integer factor with half-pixel centers: [B, h, w, C] ->
    [B, h * factor, w * factor, C].

    The interpolation of `jax.image.resize(..., "bilinear")` and PyTorch's
    `interpolate(align_corners=False)`, edges replicated, written as two taps per output and
    axis instead of the dense resampling matrix `jax.image.resize` multiplies by.
    """
    for axis in (1, 2):
        x = _upsample_axis(x, factor, axis)
    return x


def _upsample_axis(x, factor: int, axis: int):
    if factor == 1:
        return x
    return _upsample_axis_taps(x, factor, axis)


def _phase_shifts(factor: int):
    """Output m * factor + k samples input m + shift_k, shift_k = (k + 0.5) / factor - 0.5."""
    return [(k + 0.5) / factor - 0.5 for k in range(factor)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _upsample_axis_taps(x, factor: int, axis: int):
    size = x.shape[axis]
    take = lambda start, stop: jax.lax.slice_in_dim(x, start, stop, axis=axis)
    previous = jnp.concatenate([take(0, 1), take(0, size - 1)], axis=axis)
    following = jnp.concatenate([take(1, size), take(size - 1, size)], axis=axis)
    phases = []
    for shift in _phase_shifts(factor):
        if shift < 0:
            phases.append(-shift * previous + (1 + shift) * x)
        else:
            phases.append((1 - shift) * x + shift * following)
    stacked = jnp.stack(phases, axis=axis + 1)
    shape = x.shape[:axis] + (size * factor,) + x.shape[axis + 1 :]
    return stacked.reshape(shape)


def interpolation_matrix(size: int, factor: int) -> np.ndarray:
    """[size * factor, size]: row m * factor + k holds the two taps of output m * factor + k."""
    matrix = np.zeros((size * factor, size), np.float32)
    for m in range(size):
        for k, shift in enumerate(_phase_shifts(factor)):
            neighbour = min(max(m + (1 if shift >= 0 else -1), 0), size - 1)
            matrix[m * factor + k, m] += 1 - abs(shift)
            matrix[m * factor + k, neighbour] += abs(shift)
    return matrix


def _upsample_axis_forward(x, factor, axis):
    return _upsample_axis_taps(x, factor, axis), x.shape[axis]


def _upsample_axis_backward(factor, axis, size, cotangent):
    """The transpose as one matrix product along `axis`: XLA:CPU fused the transposed taps (pads
    and sums of slices) into every consumer, recomputing them (design §6.4)."""
    matrix = jnp.asarray(interpolation_matrix(size, factor), cotangent.dtype)
    moved = jnp.tensordot(cotangent, matrix, axes=[[axis], [0]])
    return (jnp.moveaxis(moved, -1, axis),)


_upsample_axis_taps.defvjp(_upsample_axis_forward, _upsample_axis_backward)


class MultiResolutionPointwiseConv(nn.Module):
    """A 1x1 convolution of branches at decreasing resolutions, concatenated after upsampling.

    Computes conv(concat([b_0, up(b_1), up(b_2), ...])) as sum_i up(b_i @ K_i), K_i the kernel
    rows of branch i: the product runs at each branch's own resolution and only the narrow result
    is upsampled (bilinear, factor 2^i), which is exact since both maps are linear. Parameters
    are those of `nn.Conv` with kernel (1, 1) and no bias over the concatenation.

    Attributes:
      features: output channels.
      kernel_init: initialiser of the [1, 1, sum of branch channels, features] kernel.
    """

    features: int
    kernel_init: Any = backbone_kernel_init
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, branches):
        """branches: [B, H / 2^i, W / 2^i, C_i] for i = 0, 1, ...; returns [B, H, W, features]."""
        channels = [branch.shape[-1] for branch in branches]
        kernel = self.param("kernel", self.kernel_init, (1, 1, sum(channels), self.features))
        kernel = kernel[0, 0].astype(self.dtype)
        total, start = None, 0
        for i, branch in enumerate(branches):
            part = jnp.einsum(
                "...c,cd->...d", branch.astype(self.dtype), kernel[start : start + channels[i]]
            )
            part = upsample_bilinear(part, 2**i)
            total = part if total is None else total + part
            start += channels[i]
        return total


@jax.custom_jvp
def relu(x):
    """max(x, 0) with the derivative of `jax.nn.relu` (0 at 0), written as a select.

    XLA:CPU treats max(x, 0) as a unary operation that is free to recompute, so it fused each
    ReLU, and through it the BatchNorm and residual sums before it, into every consumer: the
    next block's sum, the ReLU gradients and the transposed copies that the convolution weight
    gradients read. Each consumer re-evaluated the residual stream up to its layer, which took
    64% of the W32 training step and most of its compile time (docs/design.md §6.2).
    A select of x has two full-size operands, so XLA computes it once and stores it. NaN stays
    NaN.
    """
    return jnp.where(x < 0, jnp.zeros_like(x), x)


relu.defjvps(lambda tangent, _, x: jnp.where(x > 0, tangent, jnp.zeros_like(tangent)))


def conv(
    features: int,
    kernel_size: int,
    *,
    stride: int = 1,
    use_bias: bool = False,
    kernel_init=backbone_kernel_init,
    bias_init=nn.initializers.zeros,
    dtype: Dtype = jnp.float32,
    pointwise_as_dot: bool = True,
    form: str = "native",
    name: str | None = None,
) -> nn.Conv:
    """A square convolution with PyTorch's symmetric padding of kernel_size // 2.

    1x1 convolutions are `PointwiseConv` matrix products unless `pointwise_as_dot` is False;
    the others are computed in `form` (`conv_forms`). The parameters are the same either way.
    """
    pad = kernel_size // 2
    as_dot = kernel_size == 1 and stride == 1 and pointwise_as_dot
    extra = {} if as_dot else {"conv_general_dilated": conv_forms.conv_general_dilated(form)}
    conv_cls = PointwiseConv if as_dot else nn.Conv
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
        **extra,
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


def batch_mask(mask, x):
    """[N] instance mask broadcast to x [N, ...] for BatchNorm's `mask`, or None."""
    if mask is None:
        return None
    return jnp.broadcast_to(mask.reshape(mask.shape + (1,) * (x.ndim - 1)), x.shape)


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
