"""LOGO-CA, local-global contextual adaptation (paper Sec. 3.1, Eqs. 1-2; docs/design.md).

Each candidate's keypoint attraction maps (KAMs, learned from its local KEMs by the CMP) are used
as per-instance, per-joint dynamic kernels: the global heatmaps are sampled on an A x A window
around every initial keypoint (the global KEMs), reweighed by a Gaussian prior and convolved with
that joint's KAM. The top-2 positions of each refined map are blended into the final keypoint.

`LogoCaSettings` holds the static settings that test time and training share. Everything here
works on one image; callers vmap over the batch. The dynamic convolution is written for one
instance (`kam_convolution`) and mapped over instances (`kam_convolution_instances`).
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp

from logocap_jax.decode import window_offsets
from logocap_jax.sampling import SAMPLING_MODES, sample_windows

DYNAMIC_CONV_MODES = ("shift_add", "grouped", "auto")
# Weight of the best position in the top-2 blend of the refined heatmaps (paper: lambda = 0.75).
TOP1_WEIGHT = 0.75
# The official code zeroes reweighing weights below this; a no-op for the 97 px window, sigma 16.
GAUSSIAN_CUTOFF = 1e-4


@dataclasses.dataclass(frozen=True)
class LogoCaSettings:
    """Static settings of the local and global KEMs and of LOGO-CA (hashable, for jit).

    Attributes:
      local_half_size: r of the local KEM window, S = 2r + 1 (paper Table 6).
      global_half_size: half extent of the global KEM window, A = 2 * half + 1 (97 px).
      global_sigma: sigma of the Gaussian reweighing, input pixels (paper Eq. 1: (A - 1) / 6).
      reweigh: apply the Gaussian reweighing (ablation switch, paper Table 5).
      sampling: bilinear sampling mode of both KEMs, one of `sampling.SAMPLING_MODES`.
      dynamic_conv: implementation of the KAM convolution, see `kam_convolution`.
    """

    local_half_size: int = 5
    global_half_size: int = 48
    global_sigma: float = 16.0
    reweigh: bool = True
    sampling: str = "reference"
    dynamic_conv: str = "auto"

    def __post_init__(self):
        if self.local_half_size < 1 or self.global_half_size < 1:
            raise ValueError(
                f"window half sizes must be at least 1, got local_half_size="
                f"{self.local_half_size}, global_half_size={self.global_half_size}"
            )
        if self.global_sigma <= 0:
            raise ValueError(f"global_sigma must be positive, got {self.global_sigma}")
        if self.sampling not in SAMPLING_MODES:
            raise ValueError(f"sampling must be one of {SAMPLING_MODES}, got {self.sampling!r}")
        if self.dynamic_conv not in DYNAMIC_CONV_MODES:
            raise ValueError(
                f"dynamic_conv must be one of {DYNAMIC_CONV_MODES}, got {self.dynamic_conv!r}"
            )


def gaussian_window(half_size: int, sigma: float):
    """[A, A] Gaussian reweighing prior, A = 2 * half_size + 1, centered, peak 1."""
    dx, dy = window_offsets(half_size)
    window = jnp.exp(-(dx**2 + dy**2) / (2 * sigma * sigma))
    return window * (window >= GAUSSIAN_CUTOFF)


def global_kems(heatmaps, poses, half_size: int, *, mode: str, image=None):
    """Samples each joint's heatmap on a unit-spaced window around its initial keypoint.

    Args:
      heatmaps: [H, W, >=K] input-resolution heatmaps; channel k is sampled for joint k. With
        `image`, the batch's [B, H, W, >=K].
      poses: [N, K, 2] initial keypoints in input pixels.
      half_size: the window has A = 2 * half_size + 1 points per side.
      mode: sampling mode.
      image: optional [N] int, the image of each instance.

    Returns:
      [N, K, A, A]; entry [n, k, u, v] samples joint k at pose + (v - half, u - half).
    """
    num_joints = poses.shape[1]
    return sample_windows(heatmaps[..., :num_joints], poses, half_size, mode=mode, image=image)


def _shift_add(heatmaps, kernels):
    size = kernels.shape[-1]
    extent = heatmaps.shape[-1]
    padded = jnp.pad(heatmaps, ((0, 0), (size // 2, size // 2), (size // 2, size // 2)))
    total = jnp.zeros_like(heatmaps)
    for i in range(size):
        for j in range(size):
            row, col = size - 1 - i, size - 1 - j
            tap = padded[:, row : row + extent, col : col + extent]
            total = total + kernels[:, i, j, None, None] * tap
    return total


@jax.custom_vjp
def _convolve_shift_add(heatmaps, kernels):
    """`_shift_add` with a hand-written gradient: differentiated as it is written, each of the
    S^2 kernel taps got its own reduction over the A x A window, S^2 small programs that took
    longer than the rest of LOGO-CA's backward pass on CPU."""
    return _shift_add(heatmaps, kernels)


def _convolve_shift_add_forward(heatmaps, kernels):
    return _shift_add(heatmaps, kernels), (heatmaps, kernels)


