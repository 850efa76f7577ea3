"""The predict command: photos and folders -> results.json, drawn skeletons, failures.json;
a video, camera, stream or folder of frames (--source) -> a drawn, tracked video and a JSONL log.

  python -m logocap_jax.commands.predict --pretrained w32 photo.jpg --output_dir out  # official
  python -m logocap_jax.commands.predict --config configs/w32.py --checkpoint ckpt/w32 \
      photos/ --output_dir out
  python -m logocap_jax.commands.predict ... --panel_joint left_wrist   # one instance panel too
  python -m logocap_jax.commands.predict ... --config.logo_ca.reweigh=false   # any config field
  python -m logocap_jax.commands.predict --pretrained w32 --source walk.mp4 --output_dir out

Installed as `logocap-predict`. Options, outputs and exit statuses: docs/commands.md.
"""

import argparse
import collections
import json
import os
import sys
from collections.abc import Iterable

from logocap_jax import errors, progress, weights
from logocap_jax.commands import cli, predict_video
from logocap_jax.inference import postprocess, preprocess, visualize
from logocap_jax.inference.predict import (
    ImageProblem,
    People,
    Predictor,
    best_person_panel,
    overlay,
)
from logocap_jax.keypoints import JOINT_NAMES
from logocap_jax.weights import pretrained


def image_files(inputs) -> list:
    """Image paths from files and folders (folders: their image files, sorted).

    An input that does not exist is kept as a file, to be skipped and reported when it is read,
    unless no input exists at all.

    Raises:
      InputNotFoundError: no input exists.
      InputFormatError: a folder holds no image file, or there are no inputs.
    """
    if not inputs:
        raise errors.InputFormatError("No input images or folders given (or --source for a video)")
    paths = []
    for entry in inputs:
        if os.path.isdir(entry):
            paths += preprocess.image_files_in(entry)
        else:
            paths.append(entry)
    if not any(os.path.lexists(entry) for entry in inputs):
        raise errors.InputNotFoundError(f"No such image or folder: {', '.join(inputs)}")
    return paths


def image_ids(paths) -> list:
    """COCO ids from numeric file names (000000197388.jpg -> 197388) when every name is a
    distinct number, else the input positions 0, 1, ... (never a mix, which could collide)."""
    stems = [os.path.splitext(os.path.basename(path))[0] for path in paths]
    numbers = [int(stem) for stem in stems if stem.isdigit()]
    if len(numbers) == len(paths) and len(set(numbers)) == len(numbers):
        return numbers
    return list(range(len(paths)))


def weights_source(args) -> str:
    """The weights a command line names: its one --checkpoint, --state_dict or --pretrained,
    for `weights.load`.

    Raises:
      UsageError: not exactly one of them is given.
    """
    given = [args.checkpoint, args.state_dict, args.pretrained]
    if sum(source is not None for source in given) != 1:
        raise errors.UsageError(
            "give exactly one of --checkpoint (orbax directory), --state_dict and --pretrained"
        )
    checkpoint, state_dict, name = given
    if name is not None:
        return name
    source = checkpoint or state_dict
    # A path that looks like a pretrained name is read as the path it is.
    return os.path.join(".", source) if source in pretrained.MODELS else source


def add_weights_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds --config and the weights: --checkpoint, --state_dict or --pretrained, whose
    release's config is the default --config (see `parse_args_with_weights`)."""
    cli.add_config_arguments(parser, required=False)
    parser.add_argument("--checkpoint", help="orbax checkpoint directory (from convert or train)")
    parser.add_argument("--state_dict", help="official .pth/.pth.tar or .npz state dict")
    parser.add_argument(
        "--pretrained",
        choices=sorted(pretrained.MODELS),
        help="the official COCO-trained weights of this model, downloaded and converted on "
        f"first use (cached in ${pretrained.CACHE_DIR_ENV} or ~/.cache/logocap_jax; a mirror "
        f"or local copy of the release folder: ${pretrained.RELEASE_URL_ENV}); the config "
        "defaults to the model's bundled config, and --config replaces it (its model must fit "
        "the weights)",
    )


