"""The oracle local search of the paper's Fig. 2."""

import numpy as np

from logocap_jax import decode
from logocap_jax.evaluation import upper_bound
from logocap_jax.inference import pipeline, preprocess


def _outputs(initial):
    """PoseOutputs of one image with one candidate whose initial pose is `initial` [K, 2]."""
    mesh = np.asarray(decode.local_mesh(initial[None], 5))
    poses = np.concatenate([initial[None], np.full((1, 17, 1), 0.5)], axis=-1)
    zeros = np.zeros(1)
    return pipeline.PoseOutputs(
        poses,
        zeros + 0.5,
        zeros > -1,
        np.zeros((1, 3)),
        initial[None],
        mesh,
        np.zeros((1, 11, 11, 17)),
        np.zeros((1, 17, 0, 0)),
    )


def test_each_joint_moves_to_its_best_mesh_point():
    rng = np.random.default_rng(0)
    truth = rng.uniform(30, 90, (17, 2)).astype(np.float32)
    initial = truth + rng.uniform(-3, 3, (17, 2)).astype(np.float32)
    record = {
        "keypoints": np.concatenate([truth, np.full((17, 1), 2.0)], axis=-1)[None],
        "area": np.array([2000.0], np.float32),
        "iscrowd": np.array([0]),
        "num_keypoints": np.array([17]),
    }
    resize = preprocess.inference_resize(128, 128, 128)  # the identity
    moved = upper_bound.oracle_outputs(_outputs(initial), record, resize)
    mesh = np.asarray(decode.local_mesh(initial, 5)).reshape(121, 17, 2)
    nearest = mesh[np.argmin(((mesh - truth) ** 2).sum(-1), axis=0), np.arange(17)]
    np.testing.assert_allclose(moved.poses[0, :, :2], nearest, atol=1e-4)
    assert np.all(
        np.linalg.norm(moved.poses[0, :, :2] - truth, axis=-1)
        <= np.linalg.norm(initial - truth, axis=-1) + 1e-4
    )
    np.testing.assert_array_equal(moved.poses[..., 2], 0.5)


def test_images_without_ground_truth_are_unchanged():
    initial = np.full((17, 2), 50.0, np.float32)
    record = {
        "keypoints": np.zeros((1, 17, 3), np.float32),
        "area": np.array([0.0]),
        "iscrowd": np.array([1]),
        "num_keypoints": np.array([0]),
    }
    outputs = _outputs(initial)
    assert (
        upper_bound.oracle_outputs(outputs, record, preprocess.inference_resize(128, 128, 128))
        is outputs
    )
