"""The pose tracker (logocap_jax/video/tracking.py) on synthetic videos of COCO ground-truth poses.

The people of bundled COCO images are moved over frames (pans, motion of their own, crossing
paths), jittered, hidden for a while, and shown to the tracker in a shuffled order per frame;
the tests count id switches against the known identities.
"""

import itertools
from typing import NamedTuple

import numpy as np
import pytest
from golden_arrays import ROOT

from logocap_jax.data import coco_records
from logocap_jax.keypoints import COCO_SIGMAS
from logocap_jax.video import tracking
from logocap_jax.video.smoothing import OneEuroSettings, one_euro_start, one_euro_step
from logocap_jax.video.tracking import Tracker, TrackerSettings

ANNOTATIONS = ROOT / "data" / "coco_mini" / "annotations" / "person_keypoints_mini.json"
# Five people with 13 to 16 labelled keypoints, 130 to 250 px tall, some overlapping.
GROUP_IMAGE = 197388
# Four more people, the newcomers of the entering and leaving video.
OTHER_IMAGE = 790
MAX_AGE = 10
SETTINGS = TrackerSettings(max_age=MAX_AGE)


def image_people(image_id: int) -> np.ndarray:
    """[P, 17, 3] (x, y, v) of the image's non-crowd people with at least 10 keypoints."""
    dataset = coco_records.load_annotations(str(ANNOTATIONS))
    people = [
        np.reshape(entry["keypoints"], (17, 3)).astype(np.float64)
        for entry in dataset["annotations"]
        if entry["image_id"] == image_id
        and coco_records.labelled_people(entry)
        and entry["num_keypoints"] >= 10
    ]
    return np.stack(people)


@pytest.fixture(scope="module")
def group():
    return image_people(GROUP_IMAGE)


@pytest.fixture(scope="module")
def others():
    return image_people(OTHER_IMAGE)


class Frame(NamedTuple):
    """One synthetic frame: the tracker's input and who is who."""

    keypoints: np.ndarray  # [P, 17, 3] (x, y, score), score 0 at unlabelled keypoints
    scores: np.ndarray  # [P]
    people: np.ndarray  # [P] identity of each row


def make_video(poses, offsets, present, noise: float, seed: int = 0) -> list[Frame]:
    """Frames of people moved by per-frame offsets, jittered, in a shuffled order per frame.

    Args:
      poses: [N, 17, 3] (x, y, v) ground-truth poses.
      offsets: [N, T, 2] displacement of each person in each frame, pixels.
      present: [N, T] bool, who is in which frame.
      noise: standard deviation of the Gaussian jitter of every keypoint, pixels.
      seed: of the jitter, the keypoint scores and the order.

    Returns:
      T frames; labelled keypoints score in [0.5, 1], the pose score is their mean.
    """
    rng = np.random.default_rng(seed)
    frames = []
    for t in range(present.shape[1]):
        people = rng.permutation(np.flatnonzero(present[:, t]))
        labelled = poses[people, :, 2] > 0
        jitter = rng.normal(0.0, noise, size=(len(people), 17, 2))
        xy = poses[people, :, :2] + offsets[people, t][:, None] + jitter
        keypoint_scores = np.where(labelled, rng.uniform(0.5, 1.0, size=labelled.shape), 0.0)
        keypoints = np.concatenate(
            [np.where(labelled[..., None], xy, 0.0), keypoint_scores[..., None]], -1
        )
        scores = keypoint_scores.sum(axis=1) / np.maximum(labelled.sum(axis=1), 1)
        frames.append(Frame(keypoints, scores, people))
    return frames


def run(frames, settings=SETTINGS) -> list[tracking.TrackedFrame]:
    tracker = Tracker(settings)
    return [tracker.update(frame.keypoints, frame.scores) for frame in frames]


def id_history(frames, tracked) -> dict[int, list[int]]:
    """Each person's ids over the frames where they are visible; checks ids are unique per frame."""
    history = {}
    for frame, result in zip(frames, tracked):
        assert len(np.unique(result.ids)) == len(result.ids), f"an id twice: {result.ids}"
        assert np.all(result.ids >= 0)
        for person, track_id in zip(frame.people, result.ids):
            history.setdefault(int(person), []).append(int(track_id))
    return history


