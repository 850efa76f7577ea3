"""Host-side test-time post-processing: back-projection, pose NMS and COCO results.

Reproduces the official inference post-processing and results writer
(design §3.7). Arithmetic stays in the dtype of the inputs (float32 for
network outputs) because the reference runs its NMS in float32 torch tensors and the
comparisons there are strict.
"""

import numpy as np

from logocap_jax.inference.preprocess import ResizeInfo, affine_transform_matrix


def _check_poses(poses: np.ndarray, last: int, name: str) -> None:
    if poses.ndim != 3 or poses.shape[2] != last:
        raise ValueError(f"{name} must have shape [P, K, {last}], got {poses.shape}")


def back_project(poses: np.ndarray, resize_info: ResizeInfo) -> np.ndarray:
    """Maps poses from network-input pixels back to original-image pixels.

    Args:
      poses: [P, K, 3] (x, y, score) in network-input pixels.
      resize_info: the resize used to build the network input.

    Returns:
      [P, K, 3] poses in original-image pixels, same dtype as `poses`; the score
      column is copied unchanged.
    """
    poses = np.asarray(poses)
    _check_poses(poses, 3, "back_project poses")
    size_wh = (int(resize_info.size_wh[0]), int(resize_info.size_wh[1]))
    t = affine_transform_matrix(resize_info.center, resize_info.scale, 0, size_wh, inverse=True)
    x = poses[..., 0].astype(np.float64)
    y = poses[..., 1].astype(np.float64)
    out = poses.copy()
    # Evaluated in float64, then stored into the input dtype as the reference does.
    out[..., 0] = t[0, 0] * x + t[0, 1] * y + t[0, 2]
    out[..., 1] = t[1, 0] * x + t[1, 1] * y + t[1, 2]
    return out


def _suppression_groups(xy: np.ndarray, distance_ratio: float, min_joints: int) -> np.ndarray:
    """Returns [P, P] bool: row i marks the poses that pose i would suppress.

    Two poses match when more than `min_joints` keypoints lie strictly closer than
    `distance_ratio` times the diagonal of pose i's keypoint extent.
    """
    extent = xy.max(axis=1) - xy.min(axis=1)
    diag = np.sqrt(extent[:, 0] * extent[:, 0] + extent[:, 1] * extent[:, 1])
    threshold = xy.dtype.type(distance_ratio) * diag
    diff = xy[:, None, :, :] - xy[None, :, :, :]
    dist = np.sqrt((diff * diff).sum(axis=3))
    close = (dist < threshold[:, None, None]).sum(axis=2)
    return close > min_joints


def pose_nms(
    keypoints_xy: np.ndarray,
    scores: np.ndarray,
    *,
    distance_ratio: float = 0.05,
    min_joints: int = 8,
) -> np.ndarray:
    """DEKR-style greedy pose NMS exactly as the official `nms_core`.

    Poses are visited in the given (candidate) order, not by score. For each pose i
    not yet ignored, its group G (poses it matches, usually itself included) elects
    the best-scoring member j* (first on ties). If j* was already ignored the group
    is skipped and, as in the reference, is not marked ignored; otherwise j* is kept
    and all of G becomes ignored.

    Args:
      keypoints_xy: [P, K, 2] keypoint coordinates.
      scores: [P] pose scores.
      distance_ratio: matching distance as a fraction of the extent diagonal.
      min_joints: poses match when strictly more joints than this are close.

    Returns:
      [Q] int64 indices of the kept poses, in keep order.
    """
    xy = np.asarray(keypoints_xy)
    scores = np.asarray(scores)
    _check_poses(xy, 2, "pose_nms keypoints_xy")
    if scores.shape != (xy.shape[0],):
        raise ValueError(f"pose_nms scores must have shape [{xy.shape[0]}], got {scores.shape}")
    if not np.issubdtype(xy.dtype, np.floating):
        xy = xy.astype(np.float64)
    groups = _suppression_groups(xy, distance_ratio, min_joints)
    ignored = np.zeros(xy.shape[0], dtype=bool)
    keep = []
    for i in range(xy.shape[0]):
        if ignored[i]:
            continue
        members = np.flatnonzero(groups[i])
        if members.size == 0:
            continue
        best = members[np.argmax(scores[members])]
        if ignored[best]:
            continue
        keep.append(best)
        ignored[members] = True
    return np.array(keep, dtype=np.int64)


