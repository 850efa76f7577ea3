"""The training-time model path of LOGO-CAP (spec 8.6), one pure static-shaped function.

    images --backbone + heads (batch statistics)--> heatmaps, offsets, embeddings
      --x4 upsampling--> center NMS and initial poses on the *detached* maps, N slots per image
      --local meshes--> OKS matching with the ground truth, instance selection mask [B, N]
      --embedding sampled on every slot's mesh--> CMP (statistics over selected slots), no clamp
      --global KEMs on the non-detached heatmaps x Gaussian--> LOGO-CA with KAM / S^2
      + Gaussian target maps around the assigned ground-truth keypoints

Every slot is computed; `selected` says which ones the official code keeps, and the losses
(`logocap_jax.losses`) weigh the others out.
"""

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from logocap_jax import decode, oks, refine
from logocap_jax.models import LogoCap
from logocap_jax.pipeline import DecodeSettings, sample_local_features
from logocap_jax.sampling import SAMPLING_MODES


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """Static settings of the training forward pass.

    Attributes:
      num_centers: N, candidate slots per image (no score threshold in training).
      local_half_size: r of the local KEM window, S = 2r + 1.
      global_half_size: half extent of the global KEM window, A = 2 * half + 1.
      global_sigma: sigma of the Gaussian reweighing, input pixels.
      reweigh: apply the Gaussian reweighing (ablation switch, as at test time).
      target_sigma: sigma of the refined-heatmap targets, input pixels (the official code
        hard-codes 4).
      min_oks: a slot is selected when its best person OKS over the mesh reaches this.
      sampling: bilinear sampling mode, see `logocap_jax.sampling`.
      dynamic_conv: KAM convolution implementation, see `refine.attract`.
      max_instances: M, slots per image carried through the CMP and LOGO-CA: the selected
        slots first, in slot order. 0 keeps all N slots (the official behaviour); a smaller M
        saves compute and drops the selected slots beyond the first M.
    """

    num_centers: int = 30
    local_half_size: int = 5
    global_half_size: int = 48
    global_sigma: float = 16.0
    reweigh: bool = True
    target_sigma: float = 4.0
    min_oks: float = oks.MIN_OKS
    sampling: str = "reference"
    dynamic_conv: str = "auto"
    max_instances: int = 0

    def __post_init__(self):
        if self.sampling not in SAMPLING_MODES:
            raise ValueError(f"sampling must be one of {SAMPLING_MODES}, got {self.sampling!r}")
        if self.dynamic_conv not in refine.DYNAMIC_CONV_MODES:
            raise ValueError(
                f"dynamic_conv must be one of {refine.DYNAMIC_CONV_MODES}, "
                f"got {self.dynamic_conv!r}"
            )

    @classmethod
    def from_decode(cls, settings: DecodeSettings, **overrides) -> "TrainSettings":
        """The fields shared with the test-time `DecodeSettings`, plus `overrides`."""
        shared = {
            f.name: getattr(settings, f.name)
            for f in dataclasses.fields(cls)
            if hasattr(settings, f.name)
        }
        return cls(**{**shared, **overrides})


class TrainingOutputs(NamedTuple):
    """What the losses need, for every slot of every image (B images; N slots, or the M of
    `TrainSettings.max_instances`).

    Attributes:
      heatmaps: [B, h, w, K + 1] predicted heatmaps on the stride-4 grid.
      offsets: [B, h, w, 2K] predicted offsets.
      centers: [B, N, 3] decoded centers (x, y, score), input pixels.
      initial_poses: [B, N, K, 2] center-offset poses, input pixels.
      oks_joints: [B, N, S, S, K] per-joint OKS of each mesh point with the assigned person.
      oks_person: [B, N, S, S] person OKS of each mesh point.
      assignment: [B, N] index of the assigned ground-truth person.
      pose_gt: [B, N, K, 2] assigned ground-truth keypoints, input pixels.
      selected: [B, N] bool, the official training instances.
      kams: [B, N, S, S, K] unclamped KAMs.
      refined: [B, N, K, A, A] LOGO-CA refined heatmaps.
      refined_targets: [B, N, K, A, A] Gaussians around pose_gt on the same windows.
    """

    heatmaps: Any
    offsets: Any
    centers: Any
    initial_poses: Any
    oks_joints: Any
    oks_person: Any
    assignment: Any
    pose_gt: Any
    selected: Any
    kams: Any
    refined: Any
    refined_targets: Any


def _global_window(half_size: int):
    """[A, A] x and y shifts of the global window (x along columns)."""
    steps = jnp.arange(-half_size, half_size + 1, dtype=jnp.float32)
    yy, xx = jnp.meshgrid(steps, steps, indexing="ij")
    return xx, yy


