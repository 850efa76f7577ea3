"""Evaluates a LOGO-CAP checkpoint on COCO, OCHuman or any COCO-format keypoint set.

  python eval.py --config configs/w32.py --checkpoint ckpt/w32 \
      --dataset coco_val2017 --data_root data/coco
  python eval.py --pretrained w32 --dataset coco_val2017 --data_root data/coco  # official weights
  python eval.py --config configs/tiny.py --state_dict tests/data/golden/tiny_state_dict.npz \
      --annotations data/coco_mini/annotations/person_keypoints_mini.json \
      --images data/coco_mini/images
  python eval.py ... --config.logo_ca.reweigh=false --config.decode.adaptation=partial

Writes results.json, stats.json, speed.json and report.md (AP table and speed) to --output_dir.
Any config field can be overridden with --config.<key>=<value>, as for train.py.
"""

import sys

import jax
from absl import flags

from logocap_jax import errors, weights
from logocap_jax.commands import cli, weight_flags
from logocap_jax.evaluation import evaluate
from logocap_jax.inference import pipeline, predict

EXIT_STATUSES = """
Exit status: 0 done; 3 done, but some images could not be read (they count as having no
detections, are named on stderr and listed in stats.json under skipped_images); 2 a user error
(one line; --verbose for the traceback); 1 an internal error.
"""


def define_flags(flag_values: flags.FlagValues) -> None:
    """The eval command's own flags (`weight_flags.parse` adds the config, the weights and
    --verbose)."""
    define = cli.definer(flag_values)
    define(
        flags.DEFINE_enum,
        "dataset",
        None,
        "A known data set (with --data_root).",
        enum_values=sorted(evaluate.DATASETS),
    )
    define(flags.DEFINE_string, "data_root", ".", "Root of the --dataset layout.")
    define(
        flags.DEFINE_string,
        "annotations",
        None,
        "A COCO-format annotation file (instead of --dataset).",
    )
    define(flags.DEFINE_string, "images", None, "The image folder of --annotations.")
    define(flags.DEFINE_string, "output_dir", "eval_output", "Folder of the outputs.")
    define(
        flags.DEFINE_bool,
        "no_flip",
        False,
        "Disable the flip test (on unless the config turns it off; same as "
        "--config.decode.flip_test=false).",
    )
    define(
        flags.DEFINE_list,
        "scales",
        None,
        "Comma-separated test scales, e.g. 0.5,1,2 (default: the config's decode.scales).",
    )
    define(
        flags.DEFINE_enum,
        "adaptation",
        None,
        "Refinement: none (center-offset poses), partial (KAM argmax), full (LOGO-CA); "
        "default the config's decode.adaptation.",
        enum_values=list(pipeline.ADAPTATION_LEVELS),
    )
    define(flags.DEFINE_integer, "batch_size", 1, "Images per batch.", lower_bound=1)
    define(
        flags.DEFINE_bool,
        "time_stages",
        False,
        "Time the four stages of the paper's Table 4 apart (separate, synchronised programs; "
        "slower) instead of the one fused program.",
    )
    define(flags.DEFINE_integer, "max_images", None, "Only the first N images.", lower_bound=1)
    define(flags.DEFINE_list, "image_ids", [], "Only these comma-separated image ids.")
    define(
        flags.DEFINE_bool,
        "distributed",
        False,
        "Call jax.distributed.initialize() (several processes share the images; process 0 "
        "writes the outputs).",
    )
    define(
        flags.DEFINE_bool,
        "quiet",
        False,
        "No progress: neither the bar (on a terminal) nor the progress lines (in a log file).",
    )
    define(
        flags.DEFINE_bool,
        "upper_bound",
        False,
        "Score the oracle 11x11 local search against the ground truth from the center-offset "
        "poses (the paper's Fig. 2) instead.",
    )


def _numbers(name: str, values, kind):
    try:
        return tuple(kind(value) for value in values)
    except ValueError:
        raise errors.UsageError(
            f"--{name} must be comma-separated {kind.__name__}s, got {','.join(values)!r}"
        ) from None


def parse_args(argv=None):
    """The command line's flags, checked: `config` is the loaded config with its overrides,
    `scales` a tuple of floats or None (the config's), `image_ids` a tuple of ints.

    Raises:
      UsageError: the command line does not parse, or names no data set or two.
    """
    args, _ = weight_flags.parse(argv, define_flags, doc=__doc__ + EXIT_STATUSES)
    if bool(args.dataset) == bool(args.annotations) or bool(args.annotations) != bool(args.images):
        raise errors.UsageError(
            "give either --dataset (with --data_root) or --annotations and --images"
        )
    args.scales = None if args.scales is None else _numbers("scales", args.scales, float)
    args.image_ids = _numbers("image_ids", args.image_ids, int)
    return args


def main(argv=None) -> evaluate.EvaluationResult:
    """Predicts and scores the chosen set; writes the outputs and returns the evaluation.

    Raises:
      UserError: a bad input (`cli.run_main` prints it as one line).
    """
    args = parse_args(argv)
    if args.distributed:
        jax.distributed.initialize()
    if args.dataset:
        annotations, images = evaluate.dataset_paths(args.dataset, args.data_root)
        name = args.dataset
    else:
        annotations, images, name = args.annotations, args.images, args.annotations
    config = args.config
    variables = weights.load(config, weight_flags.source(args))
    decode = {"flip_test": config.decode.flip_test and not args.no_flip}
    if args.scales is not None:
        decode["scales"] = args.scales
    if args.adaptation is not None:
        decode["adaptation"] = args.adaptation
    predictor = predict.Predictor.from_config(
        config,
        variables,
        batch_size=args.batch_size,
        keep_outputs=args.upper_bound,
        time_stages=args.time_stages,
        **decode,
    )
    result = evaluate.run_evaluation(
        predictor,
        annotations,
        images,
        max_images=args.max_images,
        image_ids=args.image_ids,
        upper_bound=args.upper_bound,
        on_problem=_print_problem,
        progress=not args.quiet,
    )
    if jax.process_index() == 0:
        report = evaluate.write_outputs(
            result, args.output_dir, name, predictor.report, annotations
        )
        print(report)
        print(f"Outputs in {args.output_dir}/")
    return result


def _print_problem(problem: predict.ImageProblem) -> None:
    print(f"warning: {evaluate.describe(problem)}", file=sys.stderr, flush=True)


def exit_status(result: evaluate.EvaluationResult) -> int:
    """cli.EXIT_SKIPPED when an image could not be read, else cli.EXIT_OK."""
    return cli.EXIT_SKIPPED if result.skipped else cli.EXIT_OK


def entry_point():
    """The `logocap-eval` command: `main` with one-line user errors and its exit status."""
    cli.run_main(lambda argv: exit_status(main(argv)))


if __name__ == "__main__":
    entry_point()
