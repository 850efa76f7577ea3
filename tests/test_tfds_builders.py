"""Tests for logocap_jax.data.tfds_builders: ArrayRecord round trips without TensorFlow."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from logocap_jax import errors
from logocap_jax.commands import build_data, cli
from logocap_jax.data import coco_records, record_source, tfds_builders

REPO = pathlib.Path(__file__).resolve().parents[1]
DATA = REPO / "data"


def _mini_records(name, keep):
    return list(
        coco_records.image_records(
            str(DATA / name / "annotations" / "person_keypoints_mini.json"),
            str(DATA / name / "images"),
            keep_images_without_people=keep,
        )
    )


def _assert_records_equal(actual, expected):
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected):
        assert list(got) == list(want)
        for key, value in want.items():
            if isinstance(value, np.ndarray):
                assert got[key].dtype == value.dtype and got[key].shape == value.shape, key
                np.testing.assert_array_equal(got[key], value, err_msg=key)
            else:
                assert type(got[key]) is type(value) and got[key] == value, key


def _read(source):
    return [source[i] for i in range(len(source))]


def _split_files(data_dir):
    return {
        path: (path.stat().st_mtime_ns, path.read_bytes())
        for path in pathlib.Path(data_dir).rglob("*")
        if path.is_file()
    }


@pytest.fixture(scope="module")
def mini_dir(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    for name in tfds_builders.MINI_DATASETS:
        tfds_builders.build_mini(name, str(data_dir))
    return data_dir


@pytest.mark.parametrize("name", tfds_builders.MINI_DATASETS)
@pytest.mark.parametrize("split, keep", [("train", False), ("val", True)])
def test_mini_round_trip(mini_dir, name, split, keep):
    source = record_source.data_source(f"coco_format/{name}", split, str(mini_dir))
    expected = _mini_records(name, keep)
    _assert_records_equal(_read(source), expected)
    _assert_records_equal(source.__getitems__([1, 0]), [expected[1], expected[0]])


def test_build_is_idempotent(mini_dir):
    before = _split_files(mini_dir)
    builder = tfds_builders.build_mini("coco_mini", str(mini_dir))
    assert _split_files(mini_dir) == before
    source = record_source.RecordSource(builder.as_data_source("val"))
    _assert_records_equal(_read(source), _mini_records("coco_mini", True))


def test_a_build_from_images_elsewhere_is_rebuilt(tmp_path):
    """Records hold absolute image paths, so a data set built from a checkout or data folder
    that has since moved is rebuilt from the current one instead of pointing at missing files."""
    data_dir = str(tmp_path / "tfds")
    first, second = tmp_path / "first", tmp_path / "second"
    for folder in (first, second):
        (folder / "images").mkdir(parents=True)
        (folder / "annotations").symlink_to(DATA / "ochuman_mini" / "annotations")
        for image in (DATA / "ochuman_mini" / "images").iterdir():
            (folder / "images" / image.name).symlink_to(image)
    tfds_builders.build_mini("ochuman_mini", data_dir, str(first))
    builder = tfds_builders.build_mini("ochuman_mini", data_dir, str(second))
    paths = [
        r["image_path"] for r in _read(record_source.RecordSource(builder.as_data_source("val")))
    ]
    assert paths and all(path.startswith(str(second / "images")) for path in paths)
    assert builder.info.metadata["image_dir"] == str(second / "images")


def _manual_dir(root, files):
    """Lays out `files` (relative path -> source path) as symlinks under root."""
    for relative, source in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(source, root / relative)
    return root


def test_coco_person_keypoints_from_manual_dir(tmp_path):
    image_info = tmp_path / "image_info.json"
    image_info.write_text(
        json.dumps(
            {"images": [{"id": 1, "file_name": "000000000139.jpg", "height": 426, "width": 640}]}
        )
    )
    coco_json = DATA / "coco_mini" / "annotations" / "person_keypoints_mini.json"
    manual_dir = _manual_dir(
        tmp_path / "coco",
        {
            "annotations/person_keypoints_val2017.json": coco_json,
            "images/val2017": DATA / "coco_mini" / "images",
            "annotations/image_info_test-dev2017.json": image_info,
            "images/test2017": DATA / "coco_mini" / "images",
        },
    )
    data_dir = str(tmp_path / "tfds")
    tfds_builders.build_named(
        tfds_builders.CocoPersonKeypoints, data_dir, str(manual_dir), ["val2017", "test_dev2017"]
    )
    val = record_source.data_source("coco_person_keypoints/val2017", "val2017", data_dir)
    expected = list(
        coco_records.image_records(
            str(manual_dir / "annotations/person_keypoints_val2017.json"),
            str(manual_dir / "images/val2017"),
            keep_images_without_people=True,
        )
    )
    _assert_records_equal(_read(val), expected)
    (test_dev,) = _read(
        record_source.data_source("coco_person_keypoints/test_dev2017", "test_dev2017", data_dir)
    )
    assert test_dev["image_id"] == 1 and test_dev["keypoints"].shape == (0, 17, 3)
    assert coco_records.valid_mask(test_dev).all()


def test_ochuman_from_manual_dir(tmp_path):
    manual_dir = _manual_dir(
        tmp_path / "ochuman",
        {
            "annotations/ochuman_coco_format_test_range_0.00_1.00.json": DATA
            / "ochuman_mini"
            / "annotations"
            / "person_keypoints_mini.json",
            "images": DATA / "ochuman_mini" / "images",
        },
    )
    data_dir = str(tmp_path / "tfds")
    arguments = ["--dataset", "ochuman", "--data_dir", data_dir, "--manual_dir", str(manual_dir)]
    with pytest.raises(SystemExit) as exit_info:
        cli.run_main(build_data.main, [*arguments, "--configs", "test"])
    assert exit_info.value.code == 0
    records = _read(record_source.data_source("ochuman/test", "test", data_dir))
    assert [len(r["area"]) for r in records] == [1, 2, 2]
    assert records[0]["image_path"] == str(manual_dir / "images" / "003799.jpg")


def test_crowd_only_image_round_trip(tmp_path):
    crowd = {
        "id": 5,
        "image_id": 1,
        "category_id": 1,
        "iscrowd": 1,
        "num_keypoints": 0,
        "keypoints": [0] * 51,
        "area": 30.0,
        "bbox": [15, 10, 1, 30],
        "segmentation": {"size": [426, 640], "counts": [6400, 30, 426 * 640 - 6430]},
    }
    annotation_file = tmp_path / "a.json"
    annotation_file.write_text(
        json.dumps(
            {
                "images": [
                    {"id": 1, "file_name": "000000000139.jpg", "height": 426, "width": 640},
                    {"id": 2, "file_name": "000000000785.jpg", "height": 425, "width": 640},
                ],
                "annotations": [crowd],
            }
        )
    )
    images = str(DATA / "coco_mini" / "images")
    builder = tfds_builders.build_coco_format(
        "crowd",
        str(annotation_file),
        images,
        str(tmp_path / "tfds"),
        splits={"train": False, "val": True},
    )
    for split, keep in [("train", False), ("val", True)]:
        expected = list(
            coco_records.image_records(
                str(annotation_file), images, keep_images_without_people=keep
            )
        )
        got = _read(record_source.RecordSource(builder.as_data_source(split)))
        _assert_records_equal(got, expected)
    assert (~coco_records.valid_mask(got[0])).sum() == 30


def test_split_of_only_bad_records_fails_before_writing(tmp_path):
    annotation_file = tmp_path / "a.json"
    annotation_file.write_text(
        json.dumps({"images": [{"id": 1, "file_name": "gone.jpg", "height": 4, "width": 4}]})
    )
    with pytest.raises(tfds_builders.BuildError, match="val: all 1 records are bad.*gone.jpg"):
        tfds_builders.build_coco_format(
            "bad", str(annotation_file), str(tmp_path), str(tmp_path / "tfds"), splits={"val": True}
        )
    assert not list((tmp_path / "tfds").rglob("*.array_record*"))


def test_cli_requires_manual_dir(tmp_path):
    with pytest.raises(errors.UsageError, match="--manual_dir is required"):
        build_data.main(["--dataset", "coco", "--data_dir", str(tmp_path)])


def test_no_tensorflow(tmp_path):
    code = (
        "import sys\n"
        "from logocap_jax.data import record_source, tfds_builders\n"
        f"tfds_builders.build_mini('ochuman_mini', {str(tmp_path)!r})\n"
        "source = record_source.data_source('coco_format/ochuman_mini', 'val', "
        f"{str(tmp_path)!r})\n"
        "assert len(source) == 3 and source[2]['keypoints'].shape == (2, 17, 3)\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]


def test_train_source_keeps_the_configured_image_ids(mini_dir):
    from logocap_jax import config_utils
    from logocap_jax.training import trainer

    data = config_utils.load_config(str(REPO / "configs" / "mini.py")).data
    data.data_dir = str(mini_dir)
    data.image_ids = (40083, 785)
    source = trainer.open_train_source(data)
    assert [record["image_id"] for record in source] == [40083, 785]
    by_id = {r["image_id"]: r for r in _mini_records("coco_mini", False)}
    _assert_records_equal(source, [by_id[40083], by_id[785]])
    data.max_examples = 1
    assert [record["image_id"] for record in trainer.open_train_source(data)] == [40083]
    data.image_ids = (785, 123456789)
    with pytest.raises(ValueError, match=r"data.image_ids not in coco_mini train: \[123456789\]"):
        trainer.open_train_source(data)
