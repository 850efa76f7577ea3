"""A video through the model and the tracker: the drawn video, the JSONL log, a summary.

  with frames.open_source("walk.mp4") as reader:
      summary = run.run_video(predictor, reader, tracking.Tracker(settings), "out")
  print(summary.describe())

Frames go through `Predictor.predict_many` in batches; while the device runs a batch, the
previous batch's people are tracked, drawn and written (predict_many dispatches the next
batch before it hands back the previous one), and the reader thread decodes ahead.
"""

import dataclasses
import itertools
import os
import sys
import time
from collections.abc import Iterator

from logocap_jax import progress
from logocap_jax.inference import visualize
from logocap_jax.inference.predict import Predictor
from logocap_jax.video import frames, tracking, writers

# Weight of the newest frame in the on-screen fps, an exponential average over ~10 frames.
FPS_SMOOTHING = 0.1


@dataclasses.dataclass
class VideoSummary:
    """What a video run did.

    Attributes:
      name: the source's name (the outputs are <name>.mp4 and <name>.jsonl).
      frames: frames predicted and written.
      people_per_frame: mean number of people per frame.
      tracks: distinct track ids given.
      skipped: frames that could not be read, with their indices and reasons.
      truncated_at: index where a video's reads stopped for good, or None.
      expected_frames: frames the selection should have given, where the source says its
        length (files and folders), else None.
      frame_sizes: the distinct (width, height) met, in order.
      seconds: wall time of the run, compilation included.
      compile_seconds: of which compiling the model (once per frame size).
      fps: frames per second over the whole run.
      decode_fps, model_fps, tracking_fps, output_fps: frames per second of each part alone
        (the model's from a batch's dispatch to its results, without compilation, which
        includes host work done meanwhile; output: logging, drawing and encoding). They
        overlap, so the slowest bounds `fps`.
      codec: the video's FourCC.
    """

    name: str
    frames: int = 0
    people_per_frame: float = 0.0
    tracks: int = 0
    skipped: list = dataclasses.field(default_factory=list)
    truncated_at: int | None = None
    expected_frames: int | None = None
    frame_sizes: list = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    compile_seconds: float = 0.0
    fps: float = 0.0
    decode_fps: float = 0.0
    model_fps: float = 0.0
    tracking_fps: float = 0.0
    output_fps: float = 0.0
    codec: str = ""

    @property
    def fps_after_compiling(self) -> float:
        """Frames per second over the run without its compilation time."""
        return _rate(self.frames, self.seconds - self.compile_seconds)

    def describe(self) -> str:
        """The summary as a few lines for the terminal."""
        sizes = ", ".join(f"{w}x{h}" for w, h in self.frame_sizes) or "none"
        lines = [
            f"{self.name}: {self.frames} frames ({sizes}), {self.people_per_frame:.2f} people "
            f"per frame, {self.tracks} tracks",
            f"fps: {self.fps:.2f} overall ({self.seconds:.1f} s, of which compiling "
            f"{self.compile_seconds:.1f} s: {self.fps_after_compiling:.2f} fps without); decode "
            f"{self.decode_fps:.1f}, model "
            f"{self.model_fps:.2f}, tracking {self.tracking_fps:.0f}, drawing and encoding "
            f"{self.output_fps:.1f}",
        ]
        if self.skipped:
            shown = ", ".join(str(frame.index) for frame in self.skipped[:10])
            more = ", ..." if len(self.skipped) > 10 else ""
            lines.append(
                f"skipped {len(self.skipped)} unreadable frames: {shown}{more} "
                f"({self.skipped[0].reason})"
            )
        if self.truncated_at is not None:
            # The skipped list stops at the failed reads that ended reading.
            missing = ""
            if self.expected_frames is not None:
                missing = (
                    f" ({self.expected_frames - self.frames} of the {self.expected_frames} "
                    "frames it announces not read)"
                )
            lines.append(
                f"reading stopped at frame {self.truncated_at}: the video is truncated{missing}"
            )
        return "\n".join(lines)


def _rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else 0.0


def predicted_frames(predictor: Predictor, reader: Iterator, summary: VideoSummary) -> Iterator:
    """(Frame, People) of each frame, in order.

    Each run of frames of one size goes to its own `predict_many` call: within one size the
    results come back in input order, which the tracker needs. A new size (the Predictor
    compiles once for it) is said once on stderr.
    """
    for shape, group in itertools.groupby(reader, key=lambda frame: frame.image.shape):
        size = (shape[1], shape[0])
        if size not in summary.frame_sizes:
            if summary.frame_sizes:
                first = summary.frame_sizes[0]
                print(
                    f"{summary.name}: the frame size changes to {size[0]}x{size[1]}: the model "
                    f"compiles once for it; the video keeps {first[0]}x{first[1]}",
                    file=sys.stderr,
                    flush=True,
                )
            summary.frame_sizes.append(size)
        yield from predictor.predict_many((frame, frame.image) for frame in group)