def select_people(
    poses: np.ndarray,
    scores: np.ndarray,
    valid: np.ndarray,
    resize_info: ResizeInfo,
    *,
    max_people: int = 30,
    nms_distance_ratio: float = 0.05,
    nms_min_joints: int = 8,
):
    """Turns the model's fixed-size candidate slots into the final people of one image.

    Args:
      poses: [N, K, 3] (x, y, score) per candidate slot in network-input pixels,
        in candidate (centre-score) order.
      scores: [N] pose scores.
      valid: [N] bool, slots that survived the centre and score filters.
      resize_info: the resize used to build the network input.
      max_people: cap on the number of people returned.
      nms_distance_ratio: see `pose_nms` distance_ratio.
      nms_min_joints: see `pose_nms` min_joints.

    Returns:
      (keypoints, scores, slots): [P, K, 3] in original-image pixels, [P] scores and [P]
      the candidate slot of each person, in NMS keep order, or by descending score when
      the cap applied.
    """
    poses = np.asarray(poses)
    scores = np.asarray(scores)
    valid = np.asarray(valid, dtype=bool)
    _check_poses(poses, 3, "select_people poses")
    if scores.shape != poses.shape[:1] or valid.shape != poses.shape[:1]:
        raise ValueError(
            f"select_people scores {scores.shape} and valid {valid.shape} must both "
            f"have shape [{poses.shape[0]}]"
        )
    people = back_project(poses[valid], resize_info)
    people_scores = scores[valid]
    keep = pose_nms(
        people[..., :2], people_scores, distance_ratio=nms_distance_ratio, min_joints=nms_min_joints
    )
    slots = np.flatnonzero(valid)[keep]
    people, people_scores = people[keep], people_scores[keep]
    if len(keep) > max_people:
        top = np.argsort(-people_scores, kind="stable")[:max_people]
        people, people_scores, slots = people[top], people_scores[top], slots[top]
    return people, people_scores, slots


def coco_results(image_id: int, keypoints: np.ndarray, scores: np.ndarray) -> list:
    """Formats one image's people as COCO keypoint results, as the official test script writes them.

    Args:
      image_id: COCO image id.
      keypoints: [P, K, 3] (x, y, score) in original-image pixels.
      scores: [P] pose scores.

    Returns:
      P dicts with keys image_id, category_id (1), keypoints (flat 3K floats, the
      third value being the keypoint score), score and bbox ([xmin, ymin, w, h] of
      the keypoint extent).
    """
    keypoints = np.asarray(keypoints)
    scores = np.asarray(scores)
    _check_poses(keypoints, 3, "coco_results keypoints")
    if scores.shape != keypoints.shape[:1]:
        raise ValueError(
            f"coco_results scores must have shape [{keypoints.shape[0]}], got {scores.shape}"
        )
    results = []
    for pose, score in zip(keypoints, scores):
        # Python floats first: the reference takes w, h as float64 differences.
        xmin, ymin = pose[:, 0].min().item(), pose[:, 1].min().item()
        xmax, ymax = pose[:, 0].max().item(), pose[:, 1].max().item()
        results.append(
            {
                "image_id": int(image_id),
                "category_id": 1,
                "keypoints": pose.reshape(-1).tolist(),
                "score": score.item(),
                "bbox": [xmin, ymin, xmax - xmin, ymax - ymin],
            }
        )
    return results
