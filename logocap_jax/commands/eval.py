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

from logocap_jax import weights
from logocap_jax.commands import cli
from logocap_jax.commands import predict as predict_command
from logocap_jax.evaluation import evaluate
from logocap_jax.inference import pipeline, predict

EPILOG = (
    "Exit status: 0 done; 3 done, but some images could not be read (they count as having no "
    "detections, are named on stderr and listed in stats.json under skipped_images); 2 a user "
    "error (one line; --verbose for the traceback); 1 an internal error."
)


def parse_args(argv=None):
    """The command line's arguments, checked: `config` is the loaded config with its
    overrides, `scales` a tuple of floats or None (the config's)."""
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=EPILOG)
    predict_command.add_weights_arguments(parser)
    parser.add_argument("--dataset", choices=sorted(evaluate.DATASETS))
    parser.add_argument("--data_root", help="root of the --dataset layout")
    parser.add_argument("--annotations", help="COCO-format annotation file (instead of --dataset)")
    parser.add_argument("--images", help="image folder of --annotations")
    parser.add_argument("--output_dir", default="eval_output")
    parser.add_argument(
        "--no_flip",
        action="store_true",
        help="disable flip test (on unless the config turns it off; "
        "same as --config.decode.flip_test=false)",
    )
    parser.add_argument(
        "--scales",
        help="comma-separated test scales, e.g. 0.5,1,2 (default: the config's decode.scales)",
    )
    parser.add_argument(
        "--adaptation",
        choices=pipeline.ADAPTATION_LEVELS,
        help="refinement: none (center-offset poses), partial (KAM argmax), "
        "full (LOGO-CA); default the config's decode.adaptation",
    )
    parser.add_argument("--batch_size", type=predict_command.positive_int, default=1)
    parser.add_argument(
        "--time_stages",
        action="store_true",
        help="time the four stages of the paper's Table 4 apart (separate, synchronised "
        "programs; slower) instead of the one fused program",
    )
    parser.add_argument(
        "--max_images", type=predict_command.positive_int, help="only the first N images"
    )
    parser.add_argument("--image_ids", help="only these comma-separated image ids")
    parser.add_argument(
        "--distributed",
        action="store_true",
        help="call jax.distributed.initialize() (several processes share the images; "
        "process 0 writes the outputs)",
    )
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="no progress: neither the bar (on a terminal) nor the progress lines (in a log file)",
    )
    parser.add_argument(
        "--upper_bound",
        action="store_true",
        help="score the oracle 11x11 local search against the ground truth "
        "from the center-offset poses (the paper's Fig. 2) instead",
    )
    args = predict_command.parse_args_with_weights(parser, argv)
    if bool(args.dataset) == bool(args.annotations) or bool(args.annotations) != bool(args.images):
        parser.error("give either --dataset (with --data_root) or --annotations and --images")
    if args.scales is not None:
        try:
            args.scales = tuple(float(s) for s in args.scales.split(","))
        except ValueError:
            parser.error(f"--scales must be comma-separated numbers, got {args.scales!r}")
    try:
        args.image_ids = tuple(int(i) for i in args.image_ids.split(",")) if args.image_ids else ()
    except ValueError:
        parser.error(f"--image_ids must be comma-separated integers, got {args.image_ids!r}")
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
        annotations, images = evaluate.dataset_paths(args.dataset, args.data_root or ".")
        name = args.dataset
    else:
        annotations, images, name = args.annotations, args.images, args.annotations
    config = args.config
    variables = weights.load(config, predict_command.weights_source(args))
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
