"""Bad training data on a copy of coco_mini: corrupt images and malformed annotations are skipped
at build time and listed in the build report (an error under strict); an image that breaks after
the build is replaced in the input pipeline, the same way on every run."""

import collections
import json
import logging
import pathlib
import shutil
import subprocess
import sys

import cv2
import grain
import numpy as np
import pytest

from logocap_jax.commands import build_data, cli
from logocap_jax.data import (
    coco_records,
    input_pipeline,
    record_checks,
    record_source,
    tfds_builders,
)
from logocap_jax.inference import preprocess

REPO = pathlib.Path(__file__).resolve().parents[1]
MINI = REPO / "data" / "coco_mini"
MINI_JSON = MINI / "annotations" / "person_keypoints_mini.json"
SIZES = dict(input_size=128, output_size=32, max_people=4)
SPLITS = {"train": False, "val": True}
SINGLE = grain.sharding.NoSharding()


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _drop_key(key):
    return lambda entry: entry.pop(key)


def _set(key, value):
    return lambda entry: entry.__setitem__(key, value)


def _set_keypoint(index, value):
    return lambda annotation: annotation["keypoints"].__setitem__(index, value)


# name -> (what is broken: "file", "image" entry or first "annotation"; how; problem; reason).
CASES = {
    "random_bytes": (
        "file",
        lambda path: path.write_bytes(np.random.default_rng(0).bytes(5000)),
        "not_decodable",
        "cannot decode",
    ),
    "truncated_jpeg": ("file", _truncate, "partially_decoded", "end-of-image marker"),
    "empty_file": ("file", lambda path: path.write_bytes(b""), "empty", "empty"),
    "text_named_jpg": (
        "file",
        lambda path: path.write_text("not an image\n"),
        "not_decodable",
        "cannot decode",
    ),
    "missing_file": ("file", lambda path: path.unlink(), "missing", "not found"),
    "wrong_keypoint_count": (
        "annotation",
        lambda annotation: annotation["keypoints"].pop(),
        "bad_keypoints",
        "has 50 values, expected 51",
    ),
    "nan_keypoint": ("annotation", _set_keypoint(0, float("nan")), "bad_keypoints", "nan"),
    "visibility_3": ("annotation", _set_keypoint(2, 3), "bad_keypoints", "visibility 3"),
    "negative_area": ("annotation", _set("area", -1.0), "bad_value", "'area' is -1.0"),
    "annotation_missing_key": (
        "annotation",
        _drop_key("keypoints"),
        "missing_key",
        "lacks key(s) ['keypoints']",
    ),
    "image_size_mismatch": (
        "image",
        lambda image: image.__setitem__("height", image["height"] + 1),
        "image_size_mismatch",
        "but the annotation says",
    ),
    "image_missing_key": ("image", _drop_key("width"), "missing_key", "lacks key(s) ['width']"),
}
NUM_GOOD = 3
# An image without people whose file is text: a record of "val" only.
NO_PEOPLE = {"id": 1, "file_name": "no_people.jpg", "height": 8, "width": 8}


def _mini_subset(num_images):
    """The first coco_mini images whose annotations all have polygon segmentations."""
    dataset = json.loads(MINI_JSON.read_text())
    by_image = collections.defaultdict(list)
    for annotation in dataset["annotations"]:
        by_image[annotation["image_id"]].append(annotation)
    images = [
        image
        for image in dataset["images"]
        if by_image[image["id"]]
        and all(isinstance(a["segmentation"], list) for a in by_image[image["id"]])
    ][:num_images]
    return images, [a for image in images for a in by_image[image["id"]]]


def _write_set(root, images, annotations):
    """A mini-set folder (annotations/person_keypoints_mini.json, images/) under root."""
    (root / "annotations").mkdir(parents=True)
    (root / "images").mkdir()
    for image in images:
        shutil.copy(MINI / "images" / image["file_name"], root / "images")
    annotation_file = root / "annotations" / "person_keypoints_mini.json"
    annotation_file.write_text(json.dumps({"images": images, "annotations": annotations}))
    return annotation_file