def id_switches(history: dict[int, list[int]]) -> int:
    """Id changes between consecutive appearances of a person, plus ids given to several people."""
    switches = sum(int(np.count_nonzero(np.diff(ids))) for ids in history.values())
    owners = {}
    for person, ids in history.items():
        for track_id in set(ids):
            owners.setdefault(track_id, set()).add(person)
    return switches + sum(len(people) - 1 for people in owners.values())


def pan(num_people: int, num_frames: int, velocity) -> np.ndarray:
    """[N, T, 2] offsets of a camera pan: everyone moves by `velocity` px per frame."""
    return np.broadcast_to(
        np.arange(num_frames)[:, None] * np.asarray(velocity), (num_people, num_frames, 2)
    )


def own_motion(num_people: int, num_frames: int, speed: float, seed: int) -> np.ndarray:
    """[N, T, 2] offsets of people walking at up to `speed` px per frame, each their own way."""
    rng = np.random.default_rng(seed)
    velocity = rng.uniform(-speed, speed, size=(num_people, 1, 2))
    phase = rng.uniform(0, 2 * np.pi, size=(num_people, 1, 1))
    t = np.arange(num_frames)[None, :, None]
    # A straight walk plus a sway of 5 px, so that the velocity is not constant.
    return velocity * t + 5.0 * np.sin(2 * np.pi * t / 40 + phase)


def all_present(num_people: int, num_frames: int) -> np.ndarray:
    return np.ones((num_people, num_frames), bool)


# -- videos ---------------------------------------------------------------------------------


@pytest.mark.parametrize("noise", [0.0, 2.0])
def test_slow_pan_keeps_every_id(group, noise):
    frames = make_video(group, pan(5, 90, (2.0, 1.0)), all_present(5, 90), noise)
    tracked = run(frames)
    assert id_switches(id_history(frames, tracked)) == 0
    assert sorted(tracked[-1].ids) == [0, 1, 2, 3, 4]
    assert all(result.num_tracks == 5 for result in tracked)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_people_moving_their_own_way_keep_their_ids(group, seed):
    offsets = own_motion(5, 120, 1.5, seed) + pan(5, 120, (1.0, 0.0))
    frames = make_video(group, offsets, all_present(5, 120), noise=2.0, seed=seed)
    assert id_switches(id_history(frames, run(frames))) == 0


def place(pose: np.ndarray, center, height: float) -> np.ndarray:
    """The pose scaled to a keypoint box `height` px tall and centred on `center`."""
    labelled = pose[:, 2] > 0
    xy = pose[labelled, :2]
    middle = (xy.min(axis=0) + xy.max(axis=0)) / 2
    scale = height / np.ptp(xy[:, 1])
    placed = pose.copy()
    placed[labelled, :2] = (xy - middle) * scale + np.asarray(center)
    return placed


@pytest.mark.parametrize("vertical_gap", [0.0, 30.0])
def test_crossing_paths(group, vertical_gap):
    # Two people of the same size walk through each other at 2 px per frame each.
    poses = np.stack(
        [
            place(group[0], (150.0, 250.0), 200.0),
            place(group[3], (450.0, 250.0 + vertical_gap), 200.0),
        ]
    )
    steps = np.arange(150)[:, None] * np.array([2.0, 0.0])
    offsets = np.stack([steps, -steps])
    frames = make_video(poses, offsets, all_present(2, 150), noise=1.5)
    history = id_history(frames, run(frames))
    assert id_switches(history) == 0
    # They did cross: the first is now on the right.
    assert frames[-1].keypoints[list(frames[-1].people).index(0), 5, 0] > 400


@pytest.mark.parametrize("gap", [1, MAX_AGE])
def test_a_person_hidden_up_to_max_age_frames_keeps_the_id(group, gap):
    present = all_present(5, 60)
    present[2, 20 : 20 + gap] = False
    present[4, 30 : 30 + gap] = False
    offsets = pan(5, 60, (1.0, 0.5))
    frames = make_video(group, offsets, present, noise=2.0)
    tracked = run(frames)
    assert id_switches(id_history(frames, tracked)) == 0
    # The hidden person's track stays live through the gap.
    assert all(result.num_tracks == 5 for result in tracked)