def parse_args_with_weights(parser: argparse.ArgumentParser, argv=None):
    """`cli.parse_args` for a parser with `add_weights_arguments`: without --config, the
    config is --pretrained's (w32 -> the bundled w32), and its overrides apply to it.

    Raises:
      SystemExit: neither --config nor --pretrained is given (one line, status 2).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    release = pretrained.MODELS.get(cli.option_value(argv, "--pretrained"))
    args = cli.parse_args(parser, argv, default_config=release.config if release else None)
    if args.config is None:
        parser.error("the following arguments are required: --config (or --pretrained)")
    return args


def _joint_arg(value: str) -> int:
    """A joint given by COCO name (left_wrist) or index (9), for --panel_joint."""
    if value in JOINT_NAMES:
        return JOINT_NAMES.index(value)
    if value.isdigit() and int(value) < len(JOINT_NAMES):
        return int(value)
    raise argparse.ArgumentTypeError(
        f"{value!r} is neither a joint index 0-{len(JOINT_NAMES) - 1} nor one of "
        f"{', '.join(JOINT_NAMES)}"
    )


def positive_int(value: str) -> int:
    """An argparse type for counts such as --batch_size: an integer >= 1."""
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return int(value)


def parse_args(argv=None):
    """The CLI's arguments; `paths` holds the input images, `config` the loaded config with its
    `--config.<key>=<value>` overrides (an input error exits with one line, status 2); with
    --source, the video options instead of `paths` (see `predict_video`)."""
    parser = cli.ArgumentParser(
        description="LOGO-CAP poses for images (COCO JSON and overlays) or, with --source, for "
        "a video, camera, stream or folder of frames (a tracked, drawn video and a JSONL log).",
        epilog="Exit status: 0 every image (frame) predicted; 3 some images (frames) skipped "
        "(named on stderr and in failures.json, results.json holds the others); 2 a user error "
        "(one line; "
        "--verbose for the traceback), or with --fail_fast the first image that cannot be "
        "read; 1 an internal error.",
    )
    parser.add_argument("inputs", nargs="*", help="image files or folders")
    add_weights_arguments(parser)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument(
        "--no_flip",
        action="store_true",
        help="disable flip test (on unless the config turns it off)",
    )
    parser.add_argument("--batch_size", type=positive_int, default=1)
    parser.add_argument("--no_draw", action="store_true", help="skip the overlay PNGs")
    parser.add_argument(
        "--threshold",
        type=float,
        default=visualize.DEFAULT_KEYPOINT_THRESHOLD,
        help="min keypoint score drawn",
    )
    parser.add_argument(
        "--min_score",
        type=float,
        default=0.0,
        help="min pose score drawn (default 0: every person found); results.json "
        "keeps every person",
    )
    parser.add_argument(
        "--panel_joint",
        type=_joint_arg,
        help="also write <name>_panel.png: local window, KAM and refined heatmap "
        "of this joint (name or index) of the best-scoring person",
    )
    parser.add_argument(
        "--fail_fast",
        action="store_true",
        help="stop at the first image that cannot be read (exit status 2, no results.json) "
        "instead of skipping it",
    )
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="no progress: neither the bar (on a terminal) nor the progress lines (in a log file)",
    )
    predict_video.add_video_arguments(parser)
    args = parse_args_with_weights(parser, argv)
    if args.fast:
        predict_video.apply_fast(args.config)
    if args.source is not None:
        if args.inputs:
            parser.error("give either image files and folders or --source, not both")
        predict_video.check_video_arguments(parser, args)
        return args
    predict_video.reject_video_arguments(parser, args)
    try:
        args.paths = image_files(args.inputs)
    except errors.UserError as err:
        parser.error(str(err))
    # Outputs are named after the file (and numeric names give the COCO id): no silent overwrite.
    stems = collections.Counter(os.path.splitext(os.path.basename(p))[0] for p in args.paths)
    shared = sorted(stem for stem, count in stems.items() if count > 1)
    if shared:
        parser.error(
            f"several input images share the file name(s) {shared}; their outputs "
            "would overwrite each other"
        )
    return args


def _write_images(args, path: str, people: People) -> None:
    """The overlay and instance panel PNGs of one image, as the CLI options ask."""
    if args.no_draw and args.panel_joint is None:
        return
    image = preprocess.decode_image_file(path).image
    stem = os.path.join(args.output_dir, os.path.splitext(os.path.basename(path))[0])
    if not args.no_draw:
        visualize.save_png(
            f"{stem}.png",
            overlay(image, people, keypoint_threshold=args.threshold, min_score=args.min_score),
        )
    if args.panel_joint is not None:
        panel = best_person_panel(image, people, args.panel_joint)
        if panel is not None:
            visualize.save_png(f"{stem}_panel.png", panel)


class ResultsFile:
    """A COCO results JSON list written entry by entry, so that a long run keeps no results in
    memory. It appears under its name only when complete: an exception inside the `with` block
    leaves no file."""

    def __init__(self, path: str):
        self.path, self._partial = path, f"{path}.partial"
        self.count = 0

    def __enter__(self):
        self._file = open(self._partial, "w")
        self._file.write("[")
        return self

    def write(self, entries: Iterable[dict]) -> None:
        for entry in entries:
            self._file.write((", " if self.count else "") + json.dumps(entry))
            self.count += 1

    def __exit__(self, kind, value, trace):
        self._file.write("]")
        self._file.close()
        if kind is None:
            os.replace(self._partial, self.path)
        else:
            os.remove(self._partial)


def failures_report(paths, ids: dict, problems: list, predicted: int) -> dict:
    """failures.json: counts and one entry per image that was skipped or partially decoded."""
    return {
        "images": len(paths),
        "predicted": predicted,
        "skipped": sum(p.skipped for p in problems),
        "partially_decoded": sum(not p.skipped for p in problems),
        "failures": [
            {
                "path": p.path,
                "image_id": ids[paths[p.key]],
                "problem": p.problem,
                "reason": p.reason,
                "skipped": p.skipped,
            }
            for p in problems
        ],
    }


def main(argv=None) -> int:
    """Predicts every input image; writes results.json, failures.json, image_ids.json and the
    PNGs asked for.

    Returns:
      The exit status: cli.EXIT_OK, or cli.EXIT_SKIPPED when an image was skipped.

    Raises:
      UserError: a bad input (`cli.run_main` prints it as one line), and with fail_fast the
        first image that cannot be read.
    """
    args = parse_args(argv)
    config = args.config
    if args.source is not None:
        return predict_video.main(args, lambda: weights.load(config, weights_source(args)))
    variables = weights.load(config, weights_source(args))
    predictor = Predictor.from_config(
        config,
        variables,
        batch_size=args.batch_size,
        keep_outputs=args.panel_joint is not None,
        flip_test=config.decode.flip_test and not args.no_flip,
    )
    os.makedirs(args.output_dir, exist_ok=True)
    paths, problems, predicted = args.paths, [], 0
    ids = dict(zip(paths, image_ids(paths)))

    def report(problem: ImageProblem) -> None:
        problems.append(problem)
        print(f"warning: {problem.describe()}", file=sys.stderr, flush=True)

    results_path = os.path.join(args.output_dir, "results.json")
    items = predictor.predict_many(enumerate(paths), on_problem=report, fail_fast=args.fail_fast)
    with (
        ResultsFile(results_path) as results,
        progress.Progress(
            items, total=len(paths), unit="img", desc="predict", enabled=not args.quiet
        ) as bar,
    ):
        for index, people in bar:
            path = paths[index]
            results.write(postprocess.coco_results(ids[path], people.keypoints, people.scores))
            _write_images(args, path, people)
            predicted += 1
            print(f"{path}: {len(people.scores)} people", flush=True)
    with open(os.path.join(args.output_dir, "image_ids.json"), "w") as f:
        json.dump(ids, f, indent=1)
    failures_path = os.path.join(args.output_dir, "failures.json")
    report_json = failures_report(paths, ids, problems, predicted)
    with open(failures_path, "w") as f:
        json.dump(report_json, f, indent=1)
    summary = (
        f"Predicted {predicted} of {len(paths)} images: {results.count} poses in {results_path}"
    )
    if problems:
        summary += (
            f"; {report_json['skipped']} skipped, {report_json['partially_decoded']} partially "
            f"decoded (see {failures_path})"
        )
    print(summary)
    return cli.EXIT_SKIPPED if report_json["skipped"] else cli.EXIT_OK


def entry_point():
    """The `logocap-predict` command: `main` with one-line user errors and its exit status."""
    cli.run_main(main)


if __name__ == "__main__":
    entry_point()