@pytest.fixture(scope="module")
def bad_set(tmp_path_factory):
    """A copy of coco_mini images with one case of CASES per image, then NUM_GOOD good ones,
    NO_PEOPLE and an annotation of an unknown image. Returns (folder, image id -> case, good
    ids)."""
    root = tmp_path_factory.mktemp("bad_set")
    images, annotations = _mini_subset(len(CASES) + NUM_GOOD)
    cases = dict(zip([image["id"] for image in images], CASES))
    first_annotation = {}
    for annotation in annotations:
        first_annotation.setdefault(annotation["image_id"], annotation)
    orphan = {**annotations[0], "id": 424242, "image_id": 999999999}
    annotation_file = _write_set(root, images, annotations + [orphan])
    (root / "images" / NO_PEOPLE["file_name"]).write_text("no image here")
    dataset = json.loads(annotation_file.read_text())
    for image_id, case in cases.items():
        target, corrupt = CASES[case][:2]
        index = next(i for i, image in enumerate(dataset["images"]) if image["id"] == image_id)
        if target == "file":
            corrupt(root / "images" / images[index]["file_name"])
        elif target == "image":
            corrupt(dataset["images"][index])
        else:
            (j,) = [
                j
                for j, a in enumerate(dataset["annotations"])
                if a["id"] == first_annotation[image_id]["id"]
            ]
            corrupt(dataset["annotations"][j])
    dataset["images"].append(NO_PEOPLE)
    annotation_file.write_text(json.dumps(dataset))
    good = [image["id"] for image in images[len(CASES) :]]
    return root, cases, good


def _build(root, data_dir, **kwargs):
    return tfds_builders.build_coco_format(
        "bad_set",
        str(root / "annotations" / "person_keypoints_mini.json"),
        str(root / "images"),
        str(data_dir),
        splits=SPLITS,
        **kwargs,
    )


def _clean_records(bad_set, tmp_path, keep):
    """The records a file holding only the good images and their annotations gives."""
    root, _, good = bad_set
    images, annotations = _mini_subset(len(CASES) + NUM_GOOD)
    annotation_file = tmp_path / "clean.json"
    annotation_file.write_text(
        json.dumps(
            {
                "images": [image for image in images if image["id"] in good],
                "annotations": [a for a in annotations if a["image_id"] in good],
            }
        )
    )
    return list(
        coco_records.image_records(
            str(annotation_file), str(root / "images"), keep_images_without_people=keep
        )
    )


def test_build_skips_and_reports_bad_records(bad_set, tmp_path):
    root, cases, good = bad_set
    builder = _build(root, tmp_path / "tfds")
    report = json.loads((pathlib.Path(builder.data_dir) / tfds_builders.REPORT_FILE).read_text())
    for split, keep in SPLITS.items():
        expected = {image_id: CASES[case][2] for image_id, case in cases.items()}
        if keep:
            expected[NO_PEOPLE["id"]] = "not_decodable"
        entry = report["splits"][split]
        assert {e["image_id"]: e["problem"] for e in entry["skipped_records"]} == expected
        assert entry["skipped"] == len(expected) and entry["records"] == NUM_GOOD
        assert entry["skipped_by_problem"] == dict(collections.Counter(expected.values()))
        for skipped in entry["skipped_records"]:
            case = cases.get(skipped["image_id"], "text_named_jpg")
            assert CASES[case][3] in skipped["reason"], case
            assert skipped["entry"].startswith("images[") and skipped["file_name"], case
            if CASES[case][0] == "file":
                assert skipped["reason"].endswith(str(root / "images" / skipped["file_name"]))
        records = record_source.data_source("coco_format/bad_set", split, str(tmp_path / "tfds"))
        assert [records[i]["image_id"] for i in range(len(records))] == good
        clean = _clean_records(bad_set, tmp_path, keep)
        for got, want in zip([records[i] for i in range(len(records))], clean):
            for key, value in want.items():
                np.testing.assert_array_equal(got[key], value, err_msg=key)
    (orphan,) = report["ignored_annotations"]
    assert orphan["problem"] == "unknown_image_id" and "999999999" in orphan["reason"]
    metadata = json.loads((pathlib.Path(builder.data_dir) / "metadata.json").read_text())
    assert metadata["skipped_records"] == {"train": len(CASES), "val": len(CASES) + 1}
    assert metadata["records"] == {"train": NUM_GOOD, "val": NUM_GOOD}
    assert (
        metadata["skipped_by_problem"]["train"] == report["splits"]["train"]["skipped_by_problem"]
    )
    assert metadata["ignored_annotations"] == 1
    assert builder.info.metadata["skipped_records"] == metadata["skipped_records"]

    # A strict call on the data set built with records skipped fails naming one.
    with pytest.raises(tfds_builders.BuildError, match=r"built with bad records skipped.*images\["):
        _build(root, tmp_path / "tfds", strict=True)


