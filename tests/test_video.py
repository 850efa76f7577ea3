"""Video input and output: the frame reader on clips made here from a bundled COCO photo, and
the predict command on a video, a folder of frames and bad input (tiny model, 320 x 240)."""

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from logocap_jax import errors
from logocap_jax.commands import cli
from logocap_jax.commands import predict as predict_command
from logocap_jax.video import frames

PHOTO = "data/coco_mini/images/000000197388.jpg"  # 640 x 392, several people
CONFIG = "configs/tiny.py"
STATE_DICT = "tests/data/golden/tiny_state_dict.npz"
WIDTH, HEIGHT, FPS, FRAMES = 320, 240, 10.0, 16


def clip_frames(count: int = FRAMES, size=(WIDTH, HEIGHT)) -> list:
    """BGR frames of a camera panning right and zooming in over the photo."""
    photo = cv2.imread(PHOTO)
    height, width = photo.shape[:2]
    images = []
    for i in range(count):
        t = i / max(count - 1, 1)
        crop_w = int(width * (0.9 - 0.25 * t))
        crop_h = crop_w * size[1] // size[0]
        x = int((width - crop_w) * t)
        y = (height - crop_h) // 2
        images.append(cv2.resize(photo[y : y + crop_h, x : x + crop_w], size))
    return images


def write_clip(path, images, fourcc: str = "mp4v", fps: float = FPS) -> str:
    height, width = images[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
    assert writer.isOpened(), fourcc
    for image in images:
        writer.write(image)
    writer.release()
    return str(path)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_clip(tmp_path_factory.mktemp("clip") / "walk.mp4", clip_frames())


def read_all(source, **options):
    with frames.open_source(source, **options) as reader:
        return reader, list(reader)


def test_reads_every_frame_in_order(clip):
    reader, got = read_all(clip)
    assert [f.index for f in got] == list(range(FRAMES))
    assert reader.total == FRAMES and reader.fps == FPS and not reader.skipped
    assert got[3].timestamp == pytest.approx(0.3)
    assert got[0].image.shape == (HEIGHT, WIDTH, 3) and got[0].image.dtype == np.uint8
    # RGB, not OpenCV's BGR: compare with the first frame as written (lossy codec).
    first_rgb = cv2.cvtColor(clip_frames(1)[0], cv2.COLOR_BGR2RGB).astype(float)
    assert np.abs(got[0].image - first_rgb).mean() < 12
    assert (
        np.abs(got[0].image[..., ::-1] - first_rgb).mean()
        > 2 * np.abs(got[0].image - first_rgb).mean()
    )


@pytest.mark.parametrize(
    "options, indices",
    [
        ({"every_nth": 3}, [0, 3, 6, 9, 12, 15]),
        ({"max_frames": 4}, [0, 1, 2, 3]),
        ({"start": 0.5}, list(range(5, FRAMES))),
        ({"start": 0.25, "end": 0.9}, [3, 4, 5, 6, 7, 8]),
        ({"start": 0.4, "end": 1.2, "every_nth": 2, "max_frames": 3}, [4, 6, 8]),
    ],
)
def test_frame_selection(clip, options, indices):
    reader, got = read_all(clip, **options)
    assert [f.index for f in got] == indices
    assert reader.total == len(indices)
    assert [f.timestamp for f in got] == pytest.approx([i / FPS for i in indices])
    reference = read_all(clip)[1]
    for frame in got:
        np.testing.assert_array_equal(frame.image, reference[frame.index].image)


def test_closing_early_stops_the_thread(clip):
    with frames.open_source(clip) as reader:
        next(iter(reader))
    assert not reader._thread.is_alive()


@pytest.mark.parametrize(
    "options", [{"every_nth": 0}, {"max_frames": 0}, {"start": -1.0}, {"start": 2, "end": 1}]
)
def test_bad_selection_is_a_usage_error(clip, options):
    with pytest.raises(errors.UsageError):
        frames.open_source(clip, **options)


def test_sequence_reads_a_folder_in_name_order(tmp_path):
    images = clip_frames(5)
    for i, image in enumerate(images):
        cv2.imwrite(str(tmp_path / f"frame_{i:03d}.png"), image)
    (tmp_path / "notes.txt").write_text("not a frame")
    (tmp_path / "frame_002.png").write_bytes(b"broken")
    reader, got = read_all(str(tmp_path), sequence=True, fps=5)
    assert [f.index for f in got] == [0, 1, 3, 4]
    assert [f.timestamp for f in got] == pytest.approx([0, 0.2, 0.6, 0.8])
    assert reader.skipped == [frames.SkippedFrame(2, "frame_002.png: not a readable image")]
    np.testing.assert_array_equal(got[2].image, cv2.cvtColor(images[3], cv2.COLOR_BGR2RGB))
    assert reader.name == tmp_path.name


def test_truncated_video_skips_and_counts_the_missing_frames(tmp_path):
    # AVI keeps its frame count in the header, so a cut file announces frames it lacks.
    full = write_clip(tmp_path / "full.avi", clip_frames(), "MJPG")
    data = open(full, "rb").read()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) * 6 // 10])
    reader, got = read_all(str(cut))
    assert 0 < len(got) < FRAMES
    assert [f.index for f in got] == list(range(len(got)))
    assert len(reader.skipped) == FRAMES - len(got)
    assert reader.skipped[0].index == len(got)


