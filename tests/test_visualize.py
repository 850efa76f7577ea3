"""Pose drawing, PNG output and the instance panel, on synthetic inputs."""

import cv2
import numpy as np
import pytest

from logocap_jax.inference import visualize
from logocap_jax.keypoints import JOINT_NAMES, NUM_JOINTS

LEFT_SHOULDER, LEFT_ELBOW, LEFT_WRIST = (
    JOINT_NAMES.index(n) for n in ("left_shoulder", "left_elbow", "left_wrist")
)
RIGHT_SHOULDER, RIGHT_ELBOW = JOINT_NAMES.index("right_shoulder"), JOINT_NAMES.index("right_elbow")


def _pose(joints):
    """A [1, K, 3] pose with the given {joint: (x, y, score)} and every other joint unscored."""
    pose = np.zeros((1, NUM_JOINTS, 3))
    for k, xys in joints.items():
        pose[0, k] = xys
    return pose


def _lit(image, x, y):
    return bool(image[y, x].any())


@pytest.fixture
def black():
    return np.zeros((100, 100, 3), dtype=np.uint8)


def test_joints_and_limbs_are_drawn(black):
    pose = _pose({LEFT_SHOULDER: (20, 20, 0.9), LEFT_ELBOW: (20, 80, 0.9)})
    drawn = visualize.draw_poses(black, pose)
    assert _lit(drawn, 20, 20) and _lit(drawn, 20, 80)
    assert _lit(drawn, 20, 50)  # on the shoulder-elbow limb
    assert not _lit(drawn, 60, 50)
    assert not black.any()  # the input is left untouched


def test_low_scores_are_not_drawn(black):
    pose = _pose(
        {LEFT_SHOULDER: (20, 20, 0.9), LEFT_ELBOW: (20, 80, 0.9), LEFT_WRIST: (80, 80, 0.05)}
    )
    drawn = visualize.draw_poses(black, pose, keypoint_threshold=0.1)
    assert not _lit(drawn, 80, 80)
    assert not _lit(drawn, 50, 80)  # nor the elbow-wrist limb
    assert _lit(visualize.draw_poses(black, pose, keypoint_threshold=0.01), 50, 80)


def test_persons_and_sides_get_distinct_colors(black):
    left = _pose({LEFT_SHOULDER: (20, 20, 1), LEFT_ELBOW: (20, 80, 1)})
    right = _pose({RIGHT_SHOULDER: (70, 20, 1), RIGHT_ELBOW: (70, 80, 1)})
    one_person = visualize.draw_poses(black, left + right)
    assert tuple(one_person[50, 20]) != tuple(one_person[50, 70])
    two_people = visualize.draw_poses(black, np.concatenate([left, left + [[[30, 0, 0]]]]))
    assert tuple(two_people[50, 20]) != tuple(two_people[50, 50])


def test_ground_truth_style_and_scores(black):
    pose = _pose({RIGHT_SHOULDER: (20, 20, 2), RIGHT_ELBOW: (20, 80, 1)})
    drawn = visualize.draw_poses(black, pose, style="gt", color=(0, 255, 0))
    assert drawn[50, 20, 1] > 0 and drawn[50, 20, 0] == 0
    with_score = visualize.draw_poses(black, pose, scores=[0.75])
    assert with_score[:20].any()  # the label sits above the topmost joint
    with pytest.raises(ValueError, match="style"):
        visualize.draw_poses(black, pose, style="dashed")
    with pytest.raises(ValueError, match=r"keypoints must be \[P, 17, 3\]"):
        visualize.draw_poses(black, pose[0])


def test_save_png_round_trips(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (31, 47, 3), dtype=np.uint8)
    path = tmp_path / "a" / "b" / "pose.png"
    visualize.save_png(path, image)
    read = cv2.imread(str(path), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(cv2.cvtColor(read, cv2.COLOR_BGR2RGB), image)


def _synthetic_instance(size=11, window=97, center=(60.0, 40.0)):
    offsets = np.arange(size) - size // 2
    mesh = np.zeros((size, size, NUM_JOINTS, 2))
    mesh[..., 0] = center[0] + offsets[None, :, None] * 2.0
    mesh[..., 1] = center[1] + offsets[:, None, None] * 2.0
    kams = np.random.default_rng(1).random((size, size, NUM_JOINTS))
    refined = np.zeros((NUM_JOINTS, window, window))
    refined[:, 70, 20] = 1.0
    return mesh, kams, refined


@pytest.mark.parametrize("tile", [visualize.PANEL_TILE, 96])
def test_instance_panel_size(tile):
    image = np.full((120, 160, 3), 90, dtype=np.uint8)
    panel = visualize.instance_panel(image, *_synthetic_instance(), joint=11, tile=tile)
    assert panel.dtype == np.uint8
    assert panel.shape == (tile, 3 * tile + 2 * visualize.PANEL_GAP, 3)


def test_instance_panel_rejects_bad_input():
    image = np.zeros((120, 160, 3), dtype=np.uint8)
    mesh, kams, refined = _synthetic_instance()
    with pytest.raises(ValueError, match="joint must be in"):
        visualize.instance_panel(image, mesh, kams, refined, joint=NUM_JOINTS)
    with pytest.raises(ValueError, match="kams must be"):
        visualize.instance_panel(image, mesh, kams[:5], refined, joint=0)
    with pytest.raises(ValueError, match="refined must be"):
        visualize.instance_panel(image, mesh, kams, refined[:, :0, :0], joint=0)