def test_strict_build_fails_naming_the_record_and_writes_nothing(bad_set, tmp_path):
    root, cases, _ = bad_set
    first_case = next(iter(CASES))
    first_id = next(image_id for image_id, case in cases.items() if case == first_case)
    file_name = next(
        image["file_name"] for image in _mini_subset(len(cases))[0] if image["id"] == first_id
    )
    with pytest.raises(
        tfds_builders.BuildError,
        match=rf"{len(CASES) + 2} bad record\(s\).*images\[0\] \(image id {first_id}, "
        rf"{file_name}\): cannot decode",
    ):
        _build(root, tmp_path / "tfds", strict=True)
    assert not [path for path in (tmp_path / "tfds").rglob("*") if path.is_file()]


def _run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "logocap_jax.commands.build_data", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
    )


@pytest.mark.slow
def test_cli_user_errors_are_one_line_with_status_2(bad_set, tmp_path):
    root, _, _ = bad_set
    data_dir = str(tmp_path / "tfds")
    lenient = _run_cli("--dataset", "coco_mini", "--manual_dir", str(root), "--data_dir", data_dir)
    assert lenient.returncode == 0, lenient.stderr[-2000:]
    assert f"train {NUM_GOOD} records ({len(CASES)} skipped)" in lenient.stdout
    result = _run_cli(
        "--dataset", "coco_mini", "--manual_dir", str(root), "--data_dir", data_dir, "--strict"
    )
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert "error:" in line and "images[" in line and str(root / "images") in line


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dataset", "coco", "--manual_dir", "{tmp}/nowhere"], "manual dir not found"),
        (["--dataset", "coco_mini", "--manual_dir", "{tmp}"], "annotation file not found"),
        (["--dataset", "coco_mini", "--manual_dir", "{not_json}"], "is not valid JSON"),
        (["--dataset", "ochuman", "--manual_dir", "{tmp}", "--configs", "nope"], "'nope'"),
        (["--dataset", "coco"], "--manual_dir is required"),
        (["--dataset", "nope"], "--dataset=nope"),
    ],
)
def test_cli_user_error_messages(tmp_path, capsys, args, message):
    not_json = tmp_path / "not_json"
    (not_json / "annotations").mkdir(parents=True)
    (not_json / "annotations" / "person_keypoints_mini.json").write_text("{oops")
    args = [arg.format(tmp=tmp_path, not_json=not_json) for arg in args]
    with pytest.raises(SystemExit) as exit_info:
        cli.run_main(build_data.main, [*args, "--data_dir", str(tmp_path / "tfds")])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "error: " in line and message in line


