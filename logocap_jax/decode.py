"""From head outputs to candidate instances and their local KEMs (paper Sec. 3.1, Algorithm 1).

All functions are pure, batched and static-shaped: every image gets `num_centers` candidate
slots, and a validity mask replaces the official boolean indexing.
"""

import jax
import jax.numpy as jnp
import numpy as np

from logocap_jax.keypoints import COCO_SIGMAS, FLIP_INDEX, FLIP_INDEX_WITH_CENTER, STRIDE
from logocap_jax.models.layers import upsample_bilinear


def flip_merge(heatmaps, offsets):
    """Averages the predictions of images and their horizontal flips, on the stride-4 grid.

    Args:
      heatmaps: [2B, h, w, K + 1]; images [:B], their flips [B:].
      offsets: [2B, h, w, 2K].

    Returns:
      ([B, h, w, K + 1], [B, h, w, 2K]) merged heatmaps and offsets.
    """
    batch = heatmaps.shape[0] // 2
    flipped = heatmaps[batch:, :, ::-1][..., np.array(FLIP_INDEX_WITH_CENTER)]
    merged_heatmaps = (heatmaps[:batch] + flipped) / 2
    _, h, w, channels = offsets.shape
    flipped = offsets[batch:, :, ::-1].reshape(batch, h, w, channels // 2, 2)
    flipped = flipped[..., np.array(FLIP_INDEX), :] * jnp.array([-1.0, 1.0])
    merged_offsets = (offsets[:batch] + flipped.reshape(batch, h, w, channels)) / 2
    return merged_heatmaps, merged_offsets


def upsample(maps, height: int, width: int):
    """Bilinear resize, half-pixel centers (align_corners=False): [B, h, w, C] -> [B, H, W, C].

    H / h = W / w must be the same integer (the network stride).
    """
    factor = height // maps.shape[1]
    if (height, width) != (factor * maps.shape[1], factor * maps.shape[2]):
        raise ValueError(f"Cannot upsample {maps.shape} to {(height, width)} by one integer factor")
    return upsample_bilinear(maps, factor)


def center_nms(center_maps, num_centers: int):
    """Top-scoring local maxima of the input-resolution center heatmap (3x3 window).

    Args:
      center_maps: [B, H, W] center heatmap.
      num_centers: N, slots per image.

    Returns:
      [B, N, 3] (x, y, score) in input pixels, sorted by score. When fewer than N positive peaks
      exist the remaining slots hold zero-score pixels; ties go to the lower flat index.
    """
    pooled = jax.lax.reduce_window(
        jnp.maximum(center_maps, 0),
        -jnp.inf,
        jax.lax.max,
        (1, 3, 3),
        (1, 1, 1),
        ((0, 0), (1, 1), (1, 1)),
    )
    # Exact equality with the unclamped map: negative pixels are never peaks.
    peaks = jnp.where(pooled == center_maps, center_maps, 0.0)
    width = center_maps.shape[2]
    # See logo_ca.top2_blend for the barrier.
    scores, index = jax.lax.optimization_barrier(
        jax.lax.top_k(peaks.reshape(peaks.shape[0], -1), num_centers)
    )
    xy = jnp.stack([index % width, index // width], axis=-1).astype(jnp.float32)
    return jnp.concatenate([xy, scores[..., None]], axis=-1)


def initial_poses(centers, offsets, stride: int = STRIDE):
    """Center-offset poses: center minus the offsets read at the center's grid cell.

    Args:
      centers: [B, N, 3] (x, y, score) in input pixels.
      offsets: [B, h, w, 2K] in grid pixels.

    Returns:
      [B, N, K, 2] keypoints in input pixels.
    """
    batch, _, width, channels = offsets.shape
    grid_xy = centers[..., :2] / stride
    cell = jnp.trunc(grid_xy).astype(jnp.int32)
    values = offsets[jnp.arange(batch)[:, None], cell[..., 1], cell[..., 0]]
    values = values.reshape(*values.shape[:2], channels // 2, 2)
    return (grid_xy[:, :, None, :] - values) * stride


def keypoint_scales():
    """Per-keypoint window spacing sigma_k / min(sigma), float32 as in the official code."""
    return COCO_SIGMAS / COCO_SIGMAS.min()


def window_offsets(half_size: int):
    """Integer offsets of a square window, the grid of every KEM: (dx, dy), each [S, S] float32.

    S = 2 * half_size + 1; entry [i, j] is (j - half_size, i - half_size): rows run along y.
    """
    steps = jnp.arange(-half_size, half_size + 1, dtype=jnp.float32)
    dy, dx = jnp.meshgrid(steps, steps, indexing="ij")
    return dx, dy


def local_mesh(poses, half_size: int):
    """Local keypoint expansion meshes, spaced sigma_k / min(sigma) input pixels (Algorithm 1).

    Args:
      poses: [..., K, 2] keypoints in input pixels.
      half_size: r; the window has S = 2r + 1 points per side.

    Returns:
      [..., S, S, K, 2]: entry [..., i, j, k] = pose_k + ((j - r) * s_k, (i - r) * s_k).
    """
    dx, dy = window_offsets(half_size)
    scales = jnp.asarray(keypoint_scales())
    shift = jnp.stack([dx[..., None] * scales, dy[..., None] * scales], axis=-1)
    return poses[..., None, None, :, :] + shift


def valid_centers(scores, threshold: float):
    """Candidates whose center score reaches `threshold`; slot 0 when none does. [B, N] bool."""
    valid = scores >= threshold
    first = jnp.zeros_like(valid).at[:, 0].set(True)
    return jnp.where(valid.any(axis=1, keepdims=True), valid, first)
