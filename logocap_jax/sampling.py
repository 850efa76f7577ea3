"""Bilinear sampling of feature maps at float pixel coordinates.

One entry point, `sample`, with two modes:

- 'reference': the official sampler, bit for bit (design §3.1). It is neither grid_sample nor
  map_coordinates: it replicates the border for coordinates below 0, returns exactly 0 at
  x = W - 1, ramps as f[W-1] * (x - (W - 1)) on (W - 1, W) and replicates f[W-1] beyond.
  Converted official checkpoints need it.
- 'map_coordinates': ordinary bilinear interpolation with edge replication, the semantics of
  `jax.scipy.ndimage.map_coordinates(order=1, mode='nearest')`, for new training.

Both are computed with four channels-last gathers, which on CPU is several times faster than
vmapping map_coordinates over channels; tests check each mode against its definition.
`sample_windows` computes the same samples on unit-spaced windows (the global KEMs) from one
crop per window instead of four indices per point, which a training step would otherwise hold
for the backward pass (four int32 indices for each of the four corners of every point).
"""

import jax
import jax.numpy as jnp

SAMPLING_MODES = ("reference", "map_coordinates")


def _corners(coordinate, size, mode):
    """Integer corner indices and their weights along one axis."""
    if mode == "reference":
        low = jnp.clip(jnp.floor(coordinate), 0, size - 1)
        high = jnp.clip(low + 1, 0, size - 1)
        return low, high, jnp.clip(high - coordinate, 0, 1), jnp.clip(coordinate - low, 0, 1)
    if mode == "map_coordinates":
        low = jnp.floor(coordinate)
        high_weight = coordinate - low
        return (
            jnp.clip(low, 0, size - 1),
            jnp.clip(low + 1, 0, size - 1),
            1 - high_weight,
            high_weight,
        )
    raise ValueError(f"Unknown sampling mode {mode!r}; expected one of {SAMPLING_MODES}")


def sample(features, xy, *, mode: str = "reference", per_channel: bool = False, image=None):
    """Samples a channels-last map at float pixel coordinates.

    Args:
      features: [H, W, C] map; with `image`, a batch of maps [B, H, W, C].
      xy: [..., 2] (x, y) coordinates in pixels of `features`; with `per_channel`,
        [..., C, 2]: channel c is sampled at its own coordinates xy[..., c, :].
      mode: one of SAMPLING_MODES.
      per_channel: see `xy`.
      image: optional int array broadcastable to xy[..., 0] (to xy[..., 0, 0] with
        `per_channel`): the map of the batch each point is sampled from. Gathering from the
        batch directly avoids a copy of one map per point set.

    Returns:
      [..., C] samples.
    """
    if image is None:
        assert features.ndim == 3, f"Expected [H, W, C] features, got {features.shape}"
        batch = ()
    else:
        assert features.ndim == 4, f"Expected [B, H, W, C] features, got {features.shape}"
        batch = (image[..., None] if per_channel else image,)
    height, width, channels = features.shape[-3:]
    x0, x1, wx0, wx1 = _corners(xy[..., 0], width, mode)
    y0, y1, wy0, wy1 = _corners(xy[..., 1], height, mode)
    if per_channel:
        assert xy.shape[-2] == channels, (
            f"Expected [..., {channels}, 2] coordinates, got {xy.shape}"
        )
        channel = jnp.arange(channels)
        gather = lambda y, x: features[(*batch, y.astype(jnp.int32), x.astype(jnp.int32), channel)]
        weight = lambda w: w
    else:
        gather = lambda y, x: features[(*batch, y.astype(jnp.int32), x.astype(jnp.int32))]
        weight = lambda w: w[..., None]
    # Term order and the product order (y weight first) follow the official sampler.
    return (
        gather(y0, x0) * weight(wy0) * weight(wx0)
        + gather(y0, x1) * weight(wy0) * weight(wx1)
        + gather(y1, x0) * weight(wy1) * weight(wx0)
        + gather(y1, x1) * weight(wy1) * weight(wx1)
    )


def _crop_length(size, half_size: int) -> int:
    """The crop length of a window: its corners' span, or the map's size if smaller. A size
    that is not known when tracing (an exported program's symbolic size) takes the span, from a
    map padded by it (`sample_windows`)."""
    span = 2 * half_size + 4
    return min(span, size) if isinstance(size, int) else span


def _window_axis(center, size: int, half_size: int, mode: str):
    """One axis of a unit-spaced window: crop start, crop length, corner indices relative to
    the crop and their weights, each [A] (A = 2 * half_size + 1)."""
    steps = jnp.arange(-half_size, half_size + 1, dtype=jnp.float32)
    low, high, low_weight, high_weight = _corners(center + steps, size, mode)
    # The corners span at most A + 2 pixels (A + 1, and one more where float rounding of
    # center + step crosses an integer); the crop starts at the first one.
    length = _crop_length(size, half_size)
    start = jnp.clip(low[0], 0, jnp.maximum(size - length, 0)).astype(jnp.int32)
    relative = lambda index: index.astype(jnp.int32) - start
    return start, length, relative(low), relative(high), low_weight, high_weight


def sample_windows(features, centers, half_size: int, *, mode: str = "reference", image=None):
    """Channel c of a channels-last map sampled on the unit-spaced square window around its own
    center: the values of `sample(features, centers + offsets, per_channel=True)` for the
    offsets of `decode.window_offsets`, bit for bit, from one crop per window.

    Args:
      features: [H, W, C] map; with `image`, a batch of maps [B, H, W, C].
      centers: [N, C, 2] (x, y) window centers in pixels of `features`.
      half_size: the window has A = 2 * half_size + 1 points per side.
      mode: one of SAMPLING_MODES.
      image: optional [N] int, the map of the batch each window set samples.

    Returns:
      [N, C, A, A]; entry [n, c, u, v] samples channel c at centers[n, c] + (v - half, u - half).
    """
    maps = features if image is not None else features[None]
    image = image if image is not None else jnp.zeros(centers.shape[0], jnp.int32)
    height, width = maps.shape[1:3]
    if not (isinstance(height, int) and isinstance(width, int)):
        # The crops must fit whatever the size: the pad is never sampled (the corners are
        # clamped into the map), so the values are the same.
        span = _crop_length(None, half_size)
        maps = jnp.pad(maps, ((0, 0), (0, span), (0, span), (0, 0)))

    def window(index, channel, center):
        y_start, y_length, y0, y1, wy0, wy1 = _window_axis(center[1], height, half_size, mode)
        x_start, x_length, x0, x1, wx0, wx1 = _window_axis(center[0], width, half_size, mode)
        crop = jax.lax.dynamic_slice(
            maps, (index, y_start, x_start, channel), (1, y_length, x_length, 1)
        )[0, :, :, 0]
        rows0, rows1 = crop[y0], crop[y1]
        wy0, wy1, wx0, wx1 = wy0[:, None], wy1[:, None], wx0[None, :], wx1[None, :]
        # Term and product order of `sample`, so that the sums round the same way.
        return (
            rows0[:, x0] * wy0 * wx0
            + rows0[:, x1] * wy0 * wx1
            + rows1[:, x0] * wy1 * wx0
            + rows1[:, x1] * wy1 * wx1
        )

    channels = jnp.arange(centers.shape[1])
    per_channel = jax.vmap(window, in_axes=(None, 0, 0))
    return jax.vmap(per_channel, in_axes=(0, None, 0))(image, channels, centers)
