"""Bad image and annotation files in prediction and evaluation: skipped and reported, or one line.

A folder of good photos mixed with every class of unreadable file (missing, not a file, empty,
not an image, corrupt beyond use) and with partially decodable ones (truncated JPEG, JPEG with
damaged data) goes through the predict CLI: the bad files are named and listed, the good ones
give the results of a clean run. Evaluation counts an unreadable image as having no detections.
Malformed annotation files are one-line errors naming the file, the entry and its id.

Runs use the tiny golden weights without flip test and with the 'partial' adaptation (set by
config overrides), which compile faster; what is tested does not depend on the settings.
"""

import importlib
import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from logocap_jax import config_utils, errors, weights
from logocap_jax.commands import cli
from logocap_jax.commands import predict as predict_command
from logocap_jax.data import coco_records
from logocap_jax.evaluation import coco_eval, evaluate
from logocap_jax.inference import predict, preprocess, speed

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "tiny.py")
STATE_DICT = str(ROOT / "tests" / "data" / "golden" / "tiny_state_dict.npz")
IMAGES = ROOT / "data" / "coco_mini" / "images"
SUBSET = ROOT / "tests" / "data" / "golden" / "person_keypoints_subset.json"
FAST = ["--config.decode.flip_test=false", "--config.decode.adaptation=partial"]
GOOD_ID, OTHER_ID = 197388, 129648
GOOD = {"good_a.jpg": GOOD_ID, "good_b.jpg": OTHER_ID}
TIMEOUT = 600


def jpeg_bytes(image_id):
    return (IMAGES / f"{image_id:012d}.jpg").read_bytes()


def png_bytes(image_id):
    return cv2.imencode(".png", cv2.imread(str(IMAGES / f"{image_id:012d}.jpg")))[1].tobytes()


def zeroed_middle(data, count=1000):
    """JPEG data with `count` bytes zeroed mid-scan: libjpeg warns and decodes on."""
    middle = len(data) // 2
    return data[:middle] + bytes(count) + data[middle + count :]


# name -> (bytes or a maker of the path, problem class, skipped). The truncation points lie
# inside the entropy-coded data, where OpenCV still returns an image.
def bad_files():
    data = jpeg_bytes(229358)
    return {
        "truncated.jpg": (data[: len(data) * 6 // 10], "partially_decoded", False),
        "damaged.jpg": (zeroed_middle(jpeg_bytes(196141)), "partially_decoded", False),
        "no_end_marker.jpg": (data[:-2], "partially_decoded", False),
        "random_bytes.jpg": (
            np.random.default_rng(0).bytes(5000),
            "not_decodable",
            True,
        ),
        "empty.jpg": (b"", "empty", True),
        "text.png": (b"this is not a picture\n", "not_decodable", True),
        "cut.png": (png_bytes(211325)[:50000], "not_decodable", True),
        "header_only.jpg": (data[:600], "not_decodable", True),
        "folder.jpg": (lambda path: path.mkdir(), "not_a_file", True),
        "fifo.jpg": (lambda path: os.mkfifo(path), "not_a_file", True),
        "broken_link.jpg": (lambda path: path.symlink_to(path.parent / "gone"), "missing", True),
    }


def make_folder(folder, names=None):
    folder.mkdir(parents=True, exist_ok=True)
    for name, image_id in GOOD.items():
        (folder / name).write_bytes(jpeg_bytes(image_id))
    for name, (content, _, _) in bad_files().items():
        if names is None or name in names:
            path = folder / name
            content(path) if callable(content) else path.write_bytes(content)
    return folder


# ---------------------------------------------------------------------------- reading


@pytest.mark.parametrize("name", sorted(bad_files()))
def test_each_bad_file_is_classified(tmp_path, name):
    make_folder(tmp_path, [name])
    _, problem, skipped = bad_files()[name]
    path = tmp_path / name
    if skipped:
        with pytest.raises(preprocess.ImageReadError) as error:
            preprocess.decode_image_file(path)
        assert error.value.problem == problem and error.value.path == str(path)
        assert str(error.value).startswith(f"{path}: ")
        assert errors.is_user_error(error.value)
    else:
        decoded = preprocess.decode_image_file(path)
        assert decoded.damage is not None and decoded.damage.startswith("partially decoded")
        assert decoded.image.dtype == np.uint8 and decoded.image.ndim == 3
        with pytest.warns(preprocess.PartialImageWarning, match=name):
            preprocess.read_image(path)


def test_the_two_partial_decode_signals(tmp_path):
    """A missing end marker is found in the file's structure; zeroed scan data only by
    libjpeg, whose warning is captured (and not printed unnamed)."""
    make_folder(tmp_path, ["no_end_marker.jpg", "damaged.jpg"])
    assert "ends before its end-of-image marker" in (
        preprocess.decode_image_file(tmp_path / "no_end_marker.jpg").damage
    )
    damage = preprocess.decode_image_file(tmp_path / "damaged.jpg").damage
    assert "libjpeg: Corrupt JPEG data" in damage
    assert "end-of-image" not in damage


@pytest.mark.parametrize("progressive", [False, True])
def test_no_truncation_of_a_jpeg_passes_as_complete(tmp_path, progressive):
    image = cv2.imread(str(IMAGES / f"{GOOD_ID:012d}.jpg"))
    data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_PROGRESSIVE, int(progressive)])[1]
    data = data.tobytes()
    path = tmp_path / "cut.jpg"
    for fraction in np.linspace(0.05, 0.995, 12):
        path.write_bytes(data[: int(len(data) * fraction)])
        try:
            decoded = preprocess.decode_image_file(path)
        except preprocess.ImageReadError as error:
            assert error.problem == "not_decodable"
            continue
        assert decoded.damage is not None, fraction


