"""The predict command's video mode: `--source` (a video file, camera index, stream URL, or a
folder of frames with `--sequence`) -> <name>.mp4, <name>.jsonl, <name>_summary.json.

  python -m logocap_jax.commands.predict --pretrained w32 --source walk.mp4 --output_dir out
  python -m logocap_jax.commands.predict --pretrained w32 --source 0 --fast --output_dir out

Options, outputs and the codec: docs/commands.md, "Video and cameras".
"""

import argparse
import dataclasses
import json
import os
from collections.abc import Callable

from logocap_jax.commands import cli
from logocap_jax.inference.predict import Predictor
from logocap_jax.video import frames, run, tracking, writers
from logocap_jax.video.smoothing import OneEuroSettings

# --fast: the network input's short side (0.56 times the pixels of the official 512) and no
# flip test (one network pass instead of two): about a quarter of the work.
FAST_INPUT_SIZE = 384
# Options that only apply with --source, and their defaults.
VIDEO_ONLY = {
    "sequence": False,
    "every_nth": 1,
    "max_frames": None,
    "start": 0.0,
    "end": None,
    "fps": None,
    "track_max_age": tracking.TrackerSettings.max_age,
    "smooth": False,
    "video_codec": writers.DEFAULT_CODEC,
}
# Image options that mean nothing for a video.
IMAGE_ONLY = ("panel_joint", "fail_fast")


def _count(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return int(value)


def _age(value: str) -> int:
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {value!r}")
    return int(value)


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {value!r}")
    return seconds


def _rate(value: str) -> float:
    try:
        rate = float(value)
    except ValueError:
        rate = 0.0
    if not 0 < rate < 1000:
        raise argparse.ArgumentTypeError(f"expected frames per second in (0, 1000), got {value!r}")
    return rate


def add_video_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds --source and the options of the video mode, and --fast (both modes)."""
    group = parser.add_argument_group("video, cameras and streams")
    group.add_argument(
        "--source",
        help="instead of images: a video file, a camera index (0), a stream URL "
        "(rtsp://..., http://...), or with --sequence a folder of frames",
    )
    group.add_argument(
        "--sequence", action="store_true", help="--source is a folder of frames, read in name order"
    )
    group.add_argument("--every_nth", type=_count, default=1, help="predict every n-th frame")
    group.add_argument("--max_frames", type=_count, help="stop after this many frames")
    group.add_argument("--start", type=_seconds, default=0.0, help="seconds into the source")
    group.add_argument("--end", type=_seconds, help="stop at this many seconds into the source")
    group.add_argument(
        "--fps",
        type=_rate,
        help="the source's frame rate (default: what the video says; 30 for --sequence)",
    )
    group.add_argument(
        "--track_max_age",
        type=_age,
        default=VIDEO_ONLY["track_max_age"],
        help="frames a person may go unseen and keep its track id",
    )
    group.add_argument(
        "--smooth", action="store_true", help="smooth each track's keypoints (One-Euro filter)"
    )
    group.add_argument(
        "--video_codec",
        choices=writers.CODECS,
        default=writers.DEFAULT_CODEC,
        help="FourCC of the drawn video: vp09 plays in browsers and Colab; mp4v encodes "
        "faster but browsers do not play it",
    )
    group.add_argument(
        "--fast",
        action="store_true",
        help=f"faster, less accurate: no flip test and network short side {FAST_INPUT_SIZE} "
        "(or the config's, if smaller); same as --config.decode.flip_test=false "
        f"--config.test.input_size={FAST_INPUT_SIZE}",
    )


def apply_fast(config) -> None:
    """The --fast preset, in place: flip test off, test short side at most FAST_INPUT_SIZE."""
    config.decode.flip_test = False
    config.test.input_size = min(config.test.input_size, FAST_INPUT_SIZE)


def check_video_arguments(parser: argparse.ArgumentParser, args) -> None:
    """Rejects image-only options with --source (one line, status 2)."""
    # Identity, not equality: --panel_joint 0 (nose) is given, though 0 == False.
    given = [
        f"--{name}"
        for name in IMAGE_ONLY
        if getattr(args, name) is not None and getattr(args, name) is not False
    ]
    if given:
        parser.error(f"{', '.join(given)} only apply to images, not to --source")


def reject_video_arguments(parser: argparse.ArgumentParser, args) -> None:
    """Rejects video options without --source (one line, status 2)."""
    given = [f"--{name}" for name, default in VIDEO_ONLY.items() if getattr(args, name) != default]
    if given:
        parser.error(f"{', '.join(given)} need --source")


def main(args, load_variables: Callable) -> int:
    """Runs the video mode of the predict command.

    The source is opened before the weights load, so a bad source fails at once.

    Args:
      args: the parsed command line (with --source).
      load_variables: returns the model variables.

    Returns:
      The exit status: cli.EXIT_OK, or cli.EXIT_SKIPPED when frames could not be read.

    Raises:
      UserError: a source that cannot be opened or bad options (one line through
        `cli.run_main`).
    """
    config = args.config
    reader = frames.open_source(
        args.source,
        sequence=args.sequence,
        every_nth=args.every_nth,
        max_frames=args.max_frames,
        start=args.start,
        end=args.end,
        fps=args.fps,
    )
    with reader:
        predictor = Predictor.from_config(
            config,
            load_variables(),
            batch_size=args.batch_size,
            flip_test=config.decode.flip_test and not args.no_flip,
        )
        # The drawing's keypoint threshold: a model whose scores are low overall (--threshold
        # lowered to draw it) would otherwise have no keypoints to match people by.
        settings = tracking.TrackerSettings(
            keypoint_threshold=args.threshold,
            max_age=args.track_max_age,
            frame_rate=reader.fps / args.every_nth,
            smoothing=OneEuroSettings() if args.smooth else None,
        )
        os.makedirs(args.output_dir, exist_ok=True)
        summary = run.run_video(
            predictor,
            reader,
            tracking.Tracker(settings),
            args.output_dir,
            codec=args.video_codec,
            keypoint_threshold=args.threshold,
            min_score=args.min_score,
            write_video=not args.no_draw,
            show_progress=not args.quiet,
        )
    summary_path = os.path.join(args.output_dir, f"{summary.name}_summary.json")
    report = dataclasses.asdict(summary)
    report["skipped"] = [frame._asdict() for frame in summary.skipped]
    with open(summary_path, "w") as f:
        json.dump(report, f, indent=1)
    print(summary.describe())
    return cli.EXIT_SKIPPED if summary.skipped else cli.EXIT_OK
