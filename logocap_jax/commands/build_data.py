"""The build_data command: builds a COCO-format keypoint set into a TFDS data dir.

python -m logocap_jax.commands.build_data --dataset coco --data_dir ~/tfds --manual_dir data/coco
python -m logocap_jax.commands.build_data --dataset coco_mini --data_dir ~/tfds
"""

import logging
import os
from collections.abc import Sequence

import tensorflow_datasets as tfds
from absl import flags

from logocap_jax import errors
from logocap_jax.commands import cli
from logocap_jax.data.tfds_builders import (
    MINI_DATASETS,
    REPORT_FILE,
    CocoPersonKeypoints,
    OCHuman,
    build_mini,
    build_named,
)


def define_flags(flag_values: flags.FlagValues) -> None:
    define = cli.definer(flag_values)
    define(
        flags.DEFINE_enum,
        "dataset",
        None,
        "The data set to build.",
        enum_values=["coco", "ochuman", *MINI_DATASETS],
        required=True,
    )
    define(flags.DEFINE_string, "data_dir", None, "The TFDS data dir to write into.", required=True)
    define(
        flags.DEFINE_string,
        "manual_dir",
        None,
        "The source files of coco / ochuman (for a mini set: its folder, default the bundled "
        "copy).",
    )
    define(flags.DEFINE_list, "configs", None, "Comma-separated configs (default: all).")
    define(flags.DEFINE_bool, "strict", False, "Fail on a bad record instead of skipping it.")


def main(argv: Sequence[str] | None = None) -> None:
    """Builds one data set into --data_dir.

    Raises:
      UserError: a bad command line or source (`cli.run_main` prints it as one line).
    """
    args, _ = cli.parse(argv, define_flags, doc=__doc__)
    if not args.verbose:
        # TFDS warns through absl that a config object was passed, which the mini sets do.
        logging.getLogger("absl").setLevel(logging.ERROR)
    if args.dataset not in MINI_DATASETS and not args.manual_dir:
        raise errors.UsageError(f"--manual_dir is required for --dataset {args.dataset}")
    if args.dataset in MINI_DATASETS:
        builders = [build_mini(args.dataset, args.data_dir, args.manual_dir, strict=args.strict)]
    else:
        builders = build_named(
            CocoPersonKeypoints if args.dataset == "coco" else OCHuman,
            args.data_dir,
            args.manual_dir,
            args.configs,
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
    cli.run_main(main)
