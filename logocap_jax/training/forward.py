"""The training-time model path of LOGO-CAP (paper Sec. 3.2), one pure static-shaped function.

    images --backbone + heads (batch statistics)--> heatmaps, offsets, embeddings
      --x4 upsampling--> center NMS and initial poses on the *detached* maps, N slots per image
      --local meshes--> OKS matching with the ground truth, instance selection mask [B, N]
      --embedding sampled on every slot's mesh--> CMP (statistics over selected slots), no clamp
      --global KEMs on the non-detached heatmaps x Gaussian--> LOGO-CA with KAM / S^2
      + Gaussian target maps around the assigned ground-truth keypoints

Every slot is computed; `selected` says which ones the official code keeps, and the losses
(`training.losses`) weigh the others out. Two static budgets bound what the CMP and LOGO-CA
compute, both "select first, then compute" (docs/design.md §6.5): `max_instances`
slots per image, or `instance_budget` instances per batch, the selected ones first.
"""

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from logocap_jax import decode, logo_ca, oks
from logocap_jax.inference.pipeline import sample_local_features
from logocap_jax.logo_ca import LogoCaSettings
from logocap_jax.models import LogoCap


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """Static settings of the training forward pass.

    Attributes:
      num_centers: N, candidate slots per image (no score threshold in training).
      target_sigma: sigma of the refined-heatmap targets, input pixels (the official code
        hard-codes 4).
      min_oks: a slot is selected when its best person OKS over the mesh reaches this.
      max_instances: M, slots per image carried through the CMP and LOGO-CA: the selected
        slots first, in slot order. 0 keeps all N slots (the official behaviour); a smaller M
        saves compute and drops the selected slots beyond the first M.
      logo_ca: the KEM windows, reweighing, sampling and dynamic convolution, shared with the
        test-time pipeline.
    """

    num_centers: int = 30
    target_sigma: float = 4.0
    min_oks: float = oks.MIN_OKS
    max_instances: int = 0
    instance_budget: int = 0
    logo_ca: LogoCaSettings = LogoCaSettings()

    def __post_init__(self):
        if not 0 <= self.max_instances:
            raise ValueError(f"max_instances must be >= 0 (0: all slots), got {self.max_instances}")
        if not 0 <= self.instance_budget:
            raise ValueError(f"instance_budget must be >= 0 (0: off), got {self.instance_budget}")


class TrainingOutputs(NamedTuple):
    """What the losses need, for every slot of every image (B images; N slots, or the M of
    `TrainSettings.max_instances`). With `TrainSettings.instance_budget` T, the per-slot fields
    lead with [T] (the batch's compacted instances) instead of [B, N].

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


def refined_heatmap_targets(poses, pose_gt, half_size: int, sigma: float):
    """Gaussians around the ground truth sampled on the global windows.

    Args:
      poses: [..., K, 2] window centers (initial keypoints), input pixels.
      pose_gt: [..., K, 2] ground-truth keypoints, input pixels.

    Returns:
      [..., K, A, A]; entry [k, u, v] =
      exp(-|pose_k + (v - half, u - half) - gt_k|^2 / (2 sigma^2)).
    """
    xx, yy = decode.window_offsets(half_size)
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
    """The training forward pass (paper Sec. 3.2), without the losses.

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
    # The named scopes mark the stages in the compiled program (logocap_jax.planning reports
    # the memory each one holds); the model's own modules are named by Flax.
    predictions, state = model.apply(variables, images, train=True, mutable=["batch_stats"])
    with jax.named_scope("local_kems"):
        heatmaps_hr = decode.upsample(predictions.heatmaps, height, width)
        centers = decode.center_nms(
            jax.lax.stop_gradient(heatmaps_hr[..., -1]), settings.num_centers
        )
        poses = decode.initial_poses(centers, jax.lax.stop_gradient(predictions.offsets))
        mesh = decode.local_mesh(poses, settings.logo_ca.local_half_size)
        match, pose_gt = _match_batch(mesh, batch, width)
        selected = decode.valid_centers(match.person.max(axis=(2, 3)), settings.min_oks)
    if 0 < settings.max_instances < settings.num_centers:
        slots = selected_slots(selected, settings.max_instances)
        centers, poses, mesh, match, pose_gt, selected = jax.tree_util.tree_map(
            lambda x: _take_slots(x, slots), (centers, poses, mesh, match, pose_gt, selected)
        )
    image = jnp.broadcast_to(jnp.arange(selected.shape[0])[:, None], selected.shape)
    if settings.instance_budget:
        flat = selected_slots(selected.reshape(1, -1), settings.instance_budget)[0]
        centers, poses, mesh, match, pose_gt, selected, image = jax.tree_util.tree_map(
            lambda x: x.reshape(-1, *x.shape[2:])[flat],
            (centers, poses, mesh, match, pose_gt, selected, image),
        )

    # Instances of all images in one flat axis, each sampling its own image's maps.
    instances = selected.size
    flat_image = image.reshape(-1)
    with jax.named_scope("cmp"):
        features = sample_local_features(
            predictions.embeddings, mesh, mode=settings.logo_ca.sampling, image=image
        )
        kams, state = model.apply(
            {**variables, **state},
            features,
            train=True,
            mask=selected.reshape(-1),
            method=LogoCap.attraction_maps,
            mutable=["batch_stats"],
        )
    with jax.named_scope("logo_ca"):
        refined = logo_ca.refined_heatmaps(
            heatmaps_hr,
            poses.reshape(instances, *poses.shape[-2:]),
            kams,
            settings.logo_ca,
            image=flat_image,
        )
        kams = kams.reshape(mesh.shape[:-1])
        refined = refined.reshape(*selected.shape, *refined.shape[1:])
        targets = refined_heatmap_targets(
            poses, pose_gt, settings.logo_ca.global_half_size, settings.target_sigma
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