def test_a_person_hidden_longer_than_max_age_gets_a_new_id(group):
    present = all_present(5, 60)
    present[2, 20 : 20 + MAX_AGE + 1] = False
    frames = make_video(group, pan(5, 60, (1.0, 0.5)), present, noise=2.0)
    tracked = run(frames)
    history = id_history(frames, tracked)
    assert id_switches({person: ids for person, ids in history.items() if person != 2}) == 0
    before, after = history[2][:20], history[2][20:]
    assert len(set(before)) == 1 and len(set(after)) == 1
    assert after[0] == 5, "a new id, never given before"
    counts = [result.num_tracks for result in tracked]
    # The track lives through MAX_AGE unseen frames and ends at the next one.
    assert counts[20 + MAX_AGE - 1] == 5 and counts[20 + MAX_AGE] == 4 and counts[-1] == 5


def test_people_entering_and_leaving(group, others):
    poses = np.concatenate([group[:3], others[:2]])
    present = np.zeros((5, 80), bool)
    present[0, :] = True
    present[1, :40] = True  # leaves
    present[2, 10:] = True  # enters
    present[3, 20:60] = True  # enters and leaves
    present[4, 50:] = True  # enters
    offsets = own_motion(5, 80, 1.0, seed=3)
    frames = make_video(poses, offsets, present, noise=2.0)
    tracked = run(frames)
    history = id_history(frames, tracked)
    assert id_switches(history) == 0
    # Ids are given in order of arrival (person 0 first; the rest enter one by one).
    assert [history[person][0] for person in range(5)] == [0, 1, 2, 3, 4]
    # Live tracks: the people seen within the last MAX_AGE frames, this one included.
    expected = [
        sum(
            1
            for seen in present[:, : t + 1]
            if seen.any() and t - np.flatnonzero(seen)[-1] <= MAX_AGE
        )
        for t in range(80)
    ]
    assert [result.num_tracks for result in tracked] == expected


def test_empty_frames(group):
    tracker = Tracker(TrackerSettings(max_age=2))
    empty = tracker.update(np.zeros((0, 17, 3)), np.zeros(0))
    assert empty.ids.shape == (0,) and empty.keypoints.shape == (0, 17, 3)
    assert empty.num_tracks == 0
    scores = np.ones(5)
    first = tracker.update(group, scores)
    np.testing.assert_array_equal(first.ids, [0, 1, 2, 3, 4])
    # Two frames with nobody, then the same people: the tracks were waiting.
    for _ in range(2):
        assert tracker.update(np.zeros((0, 17, 3)), np.zeros(0)).num_tracks == 5
    np.testing.assert_array_equal(tracker.update(group[::-1], scores).ids, [4, 3, 2, 1, 0])
    # Three empty frames end them; the people come back as new tracks.
    for _ in range(3):
        nobody = tracker.update(np.zeros((0, 17, 3)), np.zeros(0))
    assert nobody.num_tracks == 0
    np.testing.assert_array_equal(tracker.update(group, scores).ids, [5, 6, 7, 8, 9])


def test_tracking_is_deterministic(group):
    offsets = own_motion(5, 60, 2.0, seed=4)
    present = all_present(5, 60)
    present[1, 10:25] = False
    frames = make_video(group, offsets, present, noise=3.0, seed=4)
    settings = TrackerSettings(max_age=MAX_AGE, smoothing=OneEuroSettings())
    first, second = run(frames, settings), run(frames, settings)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_array_equal(a.keypoints, b.keypoints)
        assert a.num_tracks == b.num_tracks


def test_birth_score(group):
    tracker = Tracker(TrackerSettings(birth_score=0.5))
    result = tracker.update(group[:3], np.array([0.9, 0.2, 0.6]))
    np.testing.assert_array_equal(result.ids, [0, -1, 1])
    assert result.num_tracks == 2
    # Below the birth score, a person still continues an existing track.
    np.testing.assert_array_equal(
        tracker.update(group[:3], np.array([0.1, 0.9, 0.1])).ids, [0, 2, 1]
    )


def test_bad_input_is_refused(group):
    tracker = Tracker()
    with pytest.raises(ValueError, match="keypoints must have shape"):
        tracker.update(group[:, :5], np.ones(5))
    with pytest.raises(ValueError, match="scores must have shape"):
        tracker.update(group, np.ones(4))
    tracker.update(group, np.ones(5), timestamp=1.0)
    with pytest.raises(ValueError, match="timestamps must increase"):
        tracker.update(group, np.ones(5), timestamp=1.0)
    for bad in ({"min_similarity": 0.0}, {"max_age": -1}, {"min_keypoints": 0}, {"frame_rate": 0}):
        with pytest.raises(ValueError):
            TrackerSettings(**bad)


# -- smoothing in the tracker ---------------------------------------------------------------


