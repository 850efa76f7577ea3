"""Frames over time from a video file, a camera, a stream URL or a folder of frames.

  with frames.open_source("walk.mp4", every_nth=2, start=1.5, end=4.0) as reader:
      for frame in reader:          # Frame(index, timestamp, image): RGB uint8 [h, w, 3]
          ...
      reader.skipped                # [SkippedFrame(index, reason)]: reads that failed

A background thread decodes frames into a bounded queue, so decoding overlaps the model and
memory stays flat. A source that cannot be opened at all is a user error naming it; a frame
that fails to decode in the middle of the stream is skipped and counted.
"""

import dataclasses
import math
import os
import queue
import threading
import time
from collections.abc import Iterator
from typing import NamedTuple

import cv2
import numpy as np

from logocap_jax import errors
from logocap_jax.inference import preprocess

# The clock of sources that do not say their frame rate (folders, some streams).
DEFAULT_FPS = 30.0
# Frames decoded ahead of the consumer: enough to cover a batch, little memory.
QUEUE_FRAMES = 16
# A video whose reads keep failing is truncated or broken from there on: stop after this many
# failed reads in a row instead of trying every frame its header announces.
MAX_FAILED_READS = 10


class Frame(NamedTuple):
    """One frame.

    Attributes:
      index: its position in the source (counting every frame from the source's start,
        including those that every_nth, start or a failed read left out).
      timestamp: seconds since the source's start (files, folders: index / fps; cameras and
        streams: time since opening).
      image: uint8 RGB [h, w, 3].
    """

    index: int
    timestamp: float
    image: np.ndarray


class SkippedFrame(NamedTuple):
    """A frame that could not be read: its index in the source and why."""

    index: int
    reason: str


@dataclasses.dataclass(frozen=True)
class FrameSelection:
    """Which frames to read.

    Attributes:
      every_nth: keep every n-th frame from the first one read (1: all).
      max_frames: stop after this many kept frames; None: no limit.
      start: seconds into the source of the first frame read.
      end: seconds into the source where reading stops (exclusive); None: the source's end.
    """

    every_nth: int = 1
    max_frames: int | None = None
    start: float = 0.0
    end: float | None = None

    def __post_init__(self):
        if self.every_nth < 1:
            raise errors.UsageError(f"every_nth must be at least 1, got {self.every_nth}")
        if self.max_frames is not None and self.max_frames < 1:
            raise errors.UsageError(f"max_frames must be at least 1, got {self.max_frames}")
        if not self.start >= 0:
            raise errors.UsageError(f"start must be at least 0 seconds, got {self.start}")
        if self.end is not None and not self.end > self.start:
            raise errors.UsageError(f"end ({self.end} s) must be after start ({self.start} s)")


def source_kind(source: str, sequence: bool = False) -> str:
    """'sequence' (a folder of frames), 'camera' (a device index such as '0'), 'stream' (a
    URL such as rtsp://...) or 'file'."""
    if sequence:
        return "sequence"
    if source.isdigit():
        return "camera"
    if "://" in source:
        return "stream"
    return "file"


def source_name(source: str, sequence: bool = False) -> str:
    """A name for the outputs of a source: the file or folder name without extension,
    'camera0' for camera 0, the last part of a URL's path (or 'stream')."""
    kind = source_kind(source, sequence)
    if kind == "camera":
        return f"camera{int(source)}"
    stem = os.path.splitext(os.path.basename(os.path.normpath(source.split("?")[0])))[0]
    if kind == "stream":
        return stem if stem and ":" not in stem else "stream"
    return stem or "video"


