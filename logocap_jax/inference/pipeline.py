"""The test-time pipeline from normalised images to fixed pose slots (paper Sec. 3.1).

Four pure stages, the columns of the paper's Table 4, composed by `predict_poses`:

  network_stage   backbone + heads, flip merge, x4 upsampling of the heatmaps
  local_kems      center NMS, center-offset initial poses, sigma-scaled local meshes
  local_kams      embedding sampled on the meshes, CMP, clamp to [0, 1]
  global_kams     global KEMs, Gaussian reweighing, KAM dynamic convolution, top-2, scores

Every image gets `num_centers` slots; `valid` marks the slots the official code would keep.
Host-side back-projection, pose NMS and JSON writing live in `postprocess`.
"""

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from logocap_jax import compile_options, decode, logo_ca
from logocap_jax.keypoints import STRIDE
from logocap_jax.logo_ca import LogoCaSettings
from logocap_jax.models import LogoCap
from logocap_jax.sampling import sample

ADAPTATION_LEVELS = ("none", "partial", "full")


@dataclasses.dataclass(frozen=True)
class DecodeSettings:
    """Static settings of the test-time pipeline (hashable: jit recompiles when they change).

    Attributes:
      flip_test: average the predictions of the image and its mirror.
      num_centers: N, candidate slots per image.
      center_threshold: minimum center score of a kept candidate.
      adaptation: 'full' (LOGO-CA), 'partial' (KAM argmax on the local mesh) or 'none'
        (center-offset poses), the official refine modes (paper Tables 5 and 7).
      scales: test scales; with several, the input-resolution heatmaps of the image resized by
        each scale (to a multiple of 32) are averaged, while offsets and embeddings come from
        scale 1, which must be listed. Not in the official pipeline (its multi-scale path is
        broken, docs/design.md).
      logo_ca: the KEM windows, reweighing, sampling and dynamic convolution, shared with
        training.
    """

    flip_test: bool = True
    num_centers: int = 30
    center_threshold: float = 0.01
    adaptation: str = "full"
    scales: tuple = (1.0,)
    logo_ca: LogoCaSettings = LogoCaSettings()

    def __post_init__(self):
        if 1.0 not in self.scales:
            raise ValueError(f"scales must include 1.0 (offsets and embeddings), got {self.scales}")
        if self.adaptation not in ADAPTATION_LEVELS:
            raise ValueError(
                f"adaptation must be one of {ADAPTATION_LEVELS}, got {self.adaptation!r}"
            )


class NetworkOutputs(NamedTuple):
    """Attributes: heatmaps [B, H, W, K + 1] at input resolution; offsets [B, h, w, 2K];
    embeddings [B, h, w, C] of the unflipped images."""

    heatmaps: Any
    offsets: Any
    embeddings: Any


class Candidates(NamedTuple):
    """Attributes: centers [B, N, 3] (x, y, score); poses [B, N, K, 2] initial keypoints;
    mesh [B, N, S, S, K, 2] local KEM coordinates, all in input pixels."""

    centers: Any
    poses: Any
    mesh: Any


class PoseOutputs(NamedTuple):
    """Attributes: poses [B, N, K, 3] (x, y, score) in input pixels; scores [B, N] pose scores;
    valid [B, N] slots kept by the official pipeline; centers [B, N, 3]; initial_poses
    [B, N, K, 2]; mesh [B, N, S, S, K, 2]; kams [B, N, S, S, K]; refined [B, N, K, A, A]
    (zeros unless adaptation is 'full')."""

    poses: Any
    scores: Any
    valid: Any
    centers: Any
    initial_poses: Any
    mesh: Any
    kams: Any
    refined: Any


def _heads(model: LogoCap, variables, images, flip_test: bool):
    """Heatmaps, offsets (flip-merged when flip_test) and embeddings of the unflipped images."""
    inputs = jnp.concatenate([images, images[:, :, ::-1]]) if flip_test else images
    predictions = model.apply(variables, inputs, train=False)
    heatmaps, offsets = predictions.heatmaps, predictions.offsets
    if flip_test:
        heatmaps, offsets = decode.flip_merge(heatmaps, offsets)
    return heatmaps, offsets, predictions.embeddings[: images.shape[0]]