def test_truncated_mp4_is_a_format_error(tmp_path, clip):
    # mp4 keeps its index at the end: the cut file does not open at all.
    data = open(clip, "rb").read()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(errors.InputFormatError, match="cut.mp4: not a readable video"):
        frames.open_source(str(cut))


@pytest.mark.parametrize(
    "name, content, error",
    [
        ("notes.mp4", b"this is not a video", errors.InputFormatError),
        ("missing.mp4", None, errors.InputNotFoundError),
    ],
)
def test_bad_files_are_user_errors_naming_them(tmp_path, name, content, error):
    if content is not None:
        (tmp_path / name).write_bytes(content)
    with pytest.raises(error, match=name):
        frames.open_source(str(tmp_path / name))


def test_folder_without_sequence_and_empty_sequence(tmp_path):
    with pytest.raises(errors.InputFormatError, match="--sequence"):
        frames.open_source(str(tmp_path))
    with pytest.raises(errors.InputFormatError, match="No frame files"):
        frames.open_source(str(tmp_path), sequence=True)


def test_camera_that_does_not_open_is_a_user_error():
    with pytest.raises(errors.InputFormatError, match="Cannot open camera 57"):
        frames.open_source("57")


def test_source_names():
    assert frames.source_name("videos/walk.final.mp4") == "walk.final"
    assert frames.source_name("0") == "camera0"
    assert frames.source_name("rtsp://host:554/live/cam1?x=1") == "cam1"
    assert frames.source_name("http://host:8080/") == "stream"
    assert frames.source_name("shots/day1/", sequence=True) == "day1"


