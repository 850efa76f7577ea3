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

import collections
import functools
import json
import os
import sys
from collections.abc import Iterable

from absl import flags

from logocap_jax import errors, progress, weights
from logocap_jax.commands import cli, predict_video, weight_flags
from logocap_jax.inference import postprocess, preprocess, visualize
from logocap_jax.inference.predict import (
    ImageProblem,
    People,
    Predictor,
    best_person_panel,
    overlay,
)
from logocap_jax.keypoints import JOINT_NAMES


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


class _JointParser(flags.ArgumentParser):
    """A joint given by COCO name (left_wrist) or index (9), for --panel_joint."""

    def parse(self, argument):
        if isinstance(argument, int) or argument in JOINT_NAMES:
            return argument if isinstance(argument, int) else JOINT_NAMES.index(argument)
        if argument.isdigit() and int(argument) < len(JOINT_NAMES):
            return int(argument)
        raise ValueError(
            f"{argument!r} is neither a joint index 0-{len(JOINT_NAMES) - 1} nor one of "
            f"{', '.join(JOINT_NAMES)}"
        )

    def flag_type(self):
        return "joint"


def define_flags(flag_values: flags.FlagValues) -> None:
    """The predict command's own flags (`weight_flags.parse` adds the config, the weights and
    --verbose)."""
    define = cli.definer(flag_values)
    define(flags.DEFINE_string, "output_dir", None, "Folder of the outputs.", required=True)
    define(
        flags.DEFINE_bool,
        "no_flip",
        False,
        "Disable the flip test (on unless the config turns it off).",
    )
    define(
        flags.DEFINE_integer,
        "batch_size",
        1,
        "Images per batch (the global batch, over the local devices).",
        lower_bound=1,
    )
    define(flags.DEFINE_bool, "no_draw", False, "Skip the overlay PNGs.")
    define(
        flags.DEFINE_float,
        "threshold",
        visualize.DEFAULT_KEYPOINT_THRESHOLD,
        "Lowest keypoint score drawn.",
    )
    define(
        flags.DEFINE_float,
        "min_score",
        0.0,
        "Lowest pose score drawn (default 0: every person found); results.json keeps every person.",
    )
    define(
        functools.partial(flags.DEFINE, _JointParser()),
        "panel_joint",
        None,
        "Also write <name>_panel.png: local window, KAM and refined heatmap of this joint "
        "(name or index) of the best-scoring person.",
    )
    define(
        flags.DEFINE_bool,
        "fail_fast",
        False,
        "Stop at the first image that cannot be read (exit status 2, no results.json) instead "
        "of skipping it.",
    )
    define(
        flags.DEFINE_bool,
        "quiet",
        False,
        "No progress: neither the bar (on a terminal) nor the progress lines (in a log file).",
    )
    predict_video.define_flags(flag_values)


def parse_args(argv=None):
    """(the command line's flags, the input image paths): `flags.config` is the loaded config
    with its overrides and --fast; the paths are empty with --source.

    Raises:
      UsageError: the command line does not parse, or its flags and inputs do not go together.
      ConfigError: the config or an override is bad.
    """
    args, inputs = weight_flags.parse(argv, define_flags, doc=__doc__, positional=True)
    predict_video.check_flags(args)
    if args.fast:
        predict_video.apply_fast(args.config)
    if args.source is not None:
        if inputs:
            raise errors.UsageError("give either image files and folders or --source, not both")
        return args, []
    paths = image_files(inputs)
    # Outputs are named after the file (and numeric names give the COCO id): no silent overwrite.
    stems = collections.Counter(os.path.splitext(os.path.basename(p))[0] for p in paths)
    shared = sorted(stem for stem, count in stems.items() if count > 1)
    if shared:
        raise errors.UsageError(
            f"several input images share the file name(s) {shared}; their outputs "
            "would overwrite each other"
        )
    return args, paths


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
    args, paths = parse_args(argv)
    config = args.config
    if args.source is not None:
        return predict_video.main(args, lambda: weights.load(config, weight_flags.source(args)))
    variables = weights.load(config, weight_flags.source(args))
    predictor = Predictor.from_config(
        config,
        variables,
        batch_size=args.batch_size,
        keep_outputs=args.panel_joint is not None,
        flip_test=config.decode.flip_test and not args.no_flip,
    )
    os.makedirs(args.output_dir, exist_ok=True)
    problems, predicted = [], 0
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
