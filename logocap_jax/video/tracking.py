"""Pose tracking over video frames: an id per person that persists across frames (design §7).

Each frame's people are matched with the live tracks by the similarity of their pose to each
track's last pose: OKS over the keypoints visible in both, or the IoU of the two keypoint boxes
when too few keypoints are visible in both. The Hungarian algorithm maximises the summed
similarity; a pair below `min_similarity` is no match. Unmatched people start tracks, tracks
unseen for more than `max_age` frames end. Optionally each track's keypoints are smoothed by a
One-Euro filter (`smoothing.py`).

Host-side numpy, never the model: `Tracker.update` takes the people of one frame as
`postprocess.select_people` returns them.
"""

import dataclasses
from typing import NamedTuple

import numpy as np
from scipy.optimize import linear_sum_assignment

from logocap_jax.keypoints import COCO_SIGMAS, NUM_JOINTS
from logocap_jax.video.smoothing import OneEuroSettings, OneEuroState, one_euro_start, one_euro_step


@dataclasses.dataclass(frozen=True)
class TrackerSettings:
    """Settings of the tracker (design §7 gives the reasons for the defaults).

    Attributes:
      min_similarity: smallest OKS (or IoU) of a match, in (0, 1].
      keypoint_threshold: keypoints scoring above it are visible; only those are compared and
        smoothed (0.1 is also the overlays' drawing threshold).
      min_keypoints: OKS is used when at least this many keypoints are visible in both poses,
        the IoU of their keypoint boxes otherwise.
      birth_score: an unmatched person starts a track only with a pose score at least this;
        the others get id -1.
      max_age: a track survives up to this many consecutive frames without a match, so a
        person missing for at most `max_age` frames keeps the id.
      frame_rate: frames per second, the clock of `Tracker.update` calls without a timestamp.
      smoothing: One-Euro settings of the keypoint smoothing, or None for raw keypoints.
    """

    min_similarity: float = 0.3
    keypoint_threshold: float = 0.1
    min_keypoints: int = 4
    birth_score: float = 0.0
    max_age: int = 30
    frame_rate: float = 30.0
    smoothing: OneEuroSettings | None = None

    def __post_init__(self):
        if not 0 < self.min_similarity <= 1:
            raise ValueError(f"min_similarity must be in (0, 1], got {self.min_similarity}")
        if self.min_keypoints < 1:
            raise ValueError(f"min_keypoints must be at least 1, got {self.min_keypoints}")
        if self.max_age < 0:
            raise ValueError(f"max_age must be non-negative, got {self.max_age}")
        if not self.frame_rate > 0:
            raise ValueError(f"frame_rate must be positive, got {self.frame_rate}")


class TrackedFrame(NamedTuple):
    """The people of one frame, tracked.

    Attributes:
      ids: [P] int64 track id of each person, in input order; -1 for a person that matched no
        track and scored below `birth_score`.
      keypoints: [P, 17, 3] the input keypoints, with smoothed (x, y) when smoothing is on.
      num_tracks: live tracks after this frame, those unseen for up to `max_age` frames included.
    """

    ids: np.ndarray
    keypoints: np.ndarray
    num_tracks: int


def visible_keypoints(keypoints: np.ndarray, threshold: float) -> np.ndarray:
    """[P, K] bool: finite keypoints scoring above `threshold`, of [P, K, 3] poses."""
    keypoints = np.asarray(keypoints)
    return np.isfinite(keypoints).all(axis=-1) & (keypoints[..., 2] > threshold)


def keypoint_boxes(keypoints: np.ndarray, threshold: float) -> np.ndarray:
    """Bounding boxes of the visible keypoints.

    Args:
      keypoints: [P, K, 3] (x, y, score).
      threshold: keypoints scoring above it count.

    Returns:
      [P, 4] (x0, y0, x1, y1) float64; all zero (an empty box) for a pose without visible
      keypoints.
    """
    keypoints = np.asarray(keypoints, dtype=np.float64)
    visible = visible_keypoints(keypoints, threshold)[..., None]
    xy = keypoints[..., :2]
    low = np.where(visible, xy, np.inf).min(axis=1)
    high = np.where(visible, xy, -np.inf).max(axis=1)
    return np.where(visible.any(axis=1), np.concatenate([low, high], axis=-1), 0.0)


