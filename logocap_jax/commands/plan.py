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

from logocap_jax import errors
from logocap_jax.commands import cli
from logocap_jax.planning import plan as plan_lib
from logocap_jax.planning import report

FLAGS = flags.FLAGS


def define_flags(flag_values) -> None:
    kw = dict(flag_values=flag_values)
    flags.DEFINE_string(
        "config",
        None,
        "Config name or file; override any of its fields with --config.<key>=<value>.",
        **kw,
    )
    flags.DEFINE_string("topology", "v5e:2x2", "TPU slice, e.g. v5e:2x2, v4:2x2x1.", **kw)
    flags.DEFINE_integer(
        "per_chip_batch",
        12,
        "Training images per chip (the search's start).",
        **kw,
    )
    flags.DEFINE_integer(
        "inference_batch",
        1,
        "Test images per chip of the inference program.",
        **kw,
    )
    flags.DEFINE_enum(
        "program",
        "both",
        ["train", "inference", "both"],
        "Which programs to compile.",
        **kw,
    )
    flags.DEFINE_bool(
        "max_batch",
        False,
        "Search the largest per-chip training batch that fits (several compiles).",
        **kw,
    )
    flags.DEFINE_integer("buffers", 10, "Buffers listed at the memory peak.", **kw)
    flags.DEFINE_string(
        "cache",
        plan_lib.DEFAULT_CACHE,
        "JSON file of compiled results, keyed by the settings; empty: no cache.",
        **kw,
    )
    flags.DEFINE_string(
        "dump_dir",
        "",
        "Keep XLA's dumps (optimised program, buffer assignment) here, one folder per program.",
        **kw,
    )
    flags.DEFINE_bool("verbose", False, "Show the traceback of an error.", **kw)
    flags.mark_flags_as_required(["config"], flag_values=flag_values)


def main(flag_values, argv, config) -> None:
    if len(argv) > 1:
        raise errors.UsageError(f"unexpected arguments: {argv[1:]}")
    cache = plan_lib.Cache(flag_values.cache or None)
    topology, options = flag_values.topology, dict(cache=cache, buffers=flag_values.buffers)

    def dumps(program):
        return os.path.join(flag_values.dump_dir, program) if flag_values.dump_dir else None

    if flag_values.program in ("train", "both"):
        if flag_values.max_batch:
            best, tried = plan_lib.max_batch(
                config, topology, "train", start=flag_values.per_chip_batch, **options
            )
            for batch in sorted(tried):
                print(report.format_plan(tried[batch]))
            print(report.format_search(best, tried))
        else:
            result = plan_lib.plan(
                config,
                topology,
                flag_values.per_chip_batch,
                "train",
                dump_dir=dumps("train"),
                **options,
            )
            print(report.format_plan(result))
    if flag_values.program in ("inference", "both"):
        result = plan_lib.plan(
            config,
            topology,
            flag_values.inference_batch,
            "inference",
            dump_dir=dumps("inference"),
            **options,
        )
        print(report.format_plan(result))


def entry_point():
    define_flags(FLAGS)
    cli.run_absl(lambda argv, config: main(FLAGS, argv, config))


if __name__ == "__main__":
    entry_point()