class FrameReader:
    """The selected frames of one source, decoded by a background thread.

    Iterate once; `close` (or leaving the `with` block) stops the thread and releases the
    source. Use `open_source` to make one.

    Attributes:
      source: what the user named.
      kind: see `source_kind`.
      name: see `source_name`.
      fps: frames per second of the source (DEFAULT_FPS where it does not say).
      total: how many frames the iteration will yield, where known (files and folders),
        else None.
      skipped: frames that could not be read, in order, as they were met.
      truncated_at: for a video whose reads kept failing (MAX_FAILED_READS in a row), the
        index where reading stopped, else None.
      decode_seconds: time the reading thread spent reading and decoding frames so far.
    """

    def __init__(self, source: str, kind: str, selection: FrameSelection, fps: float | None):
        self.source, self.kind, self.selection = source, kind, selection
        self.name = source_name(source, kind == "sequence")
        self.skipped: list[SkippedFrame] = []
        self.truncated_at: int | None = None
        self.decode_seconds = 0.0
        self._capture = None
        self._first_image = None
        self._paths: list[str] = []
        if kind == "sequence":
            self._paths = _frame_files(source)
            self.fps = fps or DEFAULT_FPS
            count = len(self._paths)
        else:
            self._capture, self._first_image = _open_capture(source, kind)
            reported = self._capture.get(cv2.CAP_PROP_FPS)
            self.fps = fps or (reported if 0 < reported < 1000 else DEFAULT_FPS)
            count = int(self._capture.get(cv2.CAP_PROP_FRAME_COUNT)) if kind == "file" else 0
        self._count = count if count > 0 else None
        self._first = 0
        if kind in ("file", "sequence"):
            self._first = math.ceil(selection.start * self.fps - 1e-9)
            if kind == "file" and self._first:
                self._capture.set(cv2.CAP_PROP_POS_FRAMES, self._first)
        self.total = self._expected_total()
        self._queue: queue.Queue = queue.Queue(QUEUE_FRAMES)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="frame-reader", daemon=True)
        self._started = False

    def _expected_total(self) -> int | None:
        if self._count is None:
            return None
        selection = self.selection
        last = self._count
        if selection.end is not None:
            last = min(last, math.ceil(selection.end * self.fps - 1e-9))
        total = max(0, -(-(last - self._first) // selection.every_nth))
        return total if selection.max_frames is None else min(total, selection.max_frames)

    def __enter__(self) -> "FrameReader":
        return self

    def __exit__(self, *exc_info):
        self.close()

    def __iter__(self) -> Iterator[Frame]:
        if self._started:
            raise RuntimeError("a FrameReader is iterated once")
        self._started = True
        self._thread.start()
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        """Stops the reading thread and releases the source; calling it again does nothing."""
        self._stop.set()
        if self._started:
            while self._thread.is_alive():
                # Unblocks a thread waiting on a full queue.
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    pass
                self._thread.join(0.05)
        if self._capture is not None:
            self._capture.release()
            self._capture = None

    def _put(self, item) -> bool:
        """Queues an item unless closed; False once the consumer has closed the reader."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for frame in self._frames():
                if not self._put(frame):
                    return
        except BaseException as error:  # Reaches the consumer, which raises it.
            self._put(error)
            return
        self._put(None)

    def _frames(self) -> Iterator[Frame]:
        """The selected frames, in order."""
        selection = self.selection
        kept = 0
        index = self._first
        opened = time.monotonic()
        last_time = -1.0
        failures = 0
        while not self._stop.is_set():
            if selection.max_frames is not None and kept >= selection.max_frames:
                return
            if self._count is not None and index >= self._count:
                return
            wanted = (index - self._first) % selection.every_nth == 0
            if self.kind in ("file", "sequence"):
                timestamp = index / self.fps
            else:
                # Live sources have no frame clock; increasing is what the tracker needs.
                timestamp = max(time.monotonic() - opened, last_time + 1e-6)
            if selection.end is not None and timestamp >= selection.end:
                return
            live_early = self.kind in ("camera", "stream") and timestamp < selection.start
            started = time.perf_counter()
            image, reason = self._read(index, decode=wanted and not live_early)
            self.decode_seconds += time.perf_counter() - started
            if reason is not None:
                if self._count is None:  # Without a frame count, a failed read is the end.
                    return
                self.skipped.append(SkippedFrame(index, reason))
                failures += 1
                if self.kind != "sequence" and failures >= MAX_FAILED_READS:
                    self.truncated_at = index - failures + 1
                    return
                index += 1
                continue
            failures = 0
            last_time = timestamp
            if wanted and not live_early:
                kept += 1
                yield Frame(index, timestamp, image)
            index += 1

    def _read(self, index: int, decode: bool):
        """(RGB image or None, None) or (None, why the frame could not be read). Frames not
        `decode`d are only advanced past."""
        if self.kind == "sequence":
            if not decode:
                return None, None
            path = self._paths[index]
            image = cv2.imread(path, cv2.IMREAD_COLOR)
            if image is None:
                return None, f"{os.path.basename(path)}: not a readable image"
            return cv2.cvtColor(image, cv2.COLOR_BGR2RGB), None
        if self._first_image is not None:  # A live source's first frame, read when opened.
            image, self._first_image = self._first_image, None
            return (image if decode else None), None
        if not decode:
            return None, (None if self._capture.grab() else "the frame could not be decoded")
        ok, image = self._capture.read()
        if not ok or image is None:
            return None, "the frame could not be decoded"
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB), None


def _frame_files(folder: str) -> list:
    """The frame files of a folder, in name order.

    Raises:
      InputNotFoundError: the folder does not exist.
      InputFormatError: it is not a folder, or holds no frame files.
    """
    if not os.path.exists(folder):
        raise errors.InputNotFoundError(f"No such folder of frames: {folder}")
    if not os.path.isdir(folder):
        raise errors.InputFormatError(f"--sequence needs a folder of frames, {folder} is a file")
    return preprocess.image_files_in(folder, "frame")


def _open_capture(source: str, kind: str) -> tuple:
    """An opened VideoCapture whose first frame decodes: rewound for files; for cameras and
    streams, which cannot rewind, with that frame (RGB) to yield first.

    Raises:
      InputNotFoundError: a file that does not exist.
      InputFormatError: a folder (without --sequence), an image file, a file that is not a
        readable video, a camera or stream that does not open or gives no frame.
    """
    if kind == "file":
        if not os.path.exists(source):
            raise errors.InputNotFoundError(f"No such video file: {source}")
        if os.path.isdir(source):
            raise errors.InputFormatError(
                f"{source} is a folder: give a video file, or --sequence for a folder of frames"
            )
        # FFmpeg opens a still image as a one-frame video that does not rewind.
        if source.lower().endswith(preprocess.IMAGE_EXTENSIONS):
            raise errors.InputFormatError(
                f"{source} is an image, not a video: give images without --source"
            )
    what = {"file": "video file", "camera": "camera", "stream": "video stream"}[kind]
    capture = cv2.VideoCapture(int(source) if kind == "camera" else source)
    if not capture.isOpened():
        capture.release()
        if kind == "file":
            raise errors.InputFormatError(f"{source}: not a readable video file")
        raise errors.InputFormatError(f"Cannot open {what} {source}")
    if kind == "file":
        ok, first = capture.grab(), None
        capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
    else:
        ok, first = capture.read()
        ok = ok and first is not None
    if not ok:
        capture.release()
        if kind == "file":
            raise errors.InputFormatError(f"{source}: not a readable video (no frame decodes)")
        raise errors.InputFormatError(f"The {what} {source} opens but gives no frame")
    return capture, (None if first is None else cv2.cvtColor(first, cv2.COLOR_BGR2RGB))


def open_source(
    source: str,
    *,
    sequence: bool = False,
    every_nth: int = 1,
    max_frames: int | None = None,
    start: float = 0.0,
    end: float | None = None,
    fps: float | None = None,
) -> FrameReader:
    """Opens a source of frames.

    Args:
      source: a video file, a camera index ('0'), a stream URL, or with `sequence` a folder
        of frame images (read in name order).
      sequence: `source` is a folder of frames.
      every_nth, max_frames, start, end: which frames, see `FrameSelection`.
      fps: the source's frame rate, overriding what it says (folders: default DEFAULT_FPS).

    Returns:
      A FrameReader, not yet reading.

    Raises:
      UserError: the source cannot be opened or the selection is invalid (the message names
        it); see `_open_capture` and `_frame_files`.
    """
    selection = FrameSelection(every_nth, max_frames, start, end)
    return FrameReader(source, source_kind(source, sequence), selection, fps)