def predict_video(tmp_path, *args) -> subprocess.CompletedProcess:
    """The predict command on the tiny model, as a subprocess."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "logocap_jax.commands.predict",
            "--config",
            CONFIG,
            "--state_dict",
            STATE_DICT,
            "--output_dir",
            str(tmp_path / "out"),
            *args,
        ],
        capture_output=True,
        text=True,
    )


def read_log(path) -> list:
    with open(path) as f:
        return [json.loads(line) for line in f]


def count_frames(path) -> tuple:
    """(frames, width, height) of a video, decoding every frame."""
    capture = cv2.VideoCapture(str(path))
    count = 0
    while capture.read()[0]:
        count += 1
    size = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    capture.release()
    return count, *size


@pytest.mark.slow
def test_cli_writes_a_drawn_video_and_one_log_line_per_frame(tmp_path, clip):
    proc = predict_video(tmp_path, "--source", clip)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out"
    assert count_frames(out / "walk.mp4") == (FRAMES, WIDTH, HEIGHT)
    log = read_log(out / "walk.jsonl")
    assert [line["frame"] for line in log] == list(range(FRAMES))
    assert [line["time"] for line in log] == pytest.approx([i / FPS for i in range(FRAMES)])
    people = [person for line in log for person in line["people"]]
    assert people, "the tiny model finds people in the photo"
    assert all(np.shape(person["keypoints"]) == (17, 3) for person in people)
    ids = {person["track_id"] for person in people}
    summary = json.loads((out / "walk_summary.json").read_text())
    assert summary["frames"] == FRAMES and summary["tracks"] == len(ids - {-1})
    assert summary["codec"] == "vp09"
    assert f"walk: {FRAMES} frames (320x240)" in proc.stdout
    # The drawing differs from the source where the skeletons are.
    drawn = cv2.VideoCapture(str(out / "walk.mp4")).read()[1]
    assert np.abs(drawn.astype(float) - clip_frames(1)[0]).max() > 100


@pytest.mark.slow
def test_cli_sequence_with_a_size_change_and_a_broken_frame(tmp_path):
    folder = tmp_path / "shots"
    folder.mkdir()
    images = clip_frames(6) + clip_frames(4, size=(240, 320))
    for i, image in enumerate(images):
        cv2.imwrite(str(folder / f"{i:04d}.jpg"), image)
    (folder / "0003.jpg").write_bytes(b"not a jpeg")
    proc = predict_video(tmp_path, "--source", str(folder), "--sequence", "--every_nth", "1")
    assert proc.returncode == 3, proc.stderr
    out = tmp_path / "out"
    log = read_log(out / "shots.jsonl")
    assert [line["frame"] for line in log] == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    assert [(line["width"], line["height"]) for line in log] == [(320, 240)] * 5 + [(240, 320)] * 4
    assert count_frames(out / "shots.mp4") == (9, WIDTH, HEIGHT)
    assert proc.stderr.count("frame size changes to 240x320") == 1
    assert "skipped 1 unreadable frames: 3 (0003.jpg: not a readable image)" in proc.stdout


@pytest.mark.slow
def test_cli_truncated_video_counts_the_skipped_frames(tmp_path):
    full = write_clip(tmp_path / "full.avi", clip_frames(), "MJPG")
    data = open(full, "rb").read()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) * 6 // 10])
    proc = predict_video(tmp_path, "--source", str(cut), "--no_draw", "--fast")
    assert proc.returncode == 3, proc.stderr
    log = read_log(tmp_path / "out" / "cut.jsonl")
    summary = json.loads((tmp_path / "out" / "cut_summary.json").read_text())
    assert len(log) == summary["frames"] and 0 < len(log) < FRAMES
    assert len(summary["skipped"]) == FRAMES - len(log)
    assert not (tmp_path / "out" / "cut.mp4").exists()


def run_command(argv) -> int:
    """The exit status of the predict command run in this process."""
    with pytest.raises(SystemExit) as exit_info:
        cli.run_main(predict_command.main, argv)
    return exit_info.value.code


@pytest.mark.parametrize(
    "source, extra, message",
    [
        ("notes.mp4", [], "notes.mp4: not a readable video file"),
        ("missing.mp4", [], "No such video file:"),
        ("57", [], "Cannot open camera 57"),
        (".", [], "is a folder: give a video file, or --sequence"),
        ("clip", ["--start", "2", "--end", "1"], "end (1.0 s) must be after start (2.0 s)"),
        ("clip", ["--panel_joint", "nose"], "--panel_joint only apply to images"),
        (None, ["--every_nth", "2", "photo.jpg"], "--every_nth needs --source"),
        ("clip", ["photo.jpg"], "either image files and folders or --source"),
    ],
)
def test_cli_bad_sources_are_one_line_errors(tmp_path, clip, capsys, source, extra, message):
    (tmp_path / "notes.mp4").write_text("this is not a video")
    named = {"clip": clip, ".": str(tmp_path), "57": "57"}.get(source, str(tmp_path / f"{source}"))
    argv = ["--config", CONFIG, "--state_dict", STATE_DICT, "--output_dir", str(tmp_path / "o")]
    argv += (["--source", named] if source else []) + extra
    assert run_command(argv) == cli.EXIT_USER_ERROR
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "o").exists()