def network_stage(model: LogoCap, variables, images, settings: DecodeSettings) -> NetworkOutputs:
    """Backbone and heads (with flip test), heatmaps upsampled x4 to the input size.

    Args:
      images: [B, H, W, 3] normalised RGB, H and W multiples of 32.
    """
    batch, height, width, channels = images.shape
    heatmaps, offsets, embeddings = _heads(model, variables, images, settings.flip_test)
    heatmaps = decode.upsample(heatmaps, height, width)
    extra_scales = [scale for scale in settings.scales if scale != 1.0]
    for scale in extra_scales:
        size = [max(32, round(side * scale / 32) * 32) for side in (height, width)]
        scaled = jax.image.resize(images, (batch, *size, channels), "bilinear")
        scaled_heatmaps, _, _ = _heads(model, variables, scaled, settings.flip_test)
        heatmaps = heatmaps + decode.upsample(scaled_heatmaps, height, width)
    heatmaps = heatmaps / (1 + len(extra_scales))
    return NetworkOutputs(heatmaps, offsets, embeddings)


def local_kems(network: NetworkOutputs, settings: DecodeSettings) -> Candidates:
    """Center NMS, initial poses and local meshes."""
    centers = decode.center_nms(network.heatmaps[..., -1], settings.num_centers)
    poses = decode.initial_poses(centers, network.offsets)
    return Candidates(centers, poses, decode.local_mesh(poses, settings.logo_ca.local_half_size))


def sample_local_features(embeddings, mesh, *, mode: str, image=None):
    """Embeddings sampled at mesh points, one row per instance.

    Args:
      embeddings: [B, h, w, C] on the stride-4 grid.
      mesh: [..., S, S, K, 2] mesh points in input pixels, e.g. [B, N, S, S, K, 2].
      mode: sampling mode.
      image: [...] int, the image each instance samples; by default the mesh's leading axis
        is the image ([B, N, ...]).

    Returns:
      [instances, S, S, K*C].
    """
    if image is None:
        image = jnp.broadcast_to(jnp.arange(mesh.shape[0])[:, None], mesh.shape[:2])
    features = sample(embeddings, mesh / STRIDE, mode=mode, image=image[..., None, None, None])
    *lead, num_joints, channels = features.shape
    return features.reshape(-1, *lead[-2:], num_joints * channels)


def local_kams(
    model: LogoCap,
    variables,
    network: NetworkOutputs,
    candidates: Candidates,
    settings: DecodeSettings,
):
    """KAMs of every candidate, clamped to [0, 1]: [B, N, S, S, K]."""
    features = sample_local_features(
        network.embeddings, candidates.mesh, mode=settings.logo_ca.sampling
    )
    kams = model.apply(variables, features, train=False, method=LogoCap.attraction_maps)
    return jnp.clip(kams, 0.0, 1.0).reshape(*candidates.mesh.shape[:-1])


def _refine_image(heatmaps, poses, mesh, kams, settings: DecodeSettings):
    """Per-image keypoints [N, K, 3] (x, y, value before the center score) and refined maps."""
    num_joints = poses.shape[1]
    if settings.adaptation == "none":
        values = sample(
            heatmaps[..., :num_joints], poses, mode=settings.logo_ca.sampling, per_channel=True
        )
        return jnp.concatenate([poses, values[..., None]], axis=-1), None
    if settings.adaptation == "partial":
        flat = kams.reshape(kams.shape[0], -1, num_joints)
        best = jnp.argmax(flat, axis=1)
        points = jnp.take_along_axis(
            mesh.reshape(mesh.shape[0], -1, num_joints, 2), best[:, None, :, None], axis=1
        )[:, 0]
        return jnp.concatenate([points, flat.max(axis=1)[..., None]], axis=-1), None
    refined = logo_ca.refined_heatmaps(heatmaps, poses, kams, settings.logo_ca)
    return logo_ca.top2_blend(refined, poses, settings.logo_ca.global_half_size), refined