def refined_heatmap_targets(poses, pose_gt, half_size: int, sigma: float):
    """Gaussians around the ground truth sampled on the global windows.

    Args:
      poses: [..., K, 2] window centers (initial keypoints), input pixels.
      pose_gt: [..., K, 2] ground-truth keypoints, input pixels.

    Returns:
      [..., K, A, A]; entry [k, u, v] =
      exp(-|pose_k + (v - half, u - half) - gt_k|^2 / (2 sigma^2)).
    """
    xx, yy = _global_window(half_size)
    dx = xx + poses[..., 0, None, None] - pose_gt[..., 0, None, None]
    dy = yy + poses[..., 1, None, None] - pose_gt[..., 1, None, None]
    return jnp.exp(-(dx**2 + dy**2) / (2 * sigma * sigma))


def selected_slots(selected, count: int):
    """[B, count] slot indices: the selected slots in slot order, then unselected ones."""
    num_slots = selected.shape[1]
    # Larger keys for selected slots, and among them for earlier ones; top_k breaks the ties of
    # the unselected (key 0) by lower index.
    keys = jnp.where(selected, num_slots - jnp.arange(num_slots), 0)
    return jax.lax.top_k(keys, count)[1]


def _take_slots(values, slots):
    index = slots.reshape(slots.shape + (1,) * (values.ndim - 2))
    return jnp.take_along_axis(values, index, axis=1)


def _match_batch(mesh, batch: Mapping[str, Any], input_width: int):
    match_fn = functools.partial(oks.match_candidates, input_width=input_width)
    return jax.vmap(match_fn)(
        mesh,
        batch["keypoints"],
        batch["areas"],
        batch["valid"],
        batch["transform"],
        batch["transform_inv"],
        batch["flip"],
    )


def training_outputs(
    model: LogoCap,
    variables,
    batch: Mapping[str, Any],
    *,
    settings: TrainSettings = TrainSettings(),
):
    """The training forward pass (spec 8.6), without the losses.

    Args:
      model: the network.
      variables: {'params', 'batch_stats'}.
      batch: 'images' [B, H, W, 3] normalised RGB; the padded ground truth of
        `data.targets.oks_ground_truth`, batched: 'keypoints' [B, G, K, 3] and 'areas' [B, G] in
        original-image pixels, 'valid' [B, G], 'transform' and 'transform_inv' [B, 3, 3],
        'flip' [B].
      settings: static settings.

    Returns:
      (`TrainingOutputs`, new batch_stats): BatchNorm running statistics updated with this
      batch's statistics (the CMP's with the selected slots only).
    """
    images = batch["images"]
    assert images.ndim == 4, f"Expected [B, H, W, 3] images, got {images.shape}"
    _, height, width, _ = images.shape
    predictions, state = model.apply(variables, images, train=True, mutable=["batch_stats"])
    heatmaps_hr = decode.upsample(predictions.heatmaps, height, width)
    centers = decode.center_nms(jax.lax.stop_gradient(heatmaps_hr[..., -1]), settings.num_centers)
    poses = decode.initial_poses(centers, jax.lax.stop_gradient(predictions.offsets))
    mesh = decode.local_mesh(poses, settings.local_half_size)
    match, pose_gt = _match_batch(mesh, batch, width)
    selected = decode.valid_centers(match.person.max(axis=(2, 3)), settings.min_oks)
    if 0 < settings.max_instances < settings.num_centers:
        slots = selected_slots(selected, settings.max_instances)
        centers, poses, mesh, match, pose_gt, selected = jax.tree_util.tree_map(
            lambda x: _take_slots(x, slots), (centers, poses, mesh, match, pose_gt, selected)
        )

    features = sample_local_features(predictions.embeddings, mesh, mode=settings.sampling)
    kams, state = model.apply(
        {**variables, **state},
        features,
        train=True,
        mask=selected.reshape(-1),
        method=LogoCap.attraction_maps,
        mutable=["batch_stats"],
    )
    kams = kams.reshape(mesh.shape[:-1])
    refine_fn = functools.partial(
        refine.logo_ca,
        half_size=settings.global_half_size,
        sigma=settings.global_sigma,
        reweigh=settings.reweigh,
        sampling=settings.sampling,
        dynamic_conv=settings.dynamic_conv,
    )
    refined = jax.vmap(refine_fn)(heatmaps_hr, poses, kams)
    targets = refined_heatmap_targets(
        poses, pose_gt, settings.global_half_size, settings.target_sigma
    )
    outputs = TrainingOutputs(
        predictions.heatmaps,
        predictions.offsets,
        centers,
        poses,
        match.joints,
        match.person,
        match.assignment,
        pose_gt,
        selected,
        kams,
        refined,
        targets,
    )
    return outputs, state["batch_stats"]