def run_video(
    predictor: Predictor,
    reader: frames.FrameReader,
    tracker: tracking.Tracker,
    output_dir: str,
    *,
    codec: str = writers.DEFAULT_CODEC,
    keypoint_threshold: float = visualize.DEFAULT_KEYPOINT_THRESHOLD,
    min_score: float = 0.0,
    write_video: bool = True,
    show_progress: bool = True,
) -> VideoSummary:
    """Predicts, tracks, draws and logs every frame of `reader`.

    Writes <output_dir>/<name>.mp4 (skeletons coloured by track id, the id at each person,
    the fps at the top left) and <output_dir>/<name>.jsonl (`writers.PoseLog`), both as the
    frames come, and closes them also when interrupted.

    Args:
      predictor: the model.
      reader: the frames (not yet iterated).
      tracker: a fresh tracker for this video.
      output_dir: where the two files go (it must exist).
      codec: the video's FourCC (see `writers`).
      keypoint_threshold: min keypoint score drawn.
      min_score: min pose score drawn; the log keeps every person.
      write_video: False writes the JSONL log alone (no drawing, no encoding).
      show_progress: report the fps as the run goes (`progress.Progress` on stderr).

    Returns:
      The run's VideoSummary.
    """
    summary = VideoSummary(reader.name)
    stem = os.path.join(output_dir, reader.name)
    started = time.perf_counter()
    compile_before = predictor.report.compile_seconds
    model_before = len(predictor.report.total_seconds), sum(predictor.report.total_seconds)
    track_ids, people, tracking_seconds, output_seconds = set(), 0, 0.0, 0.0
    video, fps, last = None, None, None
    results = predicted_frames(predictor, reader, summary)
    try:
        with (
            writers.PoseLog(f"{stem}.jsonl") as log,
            progress.Progress(
                results, total=reader.total, unit="frame", desc=reader.name, enabled=show_progress
            ) as bar,
        ):
            for frame, found in bar:
                now = time.perf_counter()
                if last is not None:
                    current = 1.0 / max(now - last, 1e-9)
                    fps = current if fps is None else fps + FPS_SMOOTHING * (current - fps)
                last = now
                tracked = tracker.update(found.keypoints, found.scores, frame.timestamp)
                tracking_seconds += time.perf_counter() - now
                track_ids.update(int(i) for i in tracked.ids if i >= 0)
                people += len(tracked.ids)
                summary.frames += 1
                if fps is not None:
                    bar.set_postfix(fps=fps, people=len(tracked.ids))

                now = time.perf_counter()
                log.write(
                    frame.index,
                    frame.timestamp,
                    frame.image.shape,
                    tracked.keypoints,
                    found.scores,
                    tracked.ids,
                )
                if write_video:
                    shown = found.scores >= min_score
                    drawn = visualize.draw_tracks(
                        frame.image,
                        tracked.keypoints[shown],
                        tracked.ids[shown],
                        keypoint_threshold=keypoint_threshold,
                    )
                    caption = f"{fps:.1f} fps" if fps is not None else "-- fps"
                    visualize.draw_caption(drawn, f"{caption}  frame {frame.index}")
                    if video is None:
                        # Plays at the source's speed whatever every_nth leaves out.
                        rate = reader.fps / reader.selection.every_nth
                        size = frame.image.shape[1::-1]
                        video = writers.VideoFile(f"{stem}.mp4", rate, size, codec)
                        summary.codec = video.codec
                    video.write(drawn)
                output_seconds += time.perf_counter() - now
    finally:
        results.close()
        if video is not None:
            # Encoders that look ahead (VP9) encode their last frames here.
            now = time.perf_counter()
            video.close()
            output_seconds += time.perf_counter() - now
    report = predictor.report
    model_frames = len(report.total_seconds) - model_before[0]
    model_seconds = sum(report.total_seconds) - model_before[1]
    summary.seconds = time.perf_counter() - started
    summary.compile_seconds = report.compile_seconds - compile_before
    summary.people_per_frame = people / summary.frames if summary.frames else 0.0
    summary.tracks = len(track_ids)
    summary.skipped = list(reader.skipped)
    summary.truncated_at = reader.truncated_at
    summary.expected_frames = reader.total
    summary.fps = _rate(summary.frames, summary.seconds)
    summary.decode_fps = _rate(summary.frames + len(reader.skipped), reader.decode_seconds)
    summary.model_fps = _rate(model_frames, model_seconds)
    summary.tracking_fps = _rate(summary.frames, tracking_seconds)
    summary.output_fps = _rate(summary.frames, output_seconds)
    return summary