def _convolve_shift_add_backward(residuals, cotangent):
    heatmaps, kernels = residuals
    size, extent = kernels.shape[-1], heatmaps.shape[-1]
    width = extent + size - 1
    # The transpose of a convolution is the convolution with the flipped kernel.
    heatmaps_grad = _shift_add(cotangent, kernels[:, ::-1, ::-1])
    # kernels_grad[k, S-1-r, S-1-c] = sum_uv cotangent[k, u, v] * padded[k, u + r, v + c]: for
    # each row offset r one matrix product over u, whose entries (v, v + c) are summed along
    # the diagonals c (flat index v * (width + 1) + c).
    padded = jnp.pad(heatmaps, ((0, 0), (size // 2, size // 2), (size // 2, size // 2)))
    rows = jnp.stack([padded[:, r : r + extent, :] for r in range(size)], axis=1)
    products = jnp.einsum("kuv,kruw->krvw", cotangent, rows).reshape(-1, size, extent * width)
    products = jnp.pad(products, ((0, 0), (0, 0), (0, extent)))
    diagonals = products.reshape(-1, size, extent, width + 1)[..., :size].sum(axis=2)
    return heatmaps_grad, diagonals[:, ::-1, ::-1]


_convolve_shift_add.defvjp(_convolve_shift_add_forward, _convolve_shift_add_backward)


def _convolve_grouped(heatmaps, kernels):
    size = kernels.shape[-1]
    flipped = kernels[:, None, ::-1, ::-1]
    out = jax.lax.conv_general_dilated(
        heatmaps[None],
        flipped,
        (1, 1),
        [(size // 2, size // 2)] * 2,
        dimension_numbers=("NCHW", "OIHW", "NCHW"),
        feature_group_count=kernels.shape[0],
    )
    return out[0]


def _resolve(mode: str) -> str:
    if mode == "auto":
        return "shift_add" if jax.default_backend() == "cpu" else "grouped"
    if mode not in DYNAMIC_CONV_MODES:
        raise ValueError(
            f"Unknown dynamic convolution mode {mode!r}; expected one of {DYNAMIC_CONV_MODES}"
        )
    return mode


def kam_convolution(heatmaps, kams, *, mode: str = "auto"):
    """The dynamic convolution of LOGO-CA (paper Eq. 2) for one instance: each joint's map
    convolved with its KAM / S^2.

    A true convolution with zero padding: out[k, u, v] = sum_ij kam[k, i, j] / S^2 *
    heatmaps[k, u - (i - S//2), v - (j - S//2)].

    Args:
      heatmaps: [K, A, A] reweighed global KEMs.
      kams: [K, S, S] keypoint attraction maps.
      mode: 'shift_add' (S^2 shifted multiply-adds), 'grouped' (one grouped convolution), or
        'auto': shift_add on CPU, where XLA's grouped convolution is 10-25x slower, else grouped.

    Returns:
      [K, A, A] refined heatmaps.
    """
    kernels = kams / (kams.shape[-1] * kams.shape[-2])
    if _resolve(mode) == "shift_add":
        return _convolve_shift_add(heatmaps, kernels)
    return _convolve_grouped(heatmaps, kernels)


def kam_convolution_instances(heatmaps, kams, *, mode: str = "auto"):
    """`kam_convolution` over instances: [N, K, A, A], [N, K, S, S] -> [N, K, A, A].

    The shift-add form runs as a loop over instances: XLA:CPU would otherwise fuse the
    producer of `heatmaps` (the global KEM gathers) into every one of the S^2 shifted reads,
    measured 3-5x slower. The grouped convolution is vmapped into one N*K-group convolution.
    """
    mode = _resolve(mode)
    if mode == "shift_add":
        return jax.lax.map(lambda pair: kam_convolution(*pair, mode=mode), (heatmaps, kams))
    return jax.vmap(functools.partial(kam_convolution, mode=mode))(heatmaps, kams)


def refined_heatmaps(heatmaps, poses, kams, settings: LogoCaSettings, *, image=None):
    """One image's LOGO-CA: global KEMs, Gaussian reweighing, KAM convolution (Eqs. 1-2).

    Args:
      heatmaps: [H, W, >=K] input-resolution heatmaps; with `image`, the batch's
        [B, H, W, >=K], so that instances of several images are refined together.
      poses: [N, K, 2] initial keypoints (window centers), input pixels.
      kams: [N, S, S, K] keypoint attraction maps.
      settings: window, reweighing, sampling and convolution settings.
      image: optional [N] int, the image of each instance.

    Returns:
      [N, K, A, A] refined heatmaps.
    """
    windows = global_kems(
        heatmaps, poses, settings.global_half_size, mode=settings.sampling, image=image
    )
    if settings.reweigh:
        windows = windows * gaussian_window(settings.global_half_size, settings.global_sigma)
    kernels = jnp.transpose(kams, (0, 3, 1, 2))
    return kam_convolution_instances(windows, kernels, mode=settings.dynamic_conv)


def top2_blend(refined, poses, half_size: int):
    """Keypoints at the 0.75 / 0.25 blend of the two best positions of each refined map.

    Args:
      refined: [N, K, A, A] refined heatmaps.
      poses: [N, K, 2] window centers in input pixels.
      half_size: A = 2 * half_size + 1.

    Returns:
      [N, K, 3] (x, y, value) in input pixels.
    """
    extent = refined.shape[-1]
    # The barriers keep XLA:CPU from rewriting this top-k into a full sort fused with its
    # producer and consumers, measured 50-80x slower (1.3 s against 15 ms for 30 x 17 maps).
    flat = jax.lax.optimization_barrier(refined.reshape(*refined.shape[:2], -1))
    values, index = jax.lax.optimization_barrier(jax.lax.top_k(flat, 2))
    weights = jnp.array([TOP1_WEIGHT, 1 - TOP1_WEIGHT], jnp.float32)
    blend = lambda v: v[..., 0] * weights[0] + v[..., 1] * weights[1]
    dx = blend((index % extent).astype(jnp.float32)) - half_size
    dy = blend((index // extent).astype(jnp.float32)) - half_size
    return jnp.stack([poses[..., 0] + dx, poses[..., 1] + dy, blend(values)], axis=-1)
