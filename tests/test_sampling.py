"""The bilinear samplers (design §3.1) and the LOGO-CA dynamic convolution (paper Eq. 2).

Tolerances: SAMPLE_TOL = 1e-6 absolute on maps drawn from [-1, 1). The reference transcription
below runs in float32 with the official term and product order, so 'reference' mode should agree
to a few ulps (1 ulp of 1.0 is 1.2e-7); map_coordinates sums the same two taps per axis in
another order. CONV_TOL = 1e-5: 121 (or 25) products of O(1) values summed in different orders
against a float64 numpy reference (float32 round-off ~1e-6).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from logocap_jax import decode, logo_ca, sampling

SAMPLE_TOL = 1e-6
CONV_TOL = 1e-5
H, W, C = 6, 9, 4


def reference_sample_np(f, px, py):
    """Literal numpy transcription of design §3.1 (the official sampler), float32.

    f: [H, W, C]; px, py: arrays of equal shape. Returns [..., C].
    """
    height, width = f.shape[:2]
    x0 = np.clip(np.floor(px), 0, width - 1)
    x1 = np.clip(x0 + 1, 0, width - 1)
    wx0 = np.clip(x1 - px, 0, 1)
    wx1 = np.clip(px - x0, 0, 1)
    y0 = np.clip(np.floor(py), 0, height - 1)
    y1 = np.clip(y0 + 1, 0, height - 1)
    wy0 = np.clip(y1 - py, 0, 1)
    wy1 = np.clip(py - y0, 0, 1)
    x0, x1, y0, y1 = (a.astype(np.int64) for a in (x0, x1, y0, y1))
    e = lambda w: w[..., None]
    return (
        f[y0, x0] * e(wy0) * e(wx0)
        + f[y0, x1] * e(wy0) * e(wx1)
        + f[y1, x0] * e(wy1) * e(wx0)
        + f[y1, x1] * e(wy1) * e(wx1)
    )


@pytest.fixture(scope="module")
def feature_map():
    return np.random.default_rng(0).uniform(-1, 1, (H, W, C)).astype(np.float32)


@pytest.fixture(scope="module")
def coordinates():
    """[P, 2] float32 (x, y): random points over [-3, W + 3) x [-3, H + 3) plus the edge cases."""
    rng = np.random.default_rng(1)
    random = np.stack([rng.uniform(-3, W + 3, 400), rng.uniform(-3, H + 3, 400)], axis=1)
    edges_x = [
        -2.5,
        -1.0,
        -0.25,
        0.0,
        0.5,
        W - 1.5,
        W - 1.0,
        W - 0.75,
        W - 0.5,
        W - 0.01,
        float(W),
        W + 0.5,
        W + 4.0,
    ]
    edges_y = [-1.5, 0.0, 2.0, 2.25, H - 1.0, H - 0.5, float(H), H + 2.0]
    grid = np.array([(x, y) for x in edges_x for y in edges_y])
    return np.concatenate([random, grid]).astype(np.float32)


def test_reference_matches_spec_transcription(feature_map, coordinates):
    ours = np.asarray(
        sampling.sample(jnp.asarray(feature_map), jnp.asarray(coordinates), mode="reference")
    )
    expected = reference_sample_np(feature_map, coordinates[:, 0], coordinates[:, 1])
    assert ours.shape == (len(coordinates), C)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=SAMPLE_TOL)


def test_reference_edge_behaviour(feature_map):
    """The quirks, against their closed forms (row y = 2 exactly samples row 2 only)."""
    f = feature_map
    y = 2.0
    cases = [  # (x, expected [C])
        (-3.0, f[2, 0]),
        (-0.5, f[2, 0]),
        (0.0, f[2, 0]),  # x < 0: replicate
        (2.25, 0.75 * f[2, 2] + 0.25 * f[2, 3]),  # interior
        (W - 1.5, 0.5 * f[2, W - 2] + 0.5 * f[2, W - 1]),
        (W - 1.0, np.zeros(C)),  # x == W-1: exactly 0
        (W - 0.75, 0.25 * f[2, W - 1]),
        (W - 0.25, 0.75 * f[2, W - 1]),  # ramp on (W-1, W)
        (float(W), f[2, W - 1]),
        (W + 5.0, f[2, W - 1]),  # x >= W: replicate
    ]
    xy = jnp.array([[x, y] for x, _ in cases], jnp.float32)
    ours = np.asarray(sampling.sample(jnp.asarray(f), xy, mode="reference"))
    for (x, expected), got in zip(cases, ours):
        np.testing.assert_allclose(got, expected, rtol=0, atol=SAMPLE_TOL, err_msg=f"x = {x}")
    assert np.all(ours[5] == 0.0)  # exactly zero, not just small
    # Along y: y == H-1 zeroes the sample whatever x is; the ramp and replication likewise.
    x_interior = 3.0
    ys = [H - 1.0, H - 0.5, float(H) + 1.0, -4.0]
    ours = np.asarray(
        sampling.sample(jnp.asarray(f), jnp.array([[x_interior, y] for y in ys]), mode="reference")
    )
    np.testing.assert_array_equal(ours[0], np.zeros(C))
    np.testing.assert_allclose(ours[1], 0.5 * f[H - 1, 3], atol=SAMPLE_TOL)
    np.testing.assert_allclose(ours[2], f[H - 1, 3], atol=SAMPLE_TOL)
    np.testing.assert_allclose(ours[3], f[0, 3], atol=SAMPLE_TOL)


def test_reference_per_channel(feature_map, coordinates):
    rng = np.random.default_rng(2)
    # [P, C, 2]: every channel at its own coordinates (a shuffled copy of the test points).
    xy = np.stack([coordinates[rng.permutation(len(coordinates))] for _ in range(C)], axis=1)
    ours = np.asarray(
        sampling.sample(
            jnp.asarray(feature_map), jnp.asarray(xy), mode="reference", per_channel=True
        )
    )
    assert ours.shape == (len(coordinates), C)
    for c in range(C):
        expected = reference_sample_np(feature_map[..., c : c + 1], xy[:, c, 0], xy[:, c, 1])[:, 0]
        np.testing.assert_allclose(ours[:, c], expected, rtol=0, atol=SAMPLE_TOL)


def test_reference_batched_leading_dims(feature_map, coordinates):
    xy = coordinates[:420].reshape(5, 7, 12, 2)
    ours = np.asarray(sampling.sample(jnp.asarray(feature_map), jnp.asarray(xy), mode="reference"))
    assert ours.shape == (5, 7, 12, C)
    np.testing.assert_allclose(
        ours, reference_sample_np(feature_map, xy[..., 0], xy[..., 1]), rtol=0, atol=SAMPLE_TOL
    )


def _map_coordinates(feature_map, xy):
    return np.stack(
        [
            np.asarray(
                jax.scipy.ndimage.map_coordinates(
                    jnp.asarray(feature_map[..., c]),
                    [jnp.asarray(xy[..., 1]), jnp.asarray(xy[..., 0])],
                    order=1,
                    mode="nearest",
                )
            )
            for c in range(feature_map.shape[-1])
        ],
        axis=-1,
    )


def test_map_coordinates_mode(feature_map, coordinates):
    ours = np.asarray(
        sampling.sample(jnp.asarray(feature_map), jnp.asarray(coordinates), mode="map_coordinates")
    )
    np.testing.assert_allclose(
        ours, _map_coordinates(feature_map, coordinates), rtol=0, atol=SAMPLE_TOL
    )


def test_map_coordinates_mode_per_channel(feature_map, coordinates):
    rng = np.random.default_rng(3)
    xy = np.stack([coordinates[rng.permutation(len(coordinates))] for _ in range(C)], axis=1)
    ours = np.asarray(
        sampling.sample(
            jnp.asarray(feature_map), jnp.asarray(xy), mode="map_coordinates", per_channel=True
        )
    )
    for c in range(C):
        expected = _map_coordinates(feature_map[..., c : c + 1], xy[:, c])[:, 0]
        np.testing.assert_allclose(ours[:, c], expected, rtol=0, atol=SAMPLE_TOL)


def test_modes_agree_inside_the_map(feature_map):
    """Away from the right/bottom quirks both modes are plain bilinear interpolation."""
    rng = np.random.default_rng(4)
    xy = np.stack([rng.uniform(0, W - 1, 200), rng.uniform(0, H - 1, 200)], axis=1).astype(
        np.float32
    )
    a = sampling.sample(jnp.asarray(feature_map), jnp.asarray(xy), mode="reference")
    b = sampling.sample(jnp.asarray(feature_map), jnp.asarray(xy), mode="map_coordinates")
    np.testing.assert_allclose(a, b, rtol=0, atol=SAMPLE_TOL)


@pytest.mark.parametrize("mode", sampling.SAMPLING_MODES)
@pytest.mark.parametrize("size", [(40, 52), (150, 130)])
def test_sample_windows_equals_sampling_every_window_point(mode, size):
    """Bit for bit, with windows past every border, larger than the map, and a center a float
    rounding away from an integer."""
    rng = np.random.default_rng(0)
    height, width = size
    maps = jnp.asarray(rng.normal(size=(3, height, width, 5)).astype(np.float32))
    centers = rng.uniform(-60, max(size) + 60, size=(6, 5, 2)).astype(np.float32)
    centers[0] = 10.99997
    centers[1, :, 0] = width - 1
    image = jnp.asarray(rng.integers(0, 3, 6))
    half = 20
    dx, dy = decode.window_offsets(half)
    points = centers[:, None, None] + jnp.stack([dx, dy], axis=-1)[:, :, None]
    expected = sampling.sample(
        maps, points, mode=mode, per_channel=True, image=image[:, None, None]
    )
    windows = sampling.sample_windows(maps, jnp.asarray(centers), half, mode=mode, image=image)
    np.testing.assert_array_equal(windows, jnp.transpose(expected, (0, 3, 1, 2)))
    one = sampling.sample_windows(maps[1], jnp.asarray(centers), half, mode=mode)
    expected_one = sampling.sample(maps[1], points, mode=mode, per_channel=True)
    np.testing.assert_array_equal(one, jnp.transpose(expected_one, (0, 3, 1, 2)))


@pytest.mark.slow
def test_sample_windows_gradient_equals_the_pointwise_gradient():
    """Up to float summation order: the same contributions reach each pixel."""
    rng = np.random.default_rng(1)
    maps = jnp.asarray(rng.normal(size=(2, 60, 70, 3)).astype(np.float32))
    centers = jnp.asarray(rng.uniform(-10, 80, size=(4, 3, 2)).astype(np.float32))
    image = jnp.asarray([0, 1, 1, 0])
    dx, dy = decode.window_offsets(12)
    points = centers[:, None, None] + jnp.stack([dx, dy], axis=-1)[:, :, None]
    weights = jnp.asarray(rng.normal(size=(4, 3, 25, 25)).astype(np.float32))

    def pointwise(maps):
        samples = sampling.sample(maps, points, per_channel=True, image=image[:, None, None])
        return (jnp.transpose(samples, (0, 3, 1, 2)) * weights).sum()

    windowed = lambda maps: (
        sampling.sample_windows(maps, centers, 12, image=image) * weights
    ).sum()
    np.testing.assert_allclose(
        jax.grad(windowed)(maps), jax.grad(pointwise)(maps), rtol=1e-5, atol=1e-5
    )


def test_unknown_sampling_mode_raises(feature_map):
    with pytest.raises(ValueError, match="nearest"):
        sampling.sample(jnp.asarray(feature_map), jnp.zeros((3, 2)), mode="nearest")


# ---------------------------------------------------------------------------- LOGO-CA convolution


def true_convolution_np(heatmaps, kams):
    """out[k, u, v] = sum_ij kam[k, i, j] / S^2 * h[k, u - (i - r), v - (j - r)], zero padding."""
    heatmaps, kams = heatmaps.astype(np.float64), kams.astype(np.float64)
    num, extent = heatmaps.shape[0], heatmaps.shape[-1]
    size = kams.shape[-1]
    r = size // 2
    out = np.zeros_like(heatmaps)
    for k in range(num):
        for u in range(extent):
            for v in range(extent):
                total = 0.0
                for i in range(size):
                    for j in range(size):
                        uu, vv = u - (i - r), v - (j - r)
                        if 0 <= uu < extent and 0 <= vv < extent:
                            total += kams[k, i, j] * heatmaps[k, uu, vv]
                out[k, u, v] = total / (size * size)
    return out


@pytest.mark.parametrize("size,extent", [(5, 9), (11, 15)])
def test_attract_modes_equal_true_convolution(size, extent):
    rng = np.random.default_rng(size)
    heatmaps = rng.uniform(-1, 1, (3, extent, extent)).astype(np.float32)
    kams = rng.uniform(0, 1, (3, size, size)).astype(np.float32)  # asymmetric: a flip would show
    expected = true_convolution_np(heatmaps, kams)
    results = {
        mode: np.asarray(
            logo_ca.kam_convolution(jnp.asarray(heatmaps), jnp.asarray(kams), mode=mode)
        )
        for mode in ("shift_add", "grouped", "auto")
    }
    for mode, out in results.items():
        assert out.shape == heatmaps.shape
        np.testing.assert_allclose(out, expected, rtol=0, atol=CONV_TOL, err_msg=mode)
    np.testing.assert_allclose(results["shift_add"], results["grouped"], rtol=0, atol=CONV_TOL)
    # The per-image form over instances: [N, K, A, A] with N = 2.
    batch_h, batch_k = np.stack([heatmaps, heatmaps[::-1]]), np.stack([kams, kams[:, ::-1]])
    for mode in ("shift_add", "grouped", "auto"):
        out = np.asarray(
            logo_ca.kam_convolution_instances(jnp.asarray(batch_h), jnp.asarray(batch_k), mode=mode)
        )
        assert out.shape == batch_h.shape
        np.testing.assert_allclose(out[0], expected, rtol=0, atol=CONV_TOL, err_msg=mode)
        np.testing.assert_allclose(
            out[1], true_convolution_np(batch_h[1], batch_k[1]), rtol=0, atol=CONV_TOL, err_msg=mode
        )
    # A correlation (no kernel flip) would differ by far more than the tolerance.
    correlation = true_convolution_np(heatmaps, kams[:, ::-1, ::-1])
    assert np.abs(correlation - expected).max() > 100 * CONV_TOL


def test_kam_convolution_gradients_agree_across_modes():
    # shift_add has a hand-written gradient; the grouped convolution's comes from autodiff.
    rng = np.random.default_rng(3)
    heatmaps = jnp.asarray(rng.normal(size=(3, 21, 21)), jnp.float32)
    kams = jnp.asarray(rng.normal(size=(3, 5, 5)), jnp.float32)
    cotangent = jnp.asarray(rng.normal(size=(3, 21, 21)), jnp.float32)
    grads = {
        mode: jax.vjp(functools.partial(logo_ca.kam_convolution, mode=mode), heatmaps, kams)[1](
            cotangent
        )
        for mode in ("shift_add", "grouped")
    }
    for ours, theirs in zip(grads["shift_add"], grads["grouped"]):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


def test_attract_unknown_mode_raises():
    with pytest.raises(ValueError, match="fft"):
        logo_ca.kam_convolution(jnp.zeros((1, 5, 5)), jnp.zeros((1, 3, 3)), mode="fft")
    with pytest.raises(ValueError, match="fft"):
        logo_ca.kam_convolution_instances(
            jnp.zeros((2, 1, 5, 5)), jnp.zeros((2, 1, 3, 3)), mode="fft"
        )
