"""OKS matching of candidate meshes with the ground truth (design §3.8)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from golden_arrays import padded_ground_truth

from logocap_jax import decode, oks
from logocap_jax.keypoints import COCO_SIGMAS

INPUT_SIZE = 256


@pytest.fixture(scope="module")
def golden(golden_step):
    return golden_step


@pytest.fixture(scope="module")
def matched(golden):
    """Matching of the golden decoded candidates (both images, flip off / on)."""
    match_fn = jax.jit(
        lambda mesh, gt: oks.match_candidates(
            mesh,
            gt["keypoints"],
            gt["areas"],
            gt["valid"],
            gt["transform"],
            gt["transform_inv"],
            gt["flip"],
            input_width=INPUT_SIZE,
        )
    )
    results = []
    for index in range(2):
        mesh = decode.local_mesh(jnp.asarray(golden["initial_poses"][index]), 5)
        results.append(match_fn(mesh, padded_ground_truth(golden, index)))
    return results


@pytest.mark.parametrize("index", [0, 1])
def test_oks_parts_and_person_match_golden(golden, matched, index):
    match, _ = matched[index]
    assert match.joints.shape == (30, 11, 11, 17) and match.person.shape == (30, 11, 11)
    # float32 round-off: 6e-8 eager; under jit XLA:CPU's fused arithmetic gives up to 9.2e-6.
    np.testing.assert_allclose(match.joints, golden[f"oks_parts_{index}"], rtol=0, atol=3e-5)
    np.testing.assert_allclose(match.person, golden[f"oks_person_{index}"], rtol=0, atol=3e-5)
    num_people = len(golden[f"meta_{index}.areas"])
    assert np.all(np.asarray(match.upper_bound)[:, num_people:] == -1)


@pytest.mark.parametrize("index", [0, 1])
def test_selection_and_pose_gt_match_golden(golden, matched, index):
    match, pose_gt = matched[index]
    selected = decode.valid_centers(match.person.max(axis=(1, 2))[None], oks.MIN_OKS)[0]
    np.testing.assert_array_equal(selected, golden[f"selected_{index}"])
    # Input-pixel coordinates of the assigned persons (image 1 is flipped): float32 round-off.
    np.testing.assert_allclose(pose_gt, golden[f"pose_gt_{index}"][..., :2], rtol=0, atol=1e-4)


def test_keypoint_oks_formula():
    rng = np.random.default_rng(0)
    points = rng.uniform(0, 50, (4, 17, 2)).astype(np.float32)
    keypoints = np.concatenate(
        [rng.uniform(0, 50, (3, 17, 2)), rng.integers(0, 3, (3, 17, 1))], -1
    ).astype(np.float32)
    areas = np.array([900.0, 50.0, 0.0], np.float32)
    got = np.asarray(
        oks.keypoint_oks(jnp.asarray(points), jnp.asarray(keypoints), jnp.asarray(areas))
    )
    d2 = ((points[:, None] - keypoints[None, :, :, :2]) ** 2).sum(-1)
    denominator = np.maximum(2 * areas[:, None] * (2 * COCO_SIGMAS) ** 2, 1e-6)
    want = np.exp(-d2 / denominator) * (keypoints[None, :, :, 2] > 0)
    assert got.shape == (4, 3, 17)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    # A zero-area person meets the clamped denominator: finite, and 0 away from its keypoints.
    assert np.all(np.isfinite(got)) and np.all(got[:, 2] == 0)


def test_padding_rows_never_win():
    mesh = decode.local_mesh(jnp.full((2, 17, 2), 500.0), 5)
    keypoints = np.zeros((4, 17, 3), np.float32)
    keypoints[0, :, :2], keypoints[0, :, 2] = 10.0, 2  # real person, far from the mesh
    keypoints[2, :, :2], keypoints[2, :, 2] = 500.0, 2  # padding row right on the mesh
    areas = np.array([100.0, 0.0, 1e4, 0.0], np.float32)
    valid = np.array([True, False, False, False])
    match = oks.match_mesh(mesh, keypoints, areas, valid)
    np.testing.assert_array_equal(match.assignment, [0, 0])
    assert np.all(np.asarray(match.upper_bound)[:, 1:] < 0)
    # With every real score 0, the first real person still wins over padding.
    valid = np.array([False, True, False, False])
    np.testing.assert_array_equal(oks.match_mesh(mesh, keypoints, areas, valid).assignment, [1, 1])
    # No real person at all: zero padding row 0 is assigned, OKS 0 (the official dummy person).
    empty = oks.match_mesh(mesh, np.zeros_like(keypoints), np.zeros_like(areas), valid & False)
    np.testing.assert_array_equal(empty.assignment, [0, 0])
    assert not np.any(np.asarray(empty.joints)) and not np.any(np.asarray(empty.person))


def test_coordinate_maps_are_inverse(golden):
    gt = padded_ground_truth(golden, 1)
    points = jnp.asarray(np.random.default_rng(1).uniform(-20, 280, (7, 2)), jnp.float32)
    for flip in (False, True):
        original = oks.input_to_original(points, gt["transform_inv"], flip, INPUT_SIZE)
        back = oks.original_to_input(original, gt["transform"], flip, INPUT_SIZE)
        np.testing.assert_allclose(back, points, rtol=0, atol=1e-3)
    unflipped = oks.input_to_original(points, jnp.eye(3), True, INPUT_SIZE)
    np.testing.assert_allclose(unflipped[:, 0], INPUT_SIZE - 1 - points[:, 0], rtol=0, atol=1e-5)
