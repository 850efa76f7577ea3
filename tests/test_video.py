"""Video input: the frame reader on clips made here from a bundled COCO photo (320 x 240)."""

import cv2
import numpy as np
import pytest

from logocap_jax import errors
from logocap_jax.video import frames

PHOTO = "data/coco_mini/images/000000197388.jpg"  # 640 x 392, several people
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