def global_kams(network: NetworkOutputs, candidates: Candidates, kams, settings: DecodeSettings):
    """Final keypoints, their scores and the slot mask: see `PoseOutputs`."""
    refine_fn = functools.partial(_refine_image, settings=settings)
    keypoints, refined = jax.vmap(refine_fn)(
        network.heatmaps, candidates.poses, candidates.mesh, kams
    )
    center_scores = candidates.centers[..., 2]
    keypoint_scores = keypoints[..., 2] * center_scores[..., None]
    poses = jnp.concatenate([keypoints[..., :2], keypoint_scores[..., None]], axis=-1)
    scores = keypoint_scores.mean(axis=-1)
    valid = decode.valid_centers(center_scores, settings.center_threshold) & (scores > 0)
    if refined is None:
        refined = jnp.zeros(poses.shape[:3] + (0, 0), poses.dtype)
    return PoseOutputs(
        poses, scores, valid, candidates.centers, candidates.poses, candidates.mesh, kams, refined
    )


def predict_poses(model: LogoCap, variables, images, settings: DecodeSettings) -> PoseOutputs:
    """The whole test-time pipeline on a batch of normalised images [B, H, W, 3]; each stage of
    STAGES runs under a `jax.named_scope` of its name, which the compiled program keeps."""
    with jax.named_scope("backbone"):
        network = network_stage(model, variables, images, settings)
    with jax.named_scope("local_kems"):
        candidates = local_kems(network, settings)
    with jax.named_scope("local_kams"):
        kams = local_kams(model, variables, network, candidates, settings)
    with jax.named_scope("global_kams"):
        return global_kams(network, candidates, kams, settings)


# PoseOutputs fields beyond poses, scores and valid: what inspection (panels, the upper bound)
# needs, about 20 MB per W32 image, mostly the refined maps.
INSPECTION_FIELDS = ("centers", "initial_poses", "mesh", "kams", "refined")


def make_predict_fn(
    model: LogoCap, settings: DecodeSettings, *, inspect: bool = True, platform: str | None = None
):
    """`predict_poses` jitted for one model and settings: fn(variables, images) -> PoseOutputs.

    It compiles once per input shape. Without `inspect` the INSPECTION_FIELDS are None, so only
    poses, scores and validity flags leave the device. `platform` names the platform the
    program is compiled for when it is not the default backend (ahead-of-time compilation).
    """

    def predict(variables, images):
        outputs = predict_poses(model, variables, images, settings)
        return outputs if inspect else outputs._replace(**dict.fromkeys(INSPECTION_FIELDS))

    return compile_options.jit(predict, backend=platform)


def inference_variables(variables, dtype):
    """Variables as inference runs them: parameters cast once to the compute `dtype`, BatchNorm
    statistics kept in float32 (checkpoints hold float32)."""
    params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype), variables["params"])
    return {**variables, "params": params}


STAGES = ("backbone", "local_kems", "local_kams", "global_kams")


def make_stage_fns(model: LogoCap, settings: DecodeSettings) -> dict:
    """The four stages, each jitted on its own, keyed by STAGES (for per-stage timing).

    Chained as fns['global_kams'](net, cand, fns['local_kams'](variables, net, cand)) with
    net = fns['backbone'](variables, images) and cand = fns['local_kems'](net), they compute
    the same as `make_predict_fn`, a little slower since XLA cannot fuse across stages.
    """
    return {
        "backbone": compile_options.jit(
            lambda variables, images: network_stage(model, variables, images, settings)
        ),
        "local_kems": compile_options.jit(lambda network: local_kems(network, settings)),
        "local_kams": compile_options.jit(
            lambda variables, network, candidates: local_kams(
                model, variables, network, candidates, settings
            )
        ),
        "global_kams": compile_options.jit(
            lambda network, candidates, kams: global_kams(network, candidates, kams, settings)
        ),
    }