def test_smoothing_reduces_jitter_and_keeps_the_ids(group):
    offsets = pan(5, 90, (0.5, 0.0))
    truth = make_video(group, offsets, all_present(5, 90), noise=0.0, seed=5)
    frames = make_video(group, offsets, all_present(5, 90), noise=2.0, seed=5)
    for frame, clean in zip(frames, truth):
        np.testing.assert_array_equal(frame.people, clean.people)
    smoothed = run(frames, TrackerSettings(max_age=MAX_AGE, smoothing=OneEuroSettings()))
    raw = run(frames)
    for a, b in zip(smoothed, raw):
        np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(raw[-1].keypoints, frames[-1].keypoints)

    def error(results):
        # Same seed: the clean frames list the people in the same order.
        squared = [
            np.sum((result.keypoints[..., :2] - clean.keypoints[..., :2]) ** 2, -1)[
                clean.keypoints[..., 2] > 0
            ]
            for result, clean in zip(results[30:], truth[30:])
        ]
        return np.sqrt(np.mean(np.concatenate(squared)))

    # Measured: 1.47 px against 2.83 px raw (0.52).
    assert error(smoothed) < 0.7 * error(raw), (error(smoothed), error(raw))


def test_each_track_has_its_own_filter(group):
    # The output of every track equals its person's keypoints filtered alone: no state is
    # shared between tracks, and a track that ended does not lend its state to the next.
    smoothing = OneEuroSettings(min_cutoff=0.5, beta=0.02)
    present = all_present(3, 50)
    present[1, 20:32] = False  # longer than max_age 10: person 1 returns as a new track
    frames = make_video(group[:3], own_motion(3, 50, 1.0, seed=6), present, noise=2.0, seed=6)
    settings = TrackerSettings(max_age=MAX_AGE, smoothing=smoothing, frame_rate=25.0)
    tracked = run(frames, settings)
    history = id_history(frames, tracked)
    assert history[1][0] != history[1][-1]
    for person in range(3):
        state, time = None, None
        for t, (frame, result) in enumerate(zip(frames, tracked)):
            if person not in frame.people:
                continue
            row = list(frame.people).index(person)
            keypoints = frame.keypoints[row]
            observed = keypoints[:, 2:] > settings.keypoint_threshold
            if state is None or (person == 1 and t == 32):
                state = one_euro_start(keypoints[:, :2], t / 25.0, observed)
                expected = keypoints[:, :2]
            else:
                expected, state = one_euro_step(
                    state, keypoints[:, :2], t / 25.0, smoothing, observed
                )
            time = t
            np.testing.assert_allclose(result.keypoints[row, :, :2], expected, rtol=0, atol=1e-12)
            np.testing.assert_array_equal(result.keypoints[row, :, 2], keypoints[:, 2])
        assert time == 49


def test_timestamps_drive_the_filter(group):
    smoothing = OneEuroSettings()
    by_rate = Tracker(TrackerSettings(smoothing=smoothing, frame_rate=10.0))
    by_time = Tracker(TrackerSettings(smoothing=smoothing))
    rng = np.random.default_rng(7)
    for t in range(5):
        frame = group + np.concatenate([rng.normal(0, 2.0, (5, 17, 2)), np.zeros((5, 17, 1))], -1)
        a = by_rate.update(frame, np.ones(5))
        b = by_time.update(frame, np.ones(5), timestamp=3.0 + t / 10.0)
        np.testing.assert_allclose(a.keypoints, b.keypoints, rtol=0, atol=1e-9)


# -- the matrices and the assignment ---------------------------------------------------------


def direct_oks(a: np.ndarray, b: np.ndarray, threshold: float) -> float:
    """OKS of two [17, 3] poses, one keypoint at a time."""

    def area(pose):
        xy = [(x, y) for x, y, score in pose if score > threshold]
        if not xy:
            return 0.0
        xs, ys = zip(*xy)
        return (max(xs) - min(xs)) * (max(ys) - min(ys))

    scale = (area(a) + area(b)) / 2
    total, count = 0.0, 0
    for k in range(17):
        if a[k, 2] > threshold and b[k, 2] > threshold:
            squared = (a[k, 0] - b[k, 0]) ** 2 + (a[k, 1] - b[k, 1]) ** 2
            kappa = 2 * float(COCO_SIGMAS[k])
            total += np.exp(-squared / (2 * scale * kappa**2 + 2 * kappa**2 * np.spacing(1)))
            count += 1
    return total / count if count else 0.0


