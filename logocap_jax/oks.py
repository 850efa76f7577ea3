"""Object keypoint similarity (OKS) of candidate meshes against ground-truth persons (design §3.8).

The training path matches each candidate's local KEM mesh with one ground-truth person and
keeps the per-joint OKS of every mesh point as the KAM regression target. Everything is
static-shaped: ground-truth persons are padded to a fixed G with a `valid` mask, and padding
rows never win the assignment.

Ground truth stays in original-image pixels (as `data.targets.oks_ground_truth` returns it);
candidates live in network-input pixels and are mapped back before the comparison.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from logocap_jax.keypoints import COCO_SIGMAS

# A candidate becomes a training instance when its best person OKS over the mesh reaches this.
MIN_OKS = 0.5
# Smallest OKS denominator 2 * area * (2 sigma)^2 (zero-area persons would divide by zero).
MIN_DENOMINATOR = 1e-6


class OksMatch(NamedTuple):
    """Candidates matched to ground-truth persons.

    Attributes:
      joints: [..., S, S, K] per-joint OKS of every mesh point with the assigned person.
      person: [..., S, S] mean of `joints` over the assigned person's visible joints.
      assignment: [...] int32 index of the assigned ground-truth person.
      upper_bound: [..., G] matching score of every person (padding rows -1).
    """

    joints: jax.Array
    person: jax.Array
    assignment: jax.Array
    upper_bound: jax.Array


def _apply_affine(points, matrix):
    """[..., 2] points through the top two rows of a [3, 3] matrix, in the official term order."""
    x, y = points[..., 0], points[..., 1]
    return jnp.stack(
        [
            x * matrix[0, 0] + y * matrix[0, 1] + matrix[0, 2],
            x * matrix[1, 0] + y * matrix[1, 1] + matrix[1, 2],
        ],
        axis=-1,
    )


def _flip_x(points, flip, input_width: int):
    """x -> input_width - 1 - x where `flip` (the training image mirror), y unchanged."""
    x = jnp.where(flip, input_width - 1 - points[..., 0], points[..., 0])
    return jnp.stack([x, points[..., 1]], axis=-1)


def input_to_original(points, transform_inv, flip, input_width: int):
    """Input pixels -> original-image pixels: undo the flip, then the inverse augmentation affine.

    Args:
      points: [..., 2] (x, y) in network-input pixels of the (possibly flipped) image.
      transform_inv: [3, 3] input -> original matrix (of the unflipped crop).
      flip: bool scalar, whether the image was mirrored.
      input_width: W of the network input.

    Returns:
      [..., 2] (x, y) in original-image pixels.
    """
    return _apply_affine(_flip_x(points, flip, input_width), transform_inv)


def original_to_input(points, transform, flip, input_width: int):
    """Original-image pixels -> input pixels: the augmentation affine, then the flip.

    The inverse of `input_to_original`; `transform` is the [3, 3] original -> input matrix.
    """
    return _flip_x(_apply_affine(points, transform), flip, input_width)


def keypoint_oks(points, keypoints, areas):
    """Per-joint OKS of poses with every ground-truth person (COCO's kernel with s^2 = area).

    S[..., g, k] = exp(-d^2 / max(2 * area_g * (2 sigma_k)^2, 1e-6)) * [v_gk > 0].

    Args:
      points: [..., K, 2] poses in original-image pixels.
      keypoints: [G, K, 3] ground truth (x, y, v) in original-image pixels.
      areas: [G] person areas in original px^2.

    Returns:
      [..., G, K] per-joint OKS, 0 at invisible joints.
    """
    visible = (keypoints[..., 2] > 0).astype(points.dtype)
    deltas = jnp.sum((points[..., None, :, :] - keypoints[:, :, :2]) ** 2, axis=-1) * visible
    variance = (jnp.asarray(COCO_SIGMAS) * 2) ** 2
    error = deltas / jnp.maximum(2 * variance * areas[:, None], MIN_DENOMINATOR)
    return jnp.exp(-error) * visible


def match_mesh(mesh, keypoints, areas, valid) -> OksMatch:
    """Assigns each candidate mesh to the ground-truth person it can best reach.

    The matching score of person g is the mean over g's visible joints of the best per-joint
    OKS anywhere in the candidate's mesh (the "upper bound"); the assignment is its argmax, the
    first index on ties, padding rows excluded. An image without any real person gets row 0,
    the all-zero padding person, like the official single dummy: OKS 0 everywhere.

    Args:
      mesh: [N, S, S, K, 2] candidate meshes in original-image pixels.
      keypoints: [G, K, 3] ground truth in original-image pixels.
      areas: [G] areas in original px^2.
      valid: [G] bool, the real (non-padding) persons.

    Returns:
      `OksMatch` with leading dimension N.
    """
    assert mesh.ndim == 5, f"Expected [N, S, S, K, 2] meshes, got {mesh.shape}"
    oks = keypoint_oks(mesh, keypoints, areas)
    visible = (keypoints[..., 2] > 0).astype(oks.dtype)
    num_visible = jnp.maximum(visible.sum(axis=-1), 1)
    upper_bound = jnp.sum(oks.max(axis=(1, 2)) * visible, axis=-1) / num_visible
    upper_bound = jnp.where(valid, upper_bound, -1.0)
    assignment = jnp.argmax(upper_bound, axis=-1).astype(jnp.int32)
    pick = jax.vmap(lambda per_candidate, g: per_candidate[:, :, g])
    joints = pick(oks, assignment)
    person = joints.sum(axis=-1) / num_visible[assignment][:, None, None]
    return OksMatch(joints, person, assignment, upper_bound)


def match_candidates(
    mesh, keypoints, areas, valid, transform, transform_inv, flip, *, input_width: int
):
    """OKS matching of one image's candidate meshes, given in network-input pixels.

    Args:
      mesh: [N, S, S, K, 2] local KEM meshes in input pixels.
      keypoints, areas, valid: the image's padded ground truth, see `match_mesh`.
      transform: [3, 3] original -> input matrix; transform_inv: its inverse.
      flip: bool scalar, whether the training image was mirrored.
      input_width: W of the network input (the mirror axis).

    Returns:
      (`OksMatch`, pose_gt): pose_gt [N, K, 2] are the assigned persons' keypoints in input
      pixels (invisible joints included, at wherever their stored coordinates map).
    """
    match = match_mesh(
        input_to_original(mesh, transform_inv, flip, input_width), keypoints, areas, valid
    )
    pose_gt = original_to_input(keypoints[match.assignment, :, :2], transform, flip, input_width)
    return match, pose_gt
