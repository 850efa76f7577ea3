"""Ways of computing a convolution with the same parameters (docs/design.md §6).

`nn.Conv` computes its output through a `conv_general_dilated` function; this module provides
the forms the models can use in its place, chosen per layer by `model.conv_form`:

- `native`: `lax.conv_general_dilated`, what every backend runs by default;
- `shifted_dots`: one matrix product per kernel tap, [N, H', W', C_in] windows of the padded
  input (strided for stride 2) times the tap's [C_in, C_out] kernel slice, accumulated in
  float32. CPUs with AMX run bfloat16 matrix products several times faster than XLA:CPU's
  bfloat16 convolutions, but the extra data movement costs more than that saves at 32-64
  channels;
- `auto`: `shifted_dots` for bfloat16 layers with at least `AUTO_MIN_CHANNELS` input and output
  channels on a CPU with AMX, `native` everywhere else (GPU, TPU, float32, CPUs without AMX).
  On a CPU, `auto` also differentiates native 1x1 convolutions as matrix products
  (`dot_gradients`): XLA:CPU's convolution gradients ran several times slower than the products
  at the backbone's 1x1 layers. The forward pass, and so inference, is unchanged.

The choice is taken when the program is traced, from the layer's shapes and dtype, the default
backend and the CPU's features, so it costs nothing at run time.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax

FORMS = ("auto", "native", "shifted_dots")
AUTO_MIN_CHANNELS = 128


@functools.cache
def cpu_has_amx() -> bool:
    """Whether this machine's CPU has AMX bfloat16 tiles (Linux /proc/cpuinfo flags)."""
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and " amx_bf16" in line for line in f)
    except OSError:
        return False


def chosen_form(form: str, in_channels: int, out_channels: int, dtype) -> str:
    """The form `form` stands for at a layer: 'native' or 'shifted_dots'.

    Raises:
      ValueError: `form` is not one of FORMS.
    """
    if form not in FORMS:
        raise ValueError(f"Unknown convolution form {form!r}; one of {', '.join(FORMS)}")
    if form != "auto":
        return form
    wide = min(in_channels, out_channels) >= AUTO_MIN_CHANNELS
    on_amx = jax.default_backend() == "cpu" and cpu_has_amx()
    return "shifted_dots" if wide and on_amx and dtype == jnp.bfloat16 else "native"


@functools.cache
def conv_general_dilated(form: str):
    """A function with the signature of `lax.conv_general_dilated` (as `nn.Conv` calls it) that
    computes the convolution in `form`, decided per call from its shapes (see the module)."""

    def convolve(lhs, rhs, window_strides, padding, **kwargs):
        in_channels, out_channels = rhs.shape[-2], rhs.shape[-1]
        native = chosen_form(form, in_channels, out_channels, lhs.dtype) == "native"
        if not _plain_nhwc(lhs, rhs, padding, kwargs):
            return lax.conv_general_dilated(lhs, rhs, window_strides, padding, **kwargs)
        strides = tuple(window_strides)
        padding = tuple(tuple(pair) for pair in padding)
        precision = kwargs.get("precision")
        if not native:
            return shifted_dots(lhs, rhs, strides, padding, precision=precision)
        pointwise = rhs.shape[:2] == (1, 1)
        if form == "auto" and pointwise and jax.default_backend() == "cpu":
            return dot_gradients(lhs, rhs, strides, padding, precision)
        return lax.conv_general_dilated(lhs, rhs, strides, padding, **kwargs)

    return convolve


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def dot_gradients(lhs, rhs, strides, padding, precision):
    """The native convolution differentiated as `shifted_dots` (docs/design.md §6.4): the same
    values, gradients equal up to summation order.

    Measured on XLA:CPU (AVX-512 Xeon, W32 batch 2 at 512): at layer1's 1x1 layers the kernel
    gradient ran 3-7x and the input gradient 2-7x faster as products. Doing the same for strided
    and large 3x3 layers made the whole training step slower (XLA fused the cotangent into each
    of the nine products' operands).
    """
    return _native(lhs, rhs, strides, padding, precision=precision)


def _native(lhs, rhs, strides, padding, *, precision):
    numbers = ("NHWC", "HWIO", "NHWC")
    return lax.conv_general_dilated(
        lhs, rhs, strides, padding, dimension_numbers=numbers, precision=precision
    )


def _dot_gradients_forward(lhs, rhs, strides, padding, precision):
    return _native(lhs, rhs, strides, padding, precision=precision), (lhs, rhs)


def _dot_gradients_backward(strides, padding, precision, residuals, cotangent):
    products = lambda x, w: shifted_dots(x, w, strides, padding, precision=precision)
    return jax.vjp(products, *residuals)[1](cotangent)


dot_gradients.defvjp(_dot_gradients_forward, _dot_gradients_backward)


def _plain_nhwc(lhs, rhs, padding, kwargs) -> bool:
    """Whether the call is an NHWC x HWIO convolution without dilation or feature groups."""
    expected = lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))
    numbers = kwargs.get("dimension_numbers")
    numbers = lax.conv_dimension_numbers(lhs.shape, rhs.shape, numbers) if numbers else None
    undilated = all(
        kwargs.get(key) is None or all(d == 1 for d in kwargs[key])
        for key in ("lhs_dilation", "rhs_dilation")
    )
    return (
        lhs.ndim == 4
        and numbers == expected
        and undilated
        and kwargs.get("feature_group_count", 1) == 1
        and not isinstance(padding, str)
    )


def shifted_dots(lhs, rhs, window_strides, padding, *, precision=None):
    """An NHWC x HWIO convolution as a sum of one matrix product per kernel tap.

    Args:
      lhs: [N, H, W, C_in] input.
      rhs: [kh, kw, C_in, C_out] kernel.
      window_strides: (sh, sw).
      padding: ((top, bottom), (left, right)) zero padding.
      precision: passed to the products.

    Returns:
      [N, H', W', C_out] in the inputs' dtype, accumulated in float32.
    """
    (sh, sw), (kh, kw) = window_strides, rhs.shape[:2]
    x = jnp.pad(lhs, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
    out_h = (x.shape[1] - kh) // sh + 1
    out_w = (x.shape[2] - kw) // sw + 1
    total = None
    for i in range(kh):
        for j in range(kw):
            window = lax.slice(
                x,
                (0, i, j, 0),
                (x.shape[0], i + (out_h - 1) * sh + 1, j + (out_w - 1) * sw + 1, x.shape[3]),
                (1, sh, sw, 1),
            )
            term = jnp.einsum(
                "nhwc,cd->nhwd",
                window,
                rhs[i, j],
                precision=precision,
                preferred_element_type=jnp.float32,
            )
            total = term if total is None else total + term
    return total.astype(jnp.result_type(lhs, rhs))
