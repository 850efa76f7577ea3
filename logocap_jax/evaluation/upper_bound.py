"""The empirical upper bound of local search (the paper's Fig. 2).

Each candidate starts from its center-offset initial pose and, per joint, moves to the point of
its local KEM mesh (11 x 11, sigma-scaled) with the highest OKS against the ground-truth person
it best matches. Evaluating those poses bounds what any local refinement of the same candidates
can reach.
"""

import numpy as np

from logocap_jax import oks
from logocap_jax.data import coco_records
from logocap_jax.inference import pipeline, postprocess


def _ground_truth(record):
    """Non-crowd people with labelled keypoints: (keypoints [G, K, 3], areas [G])."""
    keep = coco_records.labelled_people(record)
    return record["keypoints"][keep], record["area"][keep]


def _to_original(mesh, resize):
    """[N, S, S, K, 2] input pixels -> original-image pixels (`postprocess.back_project`)."""
    points = mesh.reshape(-1, mesh.shape[-2], 2)
    padded = np.concatenate([points, np.zeros(points.shape[:-1] + (1,), points.dtype)], axis=-1)
    return postprocess.back_project(padded, resize)[..., :2].reshape(mesh.shape)


def oracle_outputs(outputs: pipeline.PoseOutputs, record, resize) -> pipeline.PoseOutputs:
    """One image's pipeline outputs with every keypoint moved to its best mesh point.

    Args:
      outputs: one image's `PoseOutputs` (no batch axis), network-input pixels.
      record: the image's record (`data.coco_records.image_records`), with its ground truth.
      resize: the image's `preprocess.ResizeInfo`.

    Returns:
      `outputs` with poses[..., :2] replaced (scores and validity unchanged); the same
      outputs when the image has no ground-truth person.
    """
    keypoints, areas = _ground_truth(record)
    if not len(keypoints):
        return outputs
    mesh = np.asarray(outputs.mesh)
    num_slots, size, _, num_joints, _ = mesh.shape
    match = oks.match_mesh(
        _to_original(mesh, resize), keypoints, areas, np.ones(len(keypoints), bool)
    )
    best = np.asarray(match.joints).reshape(num_slots, size * size, num_joints).argmax(axis=1)
    flat = mesh.reshape(num_slots, size * size, num_joints, 2)
    chosen = np.take_along_axis(flat, best[:, None, :, None], axis=1)[:, 0]
    poses = np.concatenate([chosen, np.asarray(outputs.poses)[..., 2:]], axis=-1)
    return outputs._replace(poses=poses)
