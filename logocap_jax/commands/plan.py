"""Plans a training run on a TPU slice from any host: python -m logocap_jax.commands.plan
--topology v5e:2x2 --config w32 --per_chip_batch 12 --config.train.compute_dtype=bfloat16

Compiles the training step (and the inference program at the test size) for the slice with
XLA's TPU compiler, which runs on this host (the `tpu` extra: pip install -e ".[tpu]"), and
prints per chip: memory against the chip's HBM, FLOPs per step, a roofline step time, the
compile time, the counts of TPU-hostile operations and the largest buffers at the memory peak.
--max_batch searches the largest per-chip batch that fits. Results are cached (--cache).
"""

import os

from absl import flags

from logocap_jax.commands import cli
from logocap_jax.planning import plan as plan_lib
from logocap_jax.planning import report


def define_flags(flag_values: flags.FlagValues) -> None:
    define = cli.definer(flag_values)
    define(flags.DEFINE_string, "topology", "v5e:2x2", "TPU slice, e.g. v5e:2x2, v4:2x2x1.")
    define(
        flags.DEFINE_integer,
        "per_chip_batch",
        12,
        "Training images per chip (the search's start).",
        lower_bound=1,
    )
    define(
        flags.DEFINE_integer,
        "inference_batch",
        1,
        "Test images per chip of the inference program.",
        lower_bound=1,
    )
    define(
        flags.DEFINE_enum,
        "program",
        "both",
        "Which programs to compile.",
        enum_values=["train", "inference", "both"],
    )
    define(
        flags.DEFINE_bool,
        "max_batch",
        False,
        "Search the largest per-chip training batch that fits (several compiles).",
    )
    define(flags.DEFINE_integer, "buffers", 10, "Buffers listed at the memory peak.")
    define(
        flags.DEFINE_float,
        "effort",
        0.0,
        "XLA's exec_time_optimization_effort, -1 to 1: 0 plans what a run compiles; -1 "
        "compiles much faster a less optimised program (a quick check that it "
        "compiles; its memory is not the run's).",
        lower_bound=-1.0,
        upper_bound=1.0,
    )
    define(
        flags.DEFINE_string,
        "cache",
        plan_lib.DEFAULT_CACHE,
        "JSON file of compiled results, keyed by the settings; empty: no cache.",
    )
    define(
        flags.DEFINE_string,
        "dump_dir",
        "",
        "Keep XLA's dumps (optimised program, buffer assignment) here, one folder per program.",
    )


def main(argv=None) -> None:
    """Plans the programs the command line asks for and prints their reports.

    Raises:
      UserError: a bad command line or config, or libtpu missing (`cli.run_main` prints it as
        one line).
    """
    args, _ = cli.parse(argv, define_flags, doc=__doc__, config=True)
    config, topology = args.config, args.topology
    options = dict(
        cache=plan_lib.Cache(args.cache or None), buffers=args.buffers, effort=args.effort
    )

    def dumps(program):
        return os.path.join(args.dump_dir, program) if args.dump_dir else None

    if args.program in ("train", "both") and args.max_batch:
        best, tried = plan_lib.max_batch(
            config, topology, "train", start=args.per_chip_batch, **options
        )
        for batch in sorted(tried):
            print(report.format_plan(tried[batch]))
        print(report.format_search(best, tried))
    elif args.program in ("train", "both"):
        result = plan_lib.plan(
            config, topology, args.per_chip_batch, "train", dump_dir=dumps("train"), **options
        )
        print(report.format_plan(result))
    if args.program in ("inference", "both"):
        result = plan_lib.plan(
            config,
            topology,
            args.inference_batch,
            "inference",
            dump_dir=dumps("inference"),
            **options,
        )
        print(report.format_plan(result))


def entry_point():
    """The `logocap-plan` command: `main` with one-line user errors."""
    cli.run_main(main)


if __name__ == "__main__":
    entry_point()
