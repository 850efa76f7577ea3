"""Parity tests of the test-time pre-processing against the official golden fixtures."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from logocap_jax.inference import preprocess

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "data" / "golden"
IMAGE_197388 = ROOT / "data" / "coco_mini" / "images" / "000000197388.jpg"
INPUT_SIZE = 128  # the tiny fixtures use the official resize with short side 128


@pytest.fixture(scope="module")
def golden():
    return np.load(GOLDEN / "tiny_forward.npz")


def test_read_image_matches_reference_decode(golden):
    image = preprocess.read_image(IMAGE_197388)
    assert image.dtype == np.uint8
    assert image.shape == golden["image_raw_rgb"].shape
    # JPEG decoders may differ by a level here and there across libjpeg builds.
    diff = np.abs(image.astype(np.int16) - golden["image_raw_rgb"].astype(np.int16))
    assert diff.mean() < 0.5


def test_read_image_returns_rgb(tmp_path):
    bgr = np.zeros((4, 5, 3), dtype=np.uint8)
    bgr[..., 0] = 10
    bgr[..., 1] = 20
    bgr[..., 2] = 30
    path = tmp_path / "bgr.png"
    assert cv2.imwrite(str(path), bgr)
    np.testing.assert_array_equal(preprocess.read_image(path), bgr[..., ::-1])


def test_read_image_missing_file(tmp_path):
    path = tmp_path / "nope.jpg"
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        preprocess.read_image(path)


@pytest.mark.parametrize("content", [b"", b"\x00garbage, not an image\xff" * 10])
def test_read_image_corrupt_file(tmp_path, content):
    path = tmp_path / "corrupt.jpg"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="corrupt.jpg"):
        preprocess.read_image(path)


def test_inference_resize_matches_golden(golden):
    info = preprocess.inference_resize(392, 640, INPUT_SIZE)
    np.testing.assert_array_equal(info.center, golden["resize_center"])
    np.testing.assert_allclose(info.scale, golden["resize_scale"], rtol=0, atol=1e-15)
    np.testing.assert_array_equal(info.size_wh, golden["resize_size_wh"])


def test_inference_resize_portrait_and_spec_example():
    # Spec 6.1: a 640x480 (w x h) image becomes 704x512 at input size 512.
    landscape = preprocess.inference_resize(480, 640, 512)
    np.testing.assert_array_equal(landscape.size_wh, [704, 512])
    np.testing.assert_array_equal(landscape.center, [320, 240])
    portrait = preprocess.inference_resize(640, 480, 512)
    np.testing.assert_array_equal(portrait.size_wh, [512, 704])
    np.testing.assert_allclose(
        portrait.scale, [480 / 200, 704 / 512 * 480 / 200], rtol=0, atol=1e-15
    )


def test_inference_resize_rejects_bad_sizes():
    with pytest.raises(ValueError, match="input_size=0"):
        preprocess.inference_resize(10, 10, 0)


def test_affine_matrix_matches_golden(golden):
    info = preprocess.inference_resize(392, 640, INPUT_SIZE)
    trans = preprocess.affine_transform_matrix(info.center, info.scale, 0, info.size_wh)
    assert trans.dtype == np.float64 and trans.shape == (2, 3)
    np.testing.assert_allclose(trans, golden["affine_trans"], rtol=0, atol=1e-12)


def test_affine_matrix_is_the_spec_similarity():
    # x' = s (x - cx) + W'/2 with s = short side / min(h, w); inverse undoes it.
    info = preprocess.inference_resize(640, 480, 512)
    trans = preprocess.affine_transform_matrix(info.center, info.scale, 0, info.size_wh)
    s = 512 / 480
    expected = np.array([[s, 0, 256 - s * 240], [0, s, 352 - s * 320]])
    np.testing.assert_allclose(trans, expected, rtol=0, atol=1e-9)
    inv = preprocess.affine_transform_matrix(info.center, info.scale, 0, info.size_wh, inverse=True)
    round_trip = inv @ np.vstack([trans, [0, 0, 1]])
    np.testing.assert_allclose(round_trip, np.eye(3)[:2], rtol=0, atol=1e-9)


def test_affine_matrix_rotation():
    # A 90-degree rotation of the source region turns the map into a pure rotation.
    trans = preprocess.affine_transform_matrix([100, 100], 1.0, 90, (200, 200))
    np.testing.assert_allclose(trans[:, :2], [[0, 1], [-1, 0]], rtol=0, atol=1e-6)


def test_prepare_test_image_matches_golden(golden):
    image, info = preprocess.prepare_test_image(golden["image_raw_rgb"], INPUT_SIZE)
    np.testing.assert_array_equal(info.size_wh, golden["resize_size_wh"])
    warped = preprocess.warp_test_image(golden["image_raw_rgb"], info)
    np.testing.assert_array_equal(warped, golden["image_resized_rgb"])
    assert image.dtype == np.float32 and image.shape == (128, 256, 3)
    reference = golden["input"][0].transpose(1, 2, 0)
    np.testing.assert_allclose(image, reference, rtol=0, atol=1e-6)
    noflip = np.load(GOLDEN / "tiny_forward_noflip.npz")["input"][0].transpose(1, 2, 0)
    np.testing.assert_allclose(image, noflip, rtol=0, atol=1e-6)


def test_normalize_values():
    pixel = np.array([[[0, 128, 255]]], dtype=np.uint8)
    expected = (np.array([0, 128, 255]) / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    out = preprocess.normalize(pixel)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0], expected, rtol=0, atol=1e-6)


def test_prepare_test_image_rejects_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        preprocess.prepare_test_image(np.zeros((8, 8, 3), np.float32), 64)
    with pytest.raises(ValueError, match=r"\[h, w, 3\]"):
        preprocess.prepare_test_image(np.zeros((8, 8), np.uint8), 64)
