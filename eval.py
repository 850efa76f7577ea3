"""Evaluates a LOGO-CAP checkpoint on COCO, OCHuman or any COCO-format keypoint set.

  python eval.py --config configs/w32.py --checkpoint ckpt/w32 \
      --dataset coco_val2017 --data_root data/coco
  python eval.py --config configs/tiny.py --state_dict tests/data/golden/tiny_state_dict.npz \
      --annotations data/coco_mini/annotations/person_keypoints_mini.json \
      --images data/coco_mini/images

Writes results.json, stats.json, speed.json and report.md (AP table and speed) to --output_dir.
"""

import argparse

from logocap_jax import config_utils, evaluate, pipeline, predict


def parse_args(argv=None):
    """The command line's arguments, checked; `scales` becomes a tuple of floats."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--checkpoint", help="orbax checkpoint directory")
    parser.add_argument("--state_dict", help="official .pth/.pth.tar or .npz state dict")
    parser.add_argument("--dataset", choices=sorted(evaluate.DATASETS))
    parser.add_argument("--data_root", help="root of the --dataset layout")
    parser.add_argument("--annotations", help="COCO-format annotation file (instead of --dataset)")
    parser.add_argument("--images", help="image folder of --annotations")
    parser.add_argument("--output_dir", default="eval_output")
    parser.add_argument(
        "--no_flip",
        action="store_true",
        help="disable flip test (on unless the config turns it off)",
    )
    parser.add_argument("--scales", default="1", help="comma-separated test scales, e.g. 0.5,1,2")
    parser.add_argument(
        "--adaptation",
        choices=pipeline.ADAPTATION_LEVELS,
        help="refinement: none (center-offset poses), partial (KAM argmax), "
        "full (LOGO-CA, the config's default)",
    )
    parser.add_argument("--batch_size", type=predict.positive_int, default=1)
    parser.add_argument(
        "--time_stages",
        action="store_true",
        help="time the four stages of the paper's Table 4 apart (separate, synchronised "
        "programs; slower) instead of the one fused program",
    )
    parser.add_argument("--max_images", type=predict.positive_int, help="only the first N images")
    parser.add_argument("--image_ids", help="only these comma-separated image ids")
    parser.add_argument(
        "--upper_bound",
        action="store_true",
        help="score the oracle 11x11 local search against the ground truth "
        "from the center-offset poses (the paper's Fig. 2) instead",
    )
    args = parser.parse_args(argv)
    if bool(args.dataset) == bool(args.annotations) or bool(args.annotations) != bool(args.images):
        parser.error("give either --dataset (with --data_root) or --annotations and --images")
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
    """Predicts and scores the chosen set; writes the outputs and returns the evaluation."""
    args = parse_args(argv)
    if args.dataset:
        annotations, images = evaluate.dataset_paths(args.dataset, args.data_root or ".")
        name = args.dataset
    else:
        annotations, images, name = args.annotations, args.images, args.annotations
    config = config_utils.load_config(args.config)
    variables = predict.load_variables(config, args.checkpoint, args.state_dict)
    adaptation = {"adaptation": args.adaptation} if args.adaptation else {}
    predictor = predict.Predictor.from_config(
        config,
        variables,
        batch_size=args.batch_size,
        keep_outputs=args.upper_bound,
        time_stages=args.time_stages,
        flip_test=config.decode.flip_test and not args.no_flip,
        scales=args.scales,
        **adaptation,
    )
    result = evaluate.run_evaluation(
        predictor,
        annotations,
        images,
        max_images=args.max_images,
        image_ids=args.image_ids,
        upper_bound=args.upper_bound,
    )
    print(evaluate.write_outputs(result, args.output_dir, name, predictor.report))
    print(f"Outputs in {args.output_dir}/")
    return result


if __name__ == "__main__":
    main()
