"""Layer helpers (models/layers.py) against the library functions they stand in for."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from logocap_jax.models import layers


@pytest.mark.parametrize("factor", [1, 2, 4, 8])
def test_bilinear_upsampling_and_its_gradient_equal_jax_image_resize(factor):
    """Values from the two-tap form, gradients from the interpolation matrix's transpose: both
    equal `jax.image.resize(..., 'bilinear')` (half-pixel centres, edges replicated)."""
    x = jax.random.normal(jax.random.key(0), (2, 5, 7, 3))
    shape = (2, 5 * factor, 7 * factor, 3)
    cotangent = jax.random.normal(jax.random.key(1), shape)
    ours, ours_vjp = jax.vjp(lambda x: layers.upsample_bilinear(x, factor), x)
    reference, reference_vjp = jax.vjp(lambda x: jax.image.resize(x, shape, "bilinear"), x)
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-6)
    np.testing.assert_allclose(ours_vjp(cotangent)[0], reference_vjp(cotangent)[0], atol=1e-5)


def test_interpolation_matrix_rows_are_two_taps_summing_to_one():
    matrix = layers.interpolation_matrix(6, 4)
    assert matrix.shape == (24, 6)
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0, atol=1e-7)
    assert ((matrix > 0).sum(axis=1) <= 2).all()
    # Output 9 = 2 * 4 + 1 lies at input 2 - 0.125: weights 0.125 on input 1, 0.875 on input 2.
    np.testing.assert_allclose(matrix[9], [0, 0.125, 0.875, 0, 0, 0], atol=1e-7)


def test_relu_is_a_select_with_relus_derivative():
    x = jnp.array([-2.0, -0.0, 0.0, 1.5, jnp.nan])
    np.testing.assert_array_equal(layers.relu(x), jax.nn.relu(x))
    gradient = jax.grad(lambda x: jnp.sum(layers.relu(x) * jnp.arange(1.0, 6.0)))(x)
    np.testing.assert_array_equal(gradient[:4], [0.0, 0.0, 0.0, 4.0])