def test_complete_files_are_not_flagged(tmp_path):
    """Bytes after the end marker (some cameras append data) and every written format."""
    image = cv2.imread(str(IMAGES / f"{GOOD_ID:012d}.jpg"))
    (tmp_path / "appended.jpg").write_bytes(jpeg_bytes(GOOD_ID) + b"camera data" * 100)
    for extension in (".png", ".bmp", ".webp", ".jpg"):
        cv2.imwrite(str(tmp_path / f"written{extension}"), image)
    for path in sorted(tmp_path.iterdir()):
        decoded = preprocess.decode_image_file(path)
        assert decoded.damage is None, path
        assert decoded.image.shape == image.shape


def test_truncated_bmp_and_png_are_never_complete(tmp_path):
    image = cv2.imread(str(IMAGES / f"{GOOD_ID:012d}.jpg"))
    for extension in (".bmp", ".png", ".webp"):
        data = cv2.imencode(extension, image)[1].tobytes()
        path = tmp_path / f"cut{extension}"
        path.write_bytes(data[: len(data) * 9 // 10])
        try:
            assert preprocess.decode_image_file(path).damage is not None, extension
        except preprocess.ImageReadError as error:
            assert error.problem == "not_decodable"


# ---------------------------------------------------------------------------- predict


@pytest.fixture(scope="module")
def predictor():
    argv = ["--config", CONFIG, *FAST]
    config = cli.parse(argv, lambda flag_values: None, doc="", config=True)[0].config
    variables = weights.load(config, STATE_DICT)
    return predict.Predictor.from_config(config, variables)


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """The predict CLI (a subprocess) on a folder of good and bad files."""
    tmp = tmp_path_factory.mktemp("bad_folder")
    folder, out = make_folder(tmp / "photos"), tmp / "out"
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "logocap_jax.commands.predict", str(folder), "--config", CONFIG]
        + ["--state_dict", STATE_DICT, "--output_dir", str(out), "--no_draw", *FAST],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    return folder, out, proc


def test_cli_skips_and_reports_bad_files(cli_run):
    folder, out, proc = cli_run
    assert proc.returncode == cli.EXIT_SKIPPED, proc.stderr[-3000:]
    report = json.loads((out / "failures.json").read_text())
    expected = {name: (problem, skipped) for name, (_, problem, skipped) in bad_files().items()}
    listed = {Path(f["path"]).name: (f["problem"], f["skipped"]) for f in report["failures"]}
    assert listed == expected
    ids = json.loads((out / "image_ids.json").read_text())
    for entry in report["failures"]:
        assert entry["image_id"] == ids[entry["path"]]
        assert entry["reason"] and Path(entry["path"]).parent == folder
    skipped_count = sum(skipped for _, skipped in expected.values())
    partial_count = len(expected) - skipped_count
    assert report["images"] == len(GOOD) + len(expected) == len(ids)
    assert report["skipped"] == skipped_count
    assert report["partially_decoded"] == partial_count
    assert report["predicted"] == report["images"] - skipped_count
    # Each problem named on stderr as it is met, once. libpng writes its own messages to the
    # same stderr from the reader threads, possibly inside one of our lines: taken out first.
    stderr = re.sub(r"libpng (?:error|warning): [^\n]*?(?=warning: |\n|$)", "", proc.stderr)
    warnings = [line for line in stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == len(expected)
    for name, (_, skipped) in expected.items():
        line = next(line for line in warnings if f"{folder / name}: " in line)
        assert line.endswith("; skipped" if skipped else "; predicted on")
    # The good and partially decoded images were predicted on, the others not; the summary
    # counts everything.
    predicted = sorted(line.split(": ")[0] for line in proc.stdout.splitlines() if "people" in line)
    partial = [name for name, (_, skipped) in expected.items() if not skipped]
    assert predicted == sorted(str(folder / name) for name in [*GOOD, *partial])
    summary = proc.stdout.splitlines()[-1]
    assert summary.startswith(f"Predicted {report['predicted']} of {report['images']} images")
    assert f"{skipped_count} skipped, {partial_count} partially decoded" in summary


@pytest.mark.slow
def test_cli_results_of_good_images_equal_a_clean_run(cli_run, predictor):
    folder, out, _ = cli_run
    results = json.loads((out / "results.json").read_text())
    ids = json.loads((out / "image_ids.json").read_text())
    skipped = {ids[str(folder / n)] for n, (_, _, s) in bad_files().items() if s}
    assert not skipped & {r["image_id"] for r in results}
    for name in GOOD:
        image_id = ids[str(folder / name)]
        people = dict(predictor.predict_many([(name, str(folder / name))]))[name]
        clean = predict.postprocess.coco_results(image_id, people.keypoints, people.scores)
        assert clean and [r for r in results if r["image_id"] == image_id] == clean


def test_predict_many_reports_to_a_callback_or_warns(predictor, tmp_path):
    make_folder(tmp_path, ["empty.jpg", "truncated.jpg", "broken_link.jpg"])
    image = preprocess.read_image(tmp_path / "good_a.jpg")
    items = [
        ("array", image),
        ("empty", tmp_path / "empty.jpg"),
        ("truncated", tmp_path / "truncated.jpg"),
        ("link", str(tmp_path / "broken_link.jpg")),
        ("good", str(tmp_path / "good_b.jpg")),
    ]
    problems = []
    done = dict(predictor.predict_many(items, on_problem=problems.append))
    assert set(done) == {"array", "truncated", "good"}
    assert [(p.key, p.problem, p.skipped) for p in problems] == [
        ("empty", "empty", True),
        ("truncated", "partially_decoded", False),
        ("link", "missing", True),
    ]
    assert problems[0].path == str(tmp_path / "empty.jpg")
    # Without a callback, each problem is a warning naming the file.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert set(dict(predictor.predict_many(items))) == set(done)
    assert [(w.category, Path(str(w.message).split(": ")[0]).name) for w in caught] == [
        (predict.SkippedImageWarning, "empty.jpg"),
        (preprocess.PartialImageWarning, "truncated.jpg"),
        (predict.SkippedImageWarning, "broken_link.jpg"),
    ]
    assert all(w.filename == __file__ for w in caught)  # attributed to the caller
    with pytest.raises(preprocess.ImageReadError, match="empty.jpg") as error:
        list(predictor.predict_many(items, fail_fast=True))
    assert error.value.problem == "empty"


def test_cli_fail_fast_stops_at_the_first_unreadable_image(tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(jpeg_bytes(GOOD_ID))
    (folder / "b.jpg").write_bytes(b"")
    (folder / "c.jpg").write_bytes(jpeg_bytes(GOOD_ID))
    argv = [str(folder), "--config", CONFIG, "--state_dict", STATE_DICT, *FAST]
    argv += ["--output_dir", str(tmp_path / "out"), "--no_draw", "--fail_fast", "--quiet"]
    with pytest.raises(SystemExit) as exit_info:
        cli.run_main(predict_command.main, argv)
    captured = capsys.readouterr()
    assert exit_info.value.code == cli.EXIT_USER_ERROR
    [line] = captured.err.splitlines()
    assert line.endswith(f"error: {folder / 'b.jpg'}: image file is empty (0 bytes)")
    assert f"{folder / 'a.jpg'}: " in captured.out and "c.jpg" not in captured.out
    assert not (tmp_path / "out" / "results.json").exists()
    assert not list((tmp_path / "out").glob("results.json*"))


# ---------------------------------------------------------------------------- evaluation


def subset_with(tmp_path, image_ids, annotations=True):
    """The golden annotation subset restricted to `image_ids` (file names as in coco_mini)."""
    data = json.loads(SUBSET.read_text())
    data["images"] = [im for im in data["images"] if im["id"] in image_ids]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in image_ids]
    if not annotations:
        del data["annotations"]
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(data))
    return path, data


@pytest.fixture(scope="module")
def eval_script():
    return importlib.import_module("logocap_jax.commands.eval")


def test_unreadable_image_counts_as_no_detections(eval_script, tmp_path, capsys):
    """Image 196141 is corrupt: AP and AR are those of no detections on it."""
    annotations, data = subset_with(tmp_path, {GOOD_ID, 196141})
    images = tmp_path / "images"
    images.mkdir()
    (images / f"{GOOD_ID:012d}.jpg").write_bytes(jpeg_bytes(GOOD_ID))
    (images / "000000196141.jpg").write_bytes(jpeg_bytes(196141)[:400])
    out = tmp_path / "out"
    argv = ["--config", CONFIG, "--state_dict", STATE_DICT, *FAST, "--annotations"]
    argv += [str(annotations), "--images", str(images), "--output_dir", str(out)]
    with pytest.raises(SystemExit) as exit_info:
        cli.run_main(lambda a: eval_script.exit_status(eval_script.main(a)), argv)
    assert exit_info.value.code == cli.EXIT_SKIPPED
    err = capsys.readouterr().err
    assert "warning: image 196141: " in err and "counted as having no detections" in err
    stats = json.loads((out / "stats.json").read_text())
    [skipped] = stats.pop("skipped_images")
    assert skipped["image_id"] == 196141 and skipped["problem"] == "not_decodable"
    assert skipped["path"] == str(images / "000000196141.jpg")
    assert stats.pop("partially_decoded_images") == []
    results = json.loads((out / "results.json").read_text())
    assert results and {r["image_id"] for r in results} == {GOOD_ID}
    gt = coco_eval.load_annotations(annotations)
    assert stats == pytest.approx(coco_eval.evaluate_keypoints(gt, results, [GOOD_ID, 196141]))
    # Perfect results on the readable image: the unreadable one's people are all missed.
    perfect = coco_eval.ground_truth_as_results(gt, [GOOD_ID])
    both = coco_eval.evaluate_keypoints(gt, perfect, [GOOD_ID, 196141])
    assert coco_eval.evaluate_keypoints(gt, perfect, [GOOD_ID])["AR"] == pytest.approx(1.0)
    assert both["AR"] == pytest.approx(5 / 9)  # 5 of the 9 labelled people are readable
    report = (out / "report.md").read_text()
    assert "1 of 2 images could not be read and count as having no detections" in report


def test_results_only_file_says_so(predictor, tmp_path):
    annotations, _ = subset_with(tmp_path, {GOOD_ID}, annotations=False)
    predictor.report = speed.SpeedReport()
    try:
        result = evaluate.run_evaluation(predictor, str(annotations), str(IMAGES), progress=False)
        text = evaluate.write_outputs(
            result, str(tmp_path / "out"), "test-dev", predictor.report, str(annotations)
        )
    finally:
        predictor.report = None
    assert result.stats is None and result.results
    note = f"{annotations} has no 'annotations'"
    assert note in text and "results only" in text
    assert note in (tmp_path / "out" / "report.md").read_text()
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["results_only"] is True and note in stats["reason"]
    assert stats["skipped_images"] == [] and "AP" not in stats


def mutate(data, case):
    """A copy of the golden subset broken in one way; returns (data, fragments of the error)."""
    data = json.loads(json.dumps(data))
    annotation = data["annotations"][1]
    aid, image = annotation["id"], data["images"][0]
    where = f"annotations[1]: annotation {aid}"
    if case == "keypoint count":
        annotation["keypoints"] = annotation["keypoints"][:-1]
        return data, [where, "'keypoints' has 50 values, expected 51"]
    if case == "keypoint text":
        annotation["keypoints"][4] = "12"
        return data, [where, "'keypoints' holds '12'"]
    if case == "keypoints null":
        annotation["keypoints"] = None
        return data, [where, "'keypoints' is None"]
    if case == "keypoint NaN":
        annotation["keypoints"][0] = float("nan")
        return data, [where, "'keypoints' holds nan"]
    if case == "bbox":
        annotation["bbox"] = [1, 2, 3]
        return data, [where, "'bbox' is [1, 2, 3]"]
    if case == "missing key":
        del annotation["area"]
        return data, [where, "lacks key(s) ['area']"]
    if case == "unknown image":
        annotation["image_id"] = 5
        return data, [where, "refers to image id 5"]
    if case == "image size":
        image["height"] = "392"
        return data, [f"images[0]: image {image['id']}", "'height' is '392'"]
    if case == "image entry":
        data["images"][0] = 196141
        return data, ["images[0] is not a JSON object"]
    if case == "repeated id":
        data["images"].append(dict(image))
        return data, ["images[2] repeats image id 196141"]
    if case == "crowd polygon":
        annotation.update(iscrowd=1, segmentation=[[1, 2, "x", 4, 5, 6]])
        return data, [f"annotation {aid}", "'segmentation' polygons"]
    if case == "no keypoint names":
        del data["categories"][0]["keypoints"]
        return data, ["the person category has no 'keypoints' list"]
    if case == "results file":
        return [{"image_id": 1, "keypoints": [0] * 51}], ["no top-level 'images' list"]
    raise ValueError(case)


CASES = (
    "keypoint count",
    "keypoint text",
    "keypoints null",
    "keypoint NaN",
    "bbox",
    "missing key",
    "unknown image",
    "image size",
    "image entry",
    "repeated id",
    "crowd polygon",
    "no keypoint names",
    "results file",
)


@pytest.mark.parametrize("case", CASES)
def test_malformed_annotations_are_one_line_errors(tmp_path, case):
    data, fragments = mutate(json.loads(SUBSET.read_text()), case)
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(data))
    with pytest.raises(errors.UserError) as error:
        # What run_evaluation reads, in its order.
        coco_eval.load_annotations(str(path), results_only=True)
        list(coco_records.image_records(str(path), str(IMAGES), keep_images_without_people=True))
    assert isinstance(error.value, coco_records.CocoFormatError)
    message = errors.describe(error.value)
    assert "\n" not in str(error.value)
    for fragment in [str(path), *fragments]:
        assert fragment in message, (fragment, message)


@pytest.mark.parametrize("case", ["keypoint count", "missing image", "not json"])
def test_eval_reports_bad_annotations_in_one_line(eval_script, tmp_path, capsys, case):
    data = json.loads(SUBSET.read_text())
    path = tmp_path / "annotations.json"
    if case == "missing image":
        data["images"][1]["file_name"] = "000000999999.jpg"
        fragments = ["images[1]: image 197388", "000000999999.jpg not found"]
        path.write_text(json.dumps(data))
    elif case == "not json":
        fragments = ["is not valid JSON"]
        path.write_text('{"images": [')
    else:
        data, fragments = mutate(data, case)
        path.write_text(json.dumps(data))
    argv = ["--config", CONFIG, "--state_dict", STATE_DICT, "--annotations", str(path)]
    argv += ["--images", str(IMAGES), "--output_dir", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exit_info:
        cli.run_main(eval_script.main, argv)
    assert exit_info.value.code == cli.EXIT_USER_ERROR
    [line] = capsys.readouterr().err.splitlines()
    for fragment in [str(path), *fragments]:
        assert fragment in line, (fragment, line)


def test_config_utils_stays_importable_without_the_cli():
    assert config_utils.load_config(CONFIG).test.input_size == 128