@pytest.mark.slow
def test_cli_verbose_shows_the_traceback(tmp_path):
    result = _run_cli(
        "--dataset", "coco_mini", "--manual_dir", str(tmp_path), "--data_dir", str(tmp_path)
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    verbose = _run_cli(
        "--dataset",
        "coco_mini",
        "--manual_dir",
        str(tmp_path),
        "--data_dir",
        str(tmp_path),
        "--verbose",
    )
    assert verbose.returncode == 2 and "Traceback" in verbose.stderr
    assert "InputNotFoundError: COCO annotation file not found" in verbose.stderr


def _one_image(tmp_path, image_overrides=None, annotations=()):
    """screen_records on a file of one coco_mini image (139, 426 x 640) and `annotations`."""
    image = {"id": 139, "file_name": "000000000139.jpg", "height": 426, "width": 640}
    image.update(image_overrides or {})
    annotation_file = tmp_path / "one.json"
    annotation_file.write_text(json.dumps({"images": [image], "annotations": list(annotations)}))
    return coco_records.screen_records(
        str(annotation_file), str(MINI / "images"), keep_images_without_people=[True]
    )


def _person(**overrides):
    (annotation,) = [a for a in _mini_subset(1)[1] if a["id"] == 230831]
    return {**annotation, **overrides}


def _crowd(segmentation):
    return _person(id=7, iscrowd=1, num_keypoints=0, segmentation=segmentation)


@pytest.mark.parametrize(
    "image, annotation, problem, reason",
    [
        ({"id": "139"}, None, "bad_value", "'id' is '139', expected an integer"),
        ({"id": 139, "height": 0}, None, "bad_value", "'height' is 0"),
        ({"id": 139, "file_name": None}, None, "bad_value", "'file_name' is None"),
        (None, _person(keypoints=None), "bad_keypoints", "'keypoints' is None"),
        (None, _person(keypoints=["1"] * 51), "bad_keypoints", "holds '1'"),
        (None, _person(keypoints=[0, 0, -1] * 17), "bad_keypoints", "visibility -1"),
        (None, _person(keypoints=[0, 0, 0.5] * 17), "bad_keypoints", "visibility 0.5"),
        (None, _person(area=float("inf")), "bad_value", "'area' is inf"),
        (None, _person(area="big"), "bad_value", "'area' is 'big'"),
        (None, _person(bbox=[1, 2, 3]), "bad_value", "'bbox' is [1, 2, 3]"),
        (None, _person(bbox=[1, 2, -3, 4]), "bad_value", "'bbox' is [1, 2, -3, 4]"),
        (None, _person(iscrowd=2), "bad_value", "'iscrowd' is 2"),
        (None, _person(num_keypoints=-1), "bad_value", "'num_keypoints' is -1"),
        (None, _crowd([[1, 2]]), "bad_segmentation", "pycocotools"),
        (None, _crowd([[1, 2, 3, float("nan"), 5, 6]]), "bad_segmentation", "finite"),
        (None, _crowd({"counts": "x", "size": [1, 1]}), "bad_segmentation", "RLE size"),
        (None, _crowd(None), "bad_segmentation", "neither polygons nor RLE"),
    ],
)
def test_each_class_of_malformed_entry_is_a_bad_record(
    tmp_path, image, annotation, problem, reason
):
    screened = _one_image(tmp_path, image, [annotation] if annotation is not None else [])
    (bad,) = screened.bad.values()
    assert bad.problem == problem and bad.entry == "images[0]"
    assert reason in bad.reason


@pytest.mark.parametrize(
    "annotation, problem",
    [
        (["not", "an", "object"], "missing_key"),
        ({k: v for k, v in _person().items() if k != "image_id"}, "missing_key"),
        (_person(image_id=None), "bad_value"),
        (_person(image_id=140), "unknown_image_id"),
        (_person(image_id=140, keypoints=[]), "bad_keypoints"),
    ],
)
def test_annotations_of_no_image_are_listed_not_attached(tmp_path, annotation, problem):
    screened = _one_image(tmp_path, annotations=[_person(), annotation])
    assert not screened.bad
    (ignored,) = screened.ignored_annotations
    assert ignored.problem == problem and ignored.entry.startswith("annotations[1]")
    (record,) = screened.records([0])
    assert len(record["area"]) == 1


def test_repeated_image_id_skips_every_entry(tmp_path):
    annotation_file = tmp_path / "repeat.json"
    image = {"id": 139, "file_name": "000000000139.jpg", "height": 426, "width": 640}
    other = {"id": 785, "file_name": "000000000785.jpg", "height": 425, "width": 640}
    annotation_file.write_text(json.dumps({"images": [image, other, image], "annotations": []}))
    screened = coco_records.screen_records(
        str(annotation_file), str(MINI / "images"), keep_images_without_people=[True]
    )
    assert {i: bad.problem for i, bad in screened.bad.items()} == {
        0: "repeated_image_id",
        2: "repeated_image_id",
    }
    assert [r["image_id"] for r in screened.records([1])] == [785]


def test_good_images_read_as_preprocess_does():
    for path in sorted((MINI / "images").glob("*.jpg"))[:5]:
        np.testing.assert_array_equal(
            record_checks.read_checked_image(str(path)), preprocess.read_image(str(path))
        )


@pytest.mark.parametrize(
    "params",
    [[], [cv2.IMWRITE_JPEG_PROGRESSIVE, 1], [cv2.IMWRITE_JPEG_RST_INTERVAL, 4]],
    ids=["baseline", "progressive", "restart_markers"],
)
def test_truncated_jpegs_are_caught(tmp_path, params):
    image = cv2.imread(str(MINI / "images" / "000000000139.jpg"))
    ok, encoded = cv2.imencode(".jpg", image, params)
    data = encoded.tobytes()
    path = tmp_path / "image.jpg"
    path.write_bytes(data + b"bytes a camera appended")
    assert record_checks.read_checked_image(str(path), 426, 640).shape == (426, 640, 3)
    # About 100 cuts, from inside the headers to the last byte before the end marker.
    for end in [*range(3, len(data) - 2, len(data) // 97), len(data) - 2, len(data) - 1]:
        path.write_bytes(data[:end])
        with pytest.raises(record_checks.BadImageError) as error:
            record_checks.read_checked_image(str(path))
        # Cut inside the headers OpenCV decodes nothing; later it fills the rest in.
        assert error.value.problem in ("not_decodable", "partially_decoded"), end


@pytest.mark.parametrize(
    "make, problem",
    [
        (lambda path: path.mkdir(), "not_a_file"),
        (lambda path: path.write_bytes(b"\xff\xd8\xff\x01garbage"), "not_decodable"),
        (lambda path: path.write_bytes(_png()[:-20]), "not_decodable"),
    ],
    ids=["directory", "jpeg_header_then_garbage", "truncated_png"],
)
def test_other_unusable_files(tmp_path, make, problem):
    path = tmp_path / "image.jpg"
    make(path)
    with pytest.raises(record_checks.BadImageError, match=str(path)) as error:
        record_checks.read_checked_image(str(path))
    assert error.value.problem == problem


def _png():
    return cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes()


# The pipeline: records whose images break after the build.


@pytest.fixture(scope="module")
def pipeline_set(tmp_path_factory):
    """(folder, source) of 10 good coco_mini images, built; tests break images afterwards."""
    root = tmp_path_factory.mktemp("pipeline_set")
    _write_set(root, *_mini_subset(10))
    data_dir = str(root / "tfds")
    tfds_builders.build_mini("coco_mini", data_dir, str(root))
    return root, record_source.data_source("coco_format/coco_mini", "train", data_dir)


def _batches(source, count, shard_options=SINGLE, **kwargs):
    dataset = input_pipeline.make_train_dataset(
        source, batch_size=2, seed=1, shard_options=shard_options, **SIZES, **kwargs
    )
    iterator = iter(dataset)
    # Copies, because batches from workers are views of shared memory.
    batches = [{k: np.array(v) for k, v in next(iterator).items()} for _ in range(count)]
    if kwargs.get("worker_count"):
        iterator.close()
    return batches


def _assert_same(actual, expected):
    for got, want in zip(actual, expected, strict=True):
        assert sorted(got) == sorted(want)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_pipeline_replaces_records_broken_after_the_build(pipeline_set, monkeypatch, caplog):
    root, source = pipeline_set
    steps = 12  # 2.4 epochs of 10 records.
    clean_ids = np.concatenate([b["image_id"] for b in _batches(source, steps + 3)])
    records = {source[i]["image_id"]: source[i] for i in range(len(source))}
    # Break three records, two of them next to each other in the stream.
    broken = {int(clean_ids[3]): _truncate, int(clean_ids[4]): lambda p: p.unlink()}
    broken[int(clean_ids[8])] = lambda p: cv2.imwrite(str(p), np.zeros((5, 7, 3), np.uint8))
    backups = {}
    for image_id, corrupt in broken.items():
        path = pathlib.Path(records[image_id]["image_path"])
        backups[path] = path.read_bytes()
        corrupt(path)
    monkeypatch.setattr(input_pipeline, "_warned_records", set())
    try:
        with caplog.at_level(logging.WARNING, logger=input_pipeline.__name__):
            first = _batches(source, steps)
        again = _batches(source, steps)
        workers = _batches(source, steps, worker_count=2)
    finally:
        for path, data in backups.items():
            path.write_bytes(data)

    _assert_same(again, first)
    _assert_same(workers, first)
    ids = np.concatenate([b["image_id"] for b in first])
    replaced = np.concatenate([b["replaced"] for b in first])
    for i, (image_id, skipped) in enumerate(zip(ids, replaced)):
        # Position i takes the first record at or after it whose image is intact.
        expected = next(k for k in range(len(clean_ids) - i) if clean_ids[i + k] not in broken)
        assert (skipped, image_id) == (expected, clean_ids[i + expected]), i
    assert replaced.sum() >= 3 and not set(ids.tolist()) & set(broken)
    for image_id, reason in zip(broken, ("end-of-image marker", "not found", "annotation says")):
        path = records[image_id]["image_path"]
        (message,) = [r.getMessage() for r in caplog.records if path in r.getMessage()]
        assert reason in message and f"image id {image_id}" in message
    # The examples are those of the replacement records, augmented as their position says.
    example = input_pipeline.train_example(
        records[int(ids[3])], input_pipeline.example_rng(1, 3), **SIZES
    )
    np.testing.assert_array_equal(first[1]["images"][1], example["images"])


def test_process_shards_get_the_same_replacements(pipeline_set):
    root, source = pipeline_set
    clean_ids = np.concatenate([b["image_id"] for b in _batches(source, 2)])
    path = pathlib.Path(
        next(source[i] for i in range(len(source)) if source[i]["image_id"] == clean_ids[0])[
            "image_path"
        ]
    )
    data = path.read_bytes()
    path.write_text("broken")
    try:
        single = _batches(source, 2)
        shards = [_batches(source, 2, grain.sharding.ShardOptions(index, 2)) for index in (0, 1)]
    finally:
        path.write_bytes(data)
    assert single[0]["replaced"].tolist() == [1, 0]
    for index, shard in enumerate(shards):
        _assert_same(shard, [{k: v[index::2] for k, v in batch.items()} for batch in single])
