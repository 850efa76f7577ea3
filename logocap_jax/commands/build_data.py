"""The build_data command: builds a COCO-format keypoint set into a TFDS data dir.

python -m logocap_jax.commands.build_data --dataset coco --data_dir ~/tfds --manual_dir data/coco
python -m logocap_jax.commands.build_data --dataset coco_mini --data_dir ~/tfds
"""

import logging
import os
from collections.abc import Sequence

import tensorflow_datasets as tfds

from logocap_jax.commands import cli
from logocap_jax.data.tfds_builders import (
    MINI_DATASETS,
    REPORT_FILE,
    CocoPersonKeypoints,
    OCHuman,
    build_mini,
    build_named,
)


def main(argv: Sequence[str] | None = None):
    """The command line: builds one data set into --data_dir; a user error is one line with
    exit status 2 (`cli.run_main`)."""
    cli.run_main(_build, argv)


def _build(argv: Sequence[str]) -> None:
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, choices=("coco", "ochuman") + MINI_DATASETS)
    parser.add_argument("--data_dir", required=True, help="TFDS data dir to write into")
    parser.add_argument(
        "--manual_dir",
        help="source files of coco / ochuman (for a mini "
        "set: its folder, default the bundled copy)",
    )
    parser.add_argument("--configs", help="comma-separated configs (default: all)")
    parser.add_argument(
        "--strict", action="store_true", help="fail on a bad record instead of skipping it"
    )
    parser.add_argument("--verbose", action="store_true", help="show the traceback of an error")
    args = parser.parse_args(argv)
    if not args.verbose:
        # TFDS warns through absl that a config object was passed, which the mini sets do.
        logging.getLogger("absl").setLevel(logging.ERROR)
    if args.dataset not in MINI_DATASETS and not args.manual_dir:
        parser.error(f"--manual_dir is required for --dataset {args.dataset}")
    if args.dataset in MINI_DATASETS:
        builders = [build_mini(args.dataset, args.data_dir, args.manual_dir, strict=args.strict)]
    else:
        builders = build_named(
            CocoPersonKeypoints if args.dataset == "coco" else OCHuman,
            args.data_dir,
            args.manual_dir,
            args.configs.split(",") if args.configs else None,
            strict=args.strict,
        )
    for builder in builders:
        print(_summary(builder))


def _summary(builder: tfds.core.DatasetBuilder) -> str:
    skipped = builder.info.metadata.get("skipped_records", {})
    splits = ", ".join(
        f"{split} {info.num_examples} records ({skipped.get(split, 0)} skipped)"
        for split, info in builder.info.splits.items()
    )
    report = os.path.join(builder.data_dir, REPORT_FILE)
    return f"{builder.info.full_name}: {splits}; report {report}"


if __name__ == "__main__":
    main()
