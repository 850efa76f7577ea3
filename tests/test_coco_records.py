"""Tests for logocap_jax.data.coco_records: persons, ignore masks and input errors."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from logocap_jax.data import coco_records

REPO = pathlib.Path(__file__).resolve().parents[1]
COCO_MINI = REPO / "data" / "coco_mini"
COCO_MINI_JSON = COCO_MINI / "annotations" / "person_keypoints_mini.json"
GOLDEN = REPO / "tests" / "data" / "golden"


def _records(annotation_file, image_dir, keep=True):
    return list(
        coco_records.image_records(
            str(annotation_file), str(image_dir), keep_images_without_people=keep
        )
    )


def _write_json(path, content):
    path.write_text(json.dumps(content))
    return path


def _person(annotation_id, image_id, **overrides):
    annotation = {
        "id": annotation_id,
        "image_id": image_id,
        "category_id": 1,
        "iscrowd": 0,
        "num_keypoints": 1,
        "keypoints": [10, 20, 2] + [0] * 48,
        "area": 100.0,
        "bbox": [5, 5, 10, 20],
        "segmentation": [[5, 5, 15, 5, 15, 25, 5, 25]],
    }
    annotation.update(overrides)
    return annotation


def _image(image_id, file_name):
    return {"id": image_id, "file_name": file_name, "height": 426, "width": 640}


@pytest.fixture(scope="module")
def mini_records():
    return _records(COCO_MINI_JSON, COCO_MINI / "images")


@pytest.mark.parametrize("key, image_id", [("mask_full_0", 197388), ("mask_full_1", 196141)])
@pytest.mark.parametrize(
    "annotation_file", [GOLDEN / "person_keypoints_subset.json", COCO_MINI_JSON]
)
def test_valid_mask_equals_official(key, image_id, annotation_file):
    golden = np.load(GOLDEN / "tiny_loss.npz")[key]
    records = coco_records.image_records(
        str(annotation_file), str(COCO_MINI / "images"), keep_images_without_people=True
    )
    record = next(r for r in records if r["image_id"] == image_id)
    mask = coco_records.valid_mask(record)
    assert mask.dtype == bool and mask.shape == golden.shape
    np.testing.assert_array_equal(mask, golden)


def test_mini_counts(mini_records):
    # 221 annotations: 140 non-crowd with keypoints, 75 non-crowd without, 6 crowd (none
    # with keypoints). Persons are iscrowd == 0 or num_keypoints > 0: 140 + 75.
    assert len(mini_records) == 38
    assert sum(len(r["area"]) for r in mini_records) == 215
    num_keypoints = np.concatenate([r["num_keypoints"] for r in mini_records])
    assert (num_keypoints > 0).sum() == 140
    assert not np.concatenate([r["iscrowd"] for r in mini_records]).any()
    # Every mini image has an annotation, so training keeps all of them too.
    assert len(_records(COCO_MINI_JSON, COCO_MINI / "images", keep=False)) == 38


def test_record_layout(mini_records):
    record = next(r for r in mini_records if r["image_id"] == 139)
    assert list(record) == [
        "image_id",
        "file_name",
        "image_path",
        "height",
        "width",
        "keypoints",
        "area",
        "bbox",
        "iscrowd",
        "num_keypoints",
        "ignore_rle",
    ]
    assert record["image_path"] == str(COCO_MINI / "images" / "000000000139.jpg")
    assert os.path.isabs(record["image_path"])
    assert (record["height"], record["width"]) == (426, 640)
    assert record["keypoints"].shape == (2, 17, 3)
    assert record["keypoints"].dtype == np.float32
    np.testing.assert_array_equal(record["keypoints"][0, 0], [427, 170, 1])
    np.testing.assert_allclose(record["bbox"][0], [412.8, 157.61, 53.05, 138.01])
    assert record["num_keypoints"].tolist() == [15, 0]
    assert record["iscrowd"].dtype == np.int32 and record["area"].dtype == np.float32
    assert isinstance(record["ignore_rle"], bytes)


def test_crowd_only_and_empty_images(tmp_path):
    crowd = _person(
        7,
        1,
        iscrowd=1,
        num_keypoints=0,
        keypoints=[0] * 51,
        segmentation={"size": [426, 640], "counts": [640 * 10, 30, 640 * 416 - 30]},
    )
    annotation_file = _write_json(
        tmp_path / "a.json",
        {
            "images": [_image(1, "000000000139.jpg"), _image(2, "000000000785.jpg")],
            "annotations": [crowd],
        },
    )
    train = _records(annotation_file, COCO_MINI / "images", keep=False)
    assert [r["image_id"] for r in train] == [1]
    assert train[0]["keypoints"].shape == (0, 17, 3) and train[0]["bbox"].shape == (0, 4)
    ignored = ~coco_records.valid_mask(train[0])
    # Column-major RLE: pixels 6400..6429 are column 15, rows 10..39.
    assert ignored.sum() == 30 and ignored[10:40, 15].all()
    evaluation = _records(annotation_file, COCO_MINI / "images", keep=True)
    assert [r["image_id"] for r in evaluation] == [1, 2]
    assert coco_records.valid_mask(evaluation[1]).all()


def test_image_info_file_without_annotations(tmp_path):
    annotation_file = _write_json(
        tmp_path / "image_info.json", {"images": [_image(1, "000000000139.jpg")], "categories": []}
    )
    (record,) = _records(annotation_file, COCO_MINI / "images")
    assert record["area"].shape == (0,)


def test_missing_annotation_file(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(FileNotFoundError, match="nope.json"):
        coco_records.image_records(str(missing), str(tmp_path), keep_images_without_people=True)


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "'images'"),
        (json.dumps({"annotations": []}), "'images'"),
        (json.dumps({"images": [{"id": 1}]}), "file_name"),
        (
            json.dumps(
                {
                    "images": [_image(1, "000000000139.jpg")],
                    "annotations": [{"id": 9, "image_id": 1, "bbox": [0, 0, 1, 1]}],
                }
            ),
            "annotations\\[0\\]: annotation 9 lacks",
        ),
        (
            json.dumps(
                {
                    "images": [_image(1, "000000000139.jpg")],
                    "annotations": [_person(9, 1, keypoints=[1, 2, 3])],
                }
            ),
            "'keypoints' has 3",
        ),
        (
            json.dumps({"images": [_image(1, "000000000139.jpg")], "annotations": [_person(9, 5)]}),
            "image id 5",
        ),
    ],
)
def test_not_coco_keypoints(tmp_path, content, message):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    with pytest.raises(coco_records.CocoFormatError, match=message) as error:
        coco_records.image_records(
            str(bad), str(COCO_MINI / "images"), keep_images_without_people=True
        )
    assert "bad.json" in str(error.value)


def test_missing_image(tmp_path):
    annotation_file = _write_json(
        tmp_path / "a.json",
        {
            "images": [_image(1, "000000000139.jpg"), _image(2, "missing_image.jpg")],
            "annotations": [_person(3, 1), _person(4, 2)],
        },
    )
    with pytest.raises(FileNotFoundError, match="missing_image.jpg"):
        coco_records.image_records(
            str(annotation_file), str(COCO_MINI / "images"), keep_images_without_people=False
        )


def test_import_does_not_load_tensorflow():
    code = "import sys, logocap_jax.data.coco_records; assert 'tensorflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