def box_areas(boxes: np.ndarray) -> np.ndarray:
    """[...] areas of [..., 4] (x0, y0, x1, y1) boxes."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def iou_matrix(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """Intersection over union of every pair of boxes.

    Args:
      boxes_a: [A, 4] (x0, y0, x1, y1).
      boxes_b: [B, 4].

    Returns:
      [A, B] IoU; 0 where the union is empty (two degenerate boxes).
    """
    boxes_a = np.asarray(boxes_a, dtype=np.float64)[:, None]
    boxes_b = np.asarray(boxes_b, dtype=np.float64)[None]
    low = np.maximum(boxes_a[..., :2], boxes_b[..., :2])
    high = np.minimum(boxes_a[..., 2:], boxes_b[..., 2:])
    intersection = np.prod(np.clip(high - low, 0.0, None), axis=-1)
    union = box_areas(boxes_a) + box_areas(boxes_b) - intersection
    return np.where(union > 0, intersection / np.where(union > 0, union, 1.0), 0.0)


def common_keypoints(poses_a: np.ndarray, poses_b: np.ndarray, threshold: float) -> np.ndarray:
    """[A, B, K] bool: keypoints visible in both poses of each pair of [A, K, 3] and [B, K, 3]."""
    return (
        visible_keypoints(poses_a, threshold)[:, None] & visible_keypoints(poses_b, threshold)[None]
    )


def oks_matrix(poses_a: np.ndarray, poses_b: np.ndarray, threshold: float) -> np.ndarray:
    """Object keypoint similarity of every pair of poses, over the keypoints visible in both.

    COCO's kernel exp(-d^2 / (2 s^2 (2 sigma_k)^2)) averaged over the common keypoints, with the
    object scale s^2 the mean of the two poses' keypoint-box areas: without segmentations the
    box of the keypoints is the pose's extent, and the mean makes the measure symmetric.

    Args:
      poses_a: [A, 17, 3] (x, y, score).
      poses_b: [B, 17, 3].
      threshold: keypoints scoring above it are visible.

    Returns:
      [A, B] OKS in [0, 1]; 0 for a pair without common keypoints.
    """
    poses_a = np.asarray(poses_a, dtype=np.float64)
    poses_b = np.asarray(poses_b, dtype=np.float64)
    common = common_keypoints(poses_a, poses_b, threshold)
    areas_a = box_areas(keypoint_boxes(poses_a, threshold))
    areas_b = box_areas(keypoint_boxes(poses_b, threshold))
    scale = (areas_a[:, None] + areas_b[None]) / 2
    deltas = poses_a[:, None, :, :2] - poses_b[None, :, :, :2]
    squared = np.where(common, np.sum(np.where(common[..., None], deltas, 0.0) ** 2, -1), 0.0)
    # COCO's float spacing in the area: the box of a single visible keypoint has none.
    variance = 2 * (2 * COCO_SIGMAS.astype(np.float64)) ** 2 * (scale[..., None] + np.spacing(1))
    kernel = np.where(common, np.exp(-squared / variance), 0.0)
    return kernel.sum(axis=-1) / np.maximum(common.sum(axis=-1), 1)


def similarity_matrix(
    poses_a: np.ndarray, poses_b: np.ndarray, settings: TrackerSettings
) -> np.ndarray:
    """[A, B] OKS of each pair with at least `min_keypoints` common keypoints, box IoU otherwise."""
    threshold = settings.keypoint_threshold
    enough = common_keypoints(poses_a, poses_b, threshold).sum(axis=-1) >= settings.min_keypoints
    boxes_a, boxes_b = keypoint_boxes(poses_a, threshold), keypoint_boxes(poses_b, threshold)
    return np.where(enough, oks_matrix(poses_a, poses_b, threshold), iou_matrix(boxes_a, boxes_b))


def assign(similarity: np.ndarray, min_similarity: float) -> tuple[np.ndarray, np.ndarray]:
    """The one-to-one matching of rows and columns with the largest summed similarity.

    Pairs below `min_similarity` count as 0 while solving, so that an unusable pair never
    displaces a usable one, and are then dropped.

    Args:
      similarity: [A, B] similarities.
      min_similarity: the smallest similarity of a match, positive.

    Returns:
      (rows, cols): int64 [M] each, the matched pairs by increasing row.
    """
    similarity = np.asarray(similarity, dtype=np.float64)
    usable = similarity >= min_similarity
    rows, cols = linear_sum_assignment(np.where(usable, similarity, 0.0), maximize=True)
    matched = usable[rows, cols]
    return rows[matched].astype(np.int64), cols[matched].astype(np.int64)


@dataclasses.dataclass
class _Track:
    """A live track: its id, last observed pose, frames since then, and smoothing state."""

    id: int
    keypoints: np.ndarray
    unseen: int
    filter_state: OneEuroState | None


class Tracker:
    """Gives the people of consecutive frames ids that persist across frames.

    Feed frames in order with `update`; one tracker per video.
    """

    def __init__(self, settings: TrackerSettings = TrackerSettings()):
        self.settings = settings
        self._tracks: list[_Track] = []
        self._next_id = 0
        self._timestamp: float | None = None

    def _clock(self, timestamp: float | None) -> float:
        """The frame's time, seconds: given, or one frame after the previous (0 at the first)."""
        if timestamp is None:
            if self._timestamp is None:
                return 0.0
            return self._timestamp + 1.0 / self.settings.frame_rate
        timestamp = float(timestamp)
        if self._timestamp is not None and not timestamp > self._timestamp:
            raise ValueError(
                f"timestamps must increase, got {timestamp} after {self._timestamp} (seconds)"
            )
        return timestamp

    def update(self, keypoints, scores, timestamp: float | None = None) -> TrackedFrame:
        """Tracks the people of the next frame.

        Args:
          keypoints: [P, 17, 3] (x, y, score) in frame pixels; P may be 0.
          scores: [P] pose scores.
          timestamp: the frame's time in seconds, increasing; default one frame (1 /
            `frame_rate`) after the previous call.

        Returns:
          `TrackedFrame` for the P people, in input order.

        Raises:
          ValueError: bad shapes or a timestamp that does not increase.
        """
        keypoints = np.asarray(keypoints)
        # Smoothed coordinates are fractional: integer input comes back as float64.
        keypoints = keypoints.astype(np.result_type(keypoints.dtype, np.float32))
        scores = np.asarray(scores)
        if keypoints.ndim != 3 or keypoints.shape[1:] != (NUM_JOINTS, 3):
            raise ValueError(
                f"keypoints must have shape [P, {NUM_JOINTS}, 3], got {keypoints.shape}"
            )
        if scores.shape != keypoints.shape[:1]:
            raise ValueError(f"scores must have shape [{len(keypoints)}], got {scores.shape}")
        timestamp = self._clock(timestamp)
        settings = self.settings
        visible = visible_keypoints(keypoints, settings.keypoint_threshold)
        last = np.array([track.keypoints for track in self._tracks]).reshape(-1, NUM_JOINTS, 3)
        rows, cols = assign(similarity_matrix(last, keypoints, settings), settings.min_similarity)

        ids = np.full(len(keypoints), -1, dtype=np.int64)
        output = keypoints.copy()
        for track in self._tracks:
            track.unseen += 1
        for row, col in zip(rows, cols):
            track = self._tracks[row]
            track.keypoints, track.unseen = keypoints[col], 0
            if settings.smoothing is not None:
                output[col, :, :2], track.filter_state = one_euro_step(
                    track.filter_state,
                    keypoints[col, :, :2],
                    timestamp,
                    settings.smoothing,
                    visible[col, :, None],
                )
            ids[col] = track.id
        self._tracks = [track for track in self._tracks if track.unseen <= settings.max_age]

        for col in np.flatnonzero((ids < 0) & (scores >= settings.birth_score)):
            filter_state = None
            if settings.smoothing is not None:
                filter_state = one_euro_start(
                    keypoints[col, :, :2], timestamp, visible[col, :, None]
                )
            self._tracks.append(_Track(self._next_id, keypoints[col], 0, filter_state))
            ids[col] = self._next_id
            self._next_id += 1
        self._timestamp = timestamp
        return TrackedFrame(ids, output, len(self._tracks))
