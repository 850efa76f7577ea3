"""The convolution forms (models/conv_forms.py) compute what lax.conv_general_dilated computes,
with the same parameters, and `auto` picks them as documented."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from logocap_jax import compile_options, config_utils
from logocap_jax.models import conv_forms, layers

PAD = ((1, 1), (1, 1))
NHWC = ("NHWC", "HWIO", "NHWC")


def _native(x, kernel, stride):
    return lax.conv_general_dilated(x, kernel, (stride, stride), PAD, dimension_numbers=NHWC)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [(9, 9), (8, 12)])
def test_shifted_dots_equals_the_native_convolution(stride, size):
    x = jax.random.normal(jax.random.key(0), (2, *size, 24))
    kernel = jax.random.normal(jax.random.key(1), (3, 3, 24, 40))
    ours = conv_forms.shifted_dots(x, kernel, (stride, stride), PAD)
    reference = _native(x, kernel, stride)
    assert ours.shape == reference.shape and ours.dtype == jnp.float32
    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-4)


def test_shifted_dots_in_bfloat16_accumulates_in_float32():
    """bfloat16 inputs, float32 accumulation: within bfloat16 rounding of the float32 result."""
    x = jax.random.normal(jax.random.key(0), (2, 10, 10, 128))
    kernel = jax.random.normal(jax.random.key(1), (3, 3, 128, 64)) / 30
    ours = conv_forms.shifted_dots(x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16), (1, 1), PAD)
    reference = _native(x, kernel, 1)
    assert ours.dtype == jnp.bfloat16
    scale = np.abs(reference).max()
    np.testing.assert_allclose(np.float32(ours), reference, atol=2e-2 * scale)


@pytest.mark.parametrize("form", ["native", "shifted_dots"])
def test_layer_forms_have_the_same_parameters_and_outputs(form):
    x = jax.random.normal(jax.random.key(0), (1, 12, 12, 16))
    reference = layers.conv(32, 3, stride=2, form="native")
    layer = layers.conv(32, 3, stride=2, form=form)
    variables = reference.init(jax.random.key(2), x)
    assert jax.tree.map(jnp.shape, layer.init(jax.random.key(2), x)) == jax.tree.map(
        jnp.shape, variables
    )
    np.testing.assert_allclose(
        layer.apply(variables, x), reference.apply(variables, x), rtol=1e-5, atol=1e-5
    )


def test_auto_picks_shifted_dots_only_for_wide_bfloat16_layers_on_amx(monkeypatch):
    monkeypatch.setattr(conv_forms, "cpu_has_amx", lambda: True)
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    assert conv_forms.chosen_form("auto", 128, 256, jnp.bfloat16) == "shifted_dots"
    assert conv_forms.chosen_form("auto", 64, 256, jnp.bfloat16) == "native"
    assert conv_forms.chosen_form("auto", 256, 256, jnp.float32) == "native"
    monkeypatch.setattr(conv_forms, "cpu_has_amx", lambda: False)
    assert conv_forms.chosen_form("auto", 256, 256, jnp.bfloat16) == "native"
    monkeypatch.setattr(conv_forms, "cpu_has_amx", lambda: True)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert conv_forms.chosen_form("auto", 256, 256, jnp.bfloat16) == "native"
    assert conv_forms.chosen_form("shifted_dots", 8, 8, jnp.float32) == "shifted_dots"
    with pytest.raises(ValueError, match="'winograd'.*auto, native, shifted_dots"):
        conv_forms.chosen_form("winograd", 8, 8, jnp.float32)


def test_auto_differentiates_pointwise_layers_as_products_on_cpu():
    """`auto` on a CPU: a 1x1 layer's values are the native convolution's, its gradients are
    those of autodiff through the native convolution (as matrix products), and they are
    computed by `dot_gradients`; 3x3 layers keep autodiff."""
    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 24))
    kernel = jax.random.normal(jax.random.key(1), (1, 1, 24, 40))
    weights = jax.random.normal(jax.random.key(2), (2, 16, 16, 40))
    auto = functools.partial(conv_forms.conv_general_dilated("auto"), dimension_numbers=NHWC)
    native = functools.partial(lax.conv_general_dilated, dimension_numbers=NHWC)
    loss = lambda conv, x, k: jnp.sum(weights * jnp.tanh(conv(x, k, (1, 1), ((0, 0), (0, 0)))))
    np.testing.assert_array_equal(
        auto(x, kernel, (1, 1), ((0, 0), (0, 0))), native(x, kernel, (1, 1), ((0, 0), (0, 0)))
    )
    ours = jax.grad(functools.partial(loss, auto), argnums=(0, 1))(x, kernel)
    reference = jax.grad(functools.partial(loss, native), argnums=(0, 1))(x, kernel)
    for got, want in zip(ours, reference):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    assert "custom_vjp_call" in str(jax.make_jaxpr(functools.partial(loss, auto))(x, kernel))
    kernel3 = jax.random.normal(jax.random.key(3), (3, 3, 24, 40))
    assert "custom_vjp_call" not in str(
        jax.make_jaxpr(lambda x, k: auto(x, k, (1, 1), PAD))(x, kernel3)
    )


@pytest.mark.slow
def test_model_in_shifted_dots_equals_native():
    """The whole tiny model (backbone and CMP) computed with shifted dots: same parameters,
    same heads and KAMs. Each program runs once, so it is compiled with the run-once options."""
    config = config_utils.load_config("configs/tiny.py")
    images = jax.random.normal(jax.random.key(0), (1, 64, 64, 3))
    windows = jax.random.normal(jax.random.key(1), (3, 11, 11, 17 * 8))
    native = config_utils.build_model(config, conv_form="native")
    initialize = functools.partial(native.init, method=native.initialize)
    variables = compile_options.jit(initialize, run_once=True)(jax.random.key(0), images)
    outputs = {}
    for form in ("native", "shifted_dots"):
        model = config_utils.build_model(config, conv_form=form)
        init = functools.partial(model.init, method=model.initialize)
        template = jax.eval_shape(init, jax.random.key(0), images)
        assert jax.tree.map(jnp.shape, template) == jax.tree.map(jnp.shape, variables)
        heads = functools.partial(model.apply, train=False)
        kams = functools.partial(model.apply, train=False, method=model.attraction_maps)
        outputs[form] = (
            compile_options.jit(heads, run_once=True)(variables, images),
            compile_options.jit(kams, run_once=True)(variables, windows),
        )
    for ours, reference in zip(
        jax.tree.leaves(outputs["shifted_dots"]), jax.tree.leaves(outputs["native"])
    ):
        scale = np.abs(reference).max()
        np.testing.assert_allclose(ours, reference, atol=1e-5 * scale)


def test_unknown_form_is_a_config_error():
    config = config_utils.load_config("configs/tiny.py")
    with pytest.raises(ValueError, match="conv_form 'fast'"):
        config_utils.build_model(config, conv_form="fast")