def direct_iou(a, b) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - width * height
    return width * height / union if union > 0 else 0.0


def test_oks_matrix_equals_a_direct_computation(group, others):
    rng = np.random.default_rng(8)
    moved = group + np.concatenate([rng.normal(0, 6.0, (5, 17, 2)), np.zeros((5, 17, 1))], -1)
    moved[0, :6, 2] = 0.05  # below the threshold: left out
    poses_b = np.concatenate([moved, others])
    matrix = tracking.oks_matrix(group, poses_b, 0.1)
    assert matrix.shape == (5, 9)
    for i, j in itertools.product(range(5), range(9)):
        assert matrix[i, j] == pytest.approx(direct_oks(group[i], poses_b[j], 0.1), abs=1e-12)
    np.testing.assert_allclose(np.diag(tracking.oks_matrix(group, group, 0.1)), 1.0)
    np.testing.assert_allclose(matrix, tracking.oks_matrix(poses_b, group, 0.1).T)
    assert tracking.oks_matrix(group[:0], group, 0.1).shape == (0, 5)


def test_iou_matrix_equals_a_direct_computation():
    boxes_a = np.array([[0, 0, 10, 10], [5, 5, 15, 15], [0, 0, 0, 0], [2, 3, 2, 9]], float)
    boxes_b = np.array([[5, 5, 15, 15], [20, 20, 30, 40], [0, 0, 10, 10], [0, 0, 0, 0]], float)
    matrix = tracking.iou_matrix(boxes_a, boxes_b)
    for i, j in itertools.product(range(4), range(4)):
        assert matrix[i, j] == pytest.approx(direct_iou(boxes_a[i], boxes_b[j]), abs=1e-12)
    assert matrix[0, 0] == pytest.approx(25 / 175) and matrix[0, 2] == 1.0
    assert matrix[2, 3] == 0.0  # two empty boxes


def test_keypoint_boxes(group):
    boxes = tracking.keypoint_boxes(group, 0.1)
    labelled = group[0, :, 2] > 0
    np.testing.assert_array_equal(
        boxes[0], np.concatenate([group[0, labelled, :2].min(0), group[0, labelled, :2].max(0)])
    )
    hidden = group[:1].copy()
    hidden[..., 2] = 0.0
    np.testing.assert_array_equal(tracking.keypoint_boxes(hidden, 0.1), [[0.0, 0.0, 0.0, 0.0]])


def test_similarity_falls_back_to_box_iou(group):
    settings = TrackerSettings(min_keypoints=4)
    few = group.copy()
    few[1, 3:, 2] = 0.0  # three keypoints left
    similarity = tracking.similarity_matrix(group, few, settings)
    oks = tracking.oks_matrix(group, few, 0.1)
    iou = tracking.iou_matrix(
        tracking.keypoint_boxes(group, 0.1), tracking.keypoint_boxes(few, 0.1)
    )
    common = tracking.common_keypoints(group, few, 0.1).sum(-1)
    assert common[1, 1] < 4 and common[0, 0] >= 4
    np.testing.assert_array_equal(similarity, np.where(common >= 4, oks, iou))


def brute_force_assignment(similarity, min_similarity):
    """The best total similarity over every one-to-one matching of usable pairs."""
    rows, cols = similarity.shape
    best = 0.0
    for size in range(min(rows, cols) + 1):
        for chosen_rows in itertools.combinations(range(rows), size):
            for chosen_cols in itertools.permutations(range(cols), size):
                values = similarity[list(chosen_rows), list(chosen_cols)]
                if np.all(values >= min_similarity):
                    best = max(best, float(values.sum()))
    return best


@pytest.mark.parametrize("shape", [(3, 3), (2, 5), (5, 3), (4, 4), (0, 3)])
def test_assign_equals_brute_force(shape):
    rng = np.random.default_rng(shape[0] * 10 + shape[1])
    for _ in range(20):
        similarity = rng.uniform(0.0, 1.0, size=shape) ** 2
        rows, cols = tracking.assign(similarity, 0.3)
        assert len(set(rows)) == len(rows) and len(set(cols)) == len(cols)
        assert np.all(similarity[rows, cols] >= 0.3)
        best = brute_force_assignment(similarity, 0.3)
        assert similarity[rows, cols].sum() == pytest.approx(best, abs=1e-12)
