"""Video input and output: the frame reader on clips of a bundled COCO photo (video/demo_clip.py),
and the predict command on a video, a folder of frames and bad input (tiny model, 320 x 240)."""

import functools
import http.server
import json
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from logocap_jax import errors
from logocap_jax.commands import cli
from logocap_jax.commands import predict as predict_command
from logocap_jax.inference import speed
from logocap_jax.video import demo_clip, frames, run, tracking, writers

CONFIG = "configs/tiny.py"
STATE_DICT = "tests/data/golden/tiny_state_dict.npz"
(WIDTH, HEIGHT), FPS, FRAMES = demo_clip.SIZE, demo_clip.FPS, demo_clip.FRAMES


def write_clip(path, images, fourcc: str = "mp4v") -> str:
    return demo_clip.write_clip(path, images, FPS, fourcc)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return demo_clip.write_demo_clip(tmp_path_factory.mktemp("clip") / "walk.mp4")


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
    first_rgb = demo_clip.demo_frames(1)[0].astype(float)
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
    images = demo_clip.demo_frames(5)
    for i, image in enumerate(images):
        cv2.imwrite(str(tmp_path / f"frame_{i:03d}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    (tmp_path / "notes.txt").write_text("not a frame")
    (tmp_path / "frame_002.png").write_bytes(b"broken")
    reader, got = read_all(str(tmp_path), sequence=True, fps=5)
    assert [f.index for f in got] == [0, 1, 3, 4]
    assert [f.timestamp for f in got] == pytest.approx([0, 0.2, 0.6, 0.8])
    assert reader.skipped == [frames.SkippedFrame(2, "frame_002.png: not a readable image")]
    np.testing.assert_array_equal(got[2].image, images[3])
    assert reader.name == tmp_path.name


def test_truncated_video_skips_and_counts_the_missing_frames(tmp_path):
    # AVI keeps its frame count in the header, so a cut file announces frames it lacks.
    full = write_clip(tmp_path / "full.avi", demo_clip.demo_frames(), "MJPG")
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


def test_image_file_is_not_a_video(tmp_path):
    # FFmpeg would open it as a one-frame video that cannot rewind.
    path = tmp_path / "photo.JPG"
    path.write_bytes(cv2.imencode(".jpg", demo_clip.demo_frames(1)[0])[1].tobytes())
    with pytest.raises(errors.InputFormatError, match="photo.JPG is an image, not a video"):
        frames.open_source(str(path))


def test_ffmpeg_prints_nothing_of_its_own_for_a_bad_file(tmp_path):
    # The one-line error stays one line: FFmpeg would add "moov atom not found" on stderr.
    path = tmp_path / "notes.mp4"
    path.write_text("this is not a video")
    code = (
        "import sys\n"
        "from logocap_jax import errors\n"
        "from logocap_jax.video import frames\n"
        "try:\n    frames.open_source(sys.argv[1])\n"
        "except errors.InputFormatError as error:\n    print(error)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True)
    assert proc.stdout == f"{path}: not a readable video file\n", proc.stderr
    assert proc.stderr == ""


@pytest.fixture
def served(tmp_path):
    """An HTTP server on localhost for the files of tmp_path; yields its base URL."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_stream_url_yields_every_frame_from_the_first(tmp_path, served):
    write_clip(tmp_path / "live.avi", demo_clip.demo_frames(), "MJPG")
    reader, got = read_all(f"{served}/live.avi")
    assert reader.kind == "stream" and reader.name == "live" and reader.total is None
    assert [f.index for f in got] == list(range(FRAMES)) and not reader.skipped
    times = [f.timestamp for f in got]
    assert all(a < b for a, b in zip(times, times[1:]))
    first = demo_clip.demo_frames(1)[0].astype(float)
    assert np.abs(got[0].image - first).mean() < 12


def test_stream_that_opens_without_frames_is_a_user_error(tmp_path, served, clip):
    # OpenCV writes the MP4 index at the end, which a server without range requests (like
    # Python's) never lets FFmpeg reach: the stream opens but yields nothing.
    (tmp_path / "indexed_at_end.mp4").write_bytes(open(clip, "rb").read())
    with pytest.raises(errors.InputFormatError, match="opens but gives no frame"):
        frames.open_source(f"{served}/indexed_at_end.mp4")
    with pytest.raises(errors.InputFormatError, match="Cannot open video stream"):
        frames.open_source(f"{served}/missing.avi")


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
    drawn = cv2.cvtColor(cv2.VideoCapture(str(out / "walk.mp4")).read()[1], cv2.COLOR_BGR2RGB)
    assert np.abs(drawn.astype(float) - demo_clip.demo_frames(1)[0]).max() > 100


@pytest.mark.slow
def test_cli_sequence_with_a_size_change_and_a_broken_frame(tmp_path):
    folder = tmp_path / "shots"
    folder.mkdir()
    images = demo_clip.demo_frames(6) + demo_clip.demo_frames(4, size=(240, 320))
    for i, image in enumerate(images):
        cv2.imwrite(str(folder / f"{i:04d}.jpg"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
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
    full = write_clip(tmp_path / "full.avi", demo_clip.demo_frames(), "MJPG")
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


def test_cli_tracker_follows_the_drawing_thresholds(tmp_path, clip, monkeypatch):
    """--threshold (the keypoints drawn) is also the tracker's visibility threshold, and
    --min_score (the people drawn) the lowest score that starts a track."""
    trackers = []

    def record(predictor, reader, tracker, output_dir, **options):
        trackers.append(tracker)
        return run.VideoSummary(reader.name)

    monkeypatch.setattr(run, "run_video", record)
    argv = ["--config", CONFIG, "--state_dict", STATE_DICT, "--output_dir", str(tmp_path / "o")]
    source = ["--source", clip, "--threshold", "0.002", "--min_score", "0.006"]
    assert run_command([*argv, *source]) == cli.EXIT_OK
    assert trackers[0].settings.keypoint_threshold == 0.002
    assert trackers[0].settings.birth_score == 0.006


def test_summary_of_a_truncated_video_says_how_many_frames_were_not_read():
    skipped = [frames.SkippedFrame(i, "the frame could not be decoded") for i in range(12, 22)]
    summary = run.VideoSummary(
        "cut", frames=12, skipped=skipped, truncated_at=12, expected_frames=24
    )
    lines = summary.describe().splitlines()
    assert lines[-2].startswith("skipped 10 unreadable frames: 12, 13, 14")
    assert lines[-1] == (
        "reading stopped at frame 12: the video is truncated (12 of the 24 frames it announces "
        "not read)"
    )
    summary.expected_frames = None  # a source that does not say its length
    assert summary.describe().splitlines()[-1].endswith("the video is truncated")


class _StillPredictor:
    """Stands in for Predictor: one person at the same place in every frame."""

    def __init__(self):
        self.report = speed.SpeedReport()

    def predict_many(self, items):
        for frame, _ in items:
            keypoints = np.full((1, 17, 3), 0.9)
            keypoints[0, :, :2] = np.linspace(10, 100, 34).reshape(17, 2)
            yield frame, SimpleNamespace(keypoints=keypoints, scores=np.array([0.9]))


def test_run_video_counts_the_encoders_final_flush(tmp_path, clip, monkeypatch):
    """An encoder that buffers frames (VP9 looks ahead) does its work when closed: that time is
    the output's too."""

    class SlowClose(writers.VideoFile):
        def close(self):
            time.sleep(0.3)
            super().close()

    monkeypatch.setattr(writers, "VideoFile", SlowClose)
    with frames.open_source(clip) as reader:
        summary = run.run_video(
            _StillPredictor(),
            reader,
            tracking.Tracker(),
            str(tmp_path),
            codec="mp4v",
            show_progress=False,
        )
    assert summary.frames == FRAMES and summary.tracks == 1
    assert summary.output_fps < FRAMES / 0.3
    assert count_frames(tmp_path / "walk.mp4") == (FRAMES, WIDTH, HEIGHT)
