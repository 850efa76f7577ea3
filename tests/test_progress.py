"""logocap_jax.progress: a bar with rate and ETA on a terminal, one plain line every N items
elsewhere (no carriage returns), nothing when disabled; and the evaluation's progress."""

import io
import json
import re
from pathlib import Path

import pytest

from logocap_jax import progress
from logocap_jax.commands import predict as predict_command
from logocap_jax.evaluation import evaluate

ROOT = Path(__file__).resolve().parents[1]
MINI = ROOT / "data" / "coco_mini"
LINE = re.compile(
    r"^train: (\d+)/(\d+) step \(\d+%\), [\d.]+ (step/s|s/step)(, ETA [\d:]+)?(, loss=[\d.]+)?$"
)


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self):
        return True


class LogFile(io.StringIO):
    def isatty(self):
        return False


def _run(stream, items=10, **options):
    with progress.Progress(
        range(items), total=items, unit="step", desc="train", stream=stream, **options
    ) as bar:
        for item in bar:
            bar.set_postfix(loss=1.0 / (item + 1))
    return stream.getvalue()


def test_a_terminal_gets_a_bar_with_rate_and_eta():
    text = _run(Terminal(), items=5)
    assert "\r" in text
    final = text.split("\r")[-1]
    assert final.startswith("train: 100%") and "5/5" in final, final
    assert re.search(r"[\d.]+(step/s|s/step)", final), final
    assert "loss=0.2" in final


def test_a_log_file_gets_one_plain_line_every_n_items():
    text = _run(LogFile(), items=10, every=3)
    assert "\r" not in text
    lines = text.splitlines()
    assert [int(LINE.match(line).group(1)) for line in lines] == [3, 6, 9, 10], lines
    assert all("ETA" in line for line in lines[:-1]) and "ETA" not in lines[-1]
    # The postfix of the item just done: after item 2 (the third), 1 / 3.
    assert lines[0].endswith("loss=0.3333"), lines[0]


def test_default_spacing_is_a_tenth_of_the_total():
    lines = _run(LogFile(), items=40).splitlines()
    assert [int(LINE.match(line).group(1)) for line in lines] == list(range(4, 41, 4))


def test_disabled_writes_nothing():
    assert _run(Terminal(), enabled=False) == ""
    assert _run(LogFile(), enabled=False) == ""


def test_a_resumed_loop_counts_on_and_a_break_counts_its_last_item():
    stream = LogFile()
    with progress.Progress(
        range(5, 21), total=20, initial=4, unit="step", desc="train", every=5, stream=stream
    ) as bar:
        for step in bar:
            if step == 12:
                break
    lines = stream.getvalue().splitlines()
    assert [LINE.match(line).group(1, 2) for line in lines] == [
        ("5", "20"),
        ("10", "20"),
        ("12", "20"),
    ]


def test_an_error_does_not_count_its_item():
    stream = LogFile()
    with pytest.raises(RuntimeError):
        with progress.Progress(
            range(9), total=9, unit="step", desc="train", every=4, stream=stream
        ) as bar:
            for item in bar:
                if item == 5:
                    raise RuntimeError("stop")
    assert [LINE.match(line).group(1) for line in stream.getvalue().splitlines()] == ["4", "5"]


def test_unknown_total_and_slow_rates():
    stream = LogFile()
    with progress.Progress(
        iter(range(3)), unit="img", desc="images", every=2, stream=stream
    ) as bar:
        for _ in bar:
            pass
    lines = stream.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == ["images: 2", "images: 3"]
    assert progress.format_rate(0.25, "step") == "4 s/step"
    assert progress.format_rate(12.345, "img") == "12.3 img/s"
    assert progress.format_rate(1234.4, "img") == "1234 img/s"
    with pytest.raises(ValueError, match="every must be at least 1"):
        progress.Progress([], every=0)


def _two_images(tmp_path):
    """coco_mini's annotations of two images, as a COCO-format file, and its images."""
    data = json.loads((MINI / "annotations" / "person_keypoints_mini.json").read_text())
    keep = {785, 197388}
    data["images"] = [image for image in data["images"] if image["id"] in keep]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in keep]
    path = tmp_path / "two.json"
    path.write_text(json.dumps(data))
    return str(path), data["images"]


@pytest.mark.slow
def test_evaluation_reports_progress_and_draws_the_first_images(tiny_predictors, tmp_path, capsys):
    annotations, images = _two_images(tmp_path)
    result = evaluate.run_evaluation(
        tiny_predictors[False], annotations, str(MINI / "images"), progress=True, draw_images=1
    )
    err = capsys.readouterr().err
    assert "\r" not in err
    assert re.search(r"^images: 2/2 img \(100%\), [\d.]+ (img/s|s/img)$", err, re.M), err
    first = images[0]
    assert list(result.drawings) == [first["id"]]
    drawing = result.drawings[first["id"]]
    assert drawing.dtype.name == "uint8" and drawing.shape == (first["height"], first["width"], 3)
    evaluate.run_evaluation(
        tiny_predictors[False], annotations, str(MINI / "images"), progress=False
    )
    assert "images:" not in capsys.readouterr().err


@pytest.mark.slow
def test_the_predict_command_reports_progress_unless_quiet(tmp_path, capsys):
    images = [str(MINI / "images" / f"{image_id:012d}.jpg") for image_id in (197388, 229358)]
    argv = [
        *images,
        "--config",
        str(ROOT / "configs" / "tiny.py"),
        "--config.decode.flip_test=false",
        "--state_dict",
        str(ROOT / "tests" / "data" / "golden" / "tiny_state_dict.npz"),
        "--no_draw",
    ]
    assert predict_command.main([*argv, "--output_dir", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    assert re.search(r"^predict: 2/2 img \(100%\), [\d.]+ (img/s|s/img)$", err, re.M), err
    assert predict_command.main([*argv, "--output_dir", str(tmp_path / "b"), "--quiet"]) == 0
    assert "predict:" not in capsys.readouterr().err
