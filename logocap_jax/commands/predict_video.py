"""The predict command's video mode: `--source` (a video file, camera index, stream URL, or a
folder of frames with `--sequence`) -> <name>.mp4, <name>.jsonl, <name>_summary.json.

  python -m logocap_jax.commands.predict --pretrained w32 --source walk.mp4 --output_dir out
  python -m logocap_jax.commands.predict --pretrained w32 --source 0 --fast --output_dir out

Options, outputs and the codec: docs/commands.md, "Video and cameras".
"""

import dataclasses
import json
import os
from collections.abc import Callable

from absl import flags

from logocap_jax import errors
from logocap_jax.commands import cli
from logocap_jax.inference.predict import Predictor
from logocap_jax.video import frames, run, tracking, writers
from logocap_jax.video.smoothing import OneEuroSettings

# --fast: the network input's short side (0.56 times the pixels of the official 512) and no
# flip test (one network pass instead of two): about a quarter of the work.
FAST_INPUT_SIZE = 384
# Options that only apply with --source.
VIDEO_ONLY = (
    "sequence",
    "every_nth",
    "max_frames",
    "start",
    "end",
    "fps",
    "track_max_age",
    "smooth",
    "video_codec",
)
# Image options that mean nothing for a video.
IMAGE_ONLY = ("panel_joint", "fail_fast")


def define_flags(flag_values: flags.FlagValues) -> None:
    """Defines --source and the flags of the video mode, and --fast (both modes)."""
    define = cli.definer(flag_values)
    define(
        flags.DEFINE_string,
        "source",
        None,
        "Instead of images: a video file, a camera index (0), a stream URL (rtsp://..., "
        "http://...), or with --sequence a folder of frames.",
    )
    define(flags.DEFINE_bool, "sequence", False, "--source is a folder of frames, in name order.")
    define(flags.DEFINE_integer, "every_nth", 1, "Predict every n-th frame.", lower_bound=1)
    define(flags.DEFINE_integer, "max_frames", None, "Stop after this many frames.", lower_bound=1)
    define(flags.DEFINE_float, "start", 0.0, "Seconds into the source.", lower_bound=0.0)
    define(
        flags.DEFINE_float,
        "end",
        None,
        "Stop at this many seconds into the source.",
        lower_bound=0.0,
    )
    define(
        flags.DEFINE_float,
        "fps",
        None,
        "The source's frame rate (default: what the video says; 30 for --sequence).",
        lower_bound=1e-3,
        upper_bound=1000.0,
    )
    define(
        flags.DEFINE_integer,
        "track_max_age",
        tracking.TrackerSettings.max_age,
        "Frames a person may go unseen and keep its track id.",
        lower_bound=0,
    )
    define(flags.DEFINE_bool, "smooth", False, "Smooth each track's keypoints (One-Euro filter).")
    define(
        flags.DEFINE_enum,
        "video_codec",
        writers.DEFAULT_CODEC,
        "FourCC of the drawn video: vp09 plays in browsers and Colab; mp4v encodes faster but "
        "browsers do not play it.",
        enum_values=list(writers.CODECS),
    )
    define(
        flags.DEFINE_bool,
        "fast",
        False,
        f"Faster, less accurate: no flip test and network short side {FAST_INPUT_SIZE} (or the "
        "config's, if smaller); same as --config.decode.flip_test=false "
        f"--config.test.input_size={FAST_INPUT_SIZE}.",
    )


def apply_fast(config) -> None:
    """The --fast preset, in place: flip test off, test short side at most FAST_INPUT_SIZE."""
    config.decode.flip_test = False
    config.test.input_size = min(config.test.input_size, FAST_INPUT_SIZE)


def check_flags(flag_values: flags.FlagValues) -> None:
    """Rejects image-only flags with --source, and video flags without it.

    Raises:
      UsageError: naming the flags given in the wrong mode.
    """
    video = flag_values.source is not None
    wrong = [name for name in (IMAGE_ONLY if video else VIDEO_ONLY) if flag_values[name].present]
    if wrong and video:
        raise errors.UsageError(
            f"{', '.join('--' + name for name in wrong)} only apply to images, not to --source"
        )
    if wrong:
        verb = "needs" if len(wrong) == 1 else "need"
        raise errors.UsageError(f"{', '.join('--' + name for name in wrong)} {verb} --source")


def main(args, load_variables: Callable) -> int:
    """Runs the video mode of the predict command.

    The source is opened before the weights load, so a bad source fails at once.

    Args:
      args: the parsed flags (with --source).
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
        # The drawing's thresholds: a model whose scores are low overall (--threshold lowered
        # to draw it) would otherwise have no keypoints to match people by, and a person too
        # unlikely to be drawn (--min_score) starts no track, so its near-duplicate detections
        # do not take ids.
        settings = tracking.TrackerSettings(
            keypoint_threshold=args.threshold,
            birth_score=args.min_score,
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
