"""The ablate command: trains, evaluates and compares CMP variants under one recipe.

  python -m logocap_jax.commands.ablate --config configs/mini.py --workdir workdir/ablation \
      --variants conv,skeleton_graph,attention_window=joint_attention --steps 100 \
      --set attention_window:model.cmp_options.window_attention=True

Each entry of --variants is a CMP variant name (`logocap_jax.models.cmp_variants`, or the import
path of a variant module elsewhere), or LABEL=NAME to run a variant under another label, e.g.
twice with different options. `--config.<field>=<value>` overrides a config field for every
variant, `--set LABEL:<field>=<value>` for one (parsed like --config.<field>=<value>; under
model.cmp_options any option of the variant).

Writes <workdir>/<label>/ per variant and <workdir>/ablation.json, ablation.md and ablation.png
(`logocap_jax.training.ablation`). Rerunning the same command skips finished variants and
resumes an interrupted one. --steps 0 measures the costs only. --init_checkpoint PATH starts
every variant from the model variables at PATH (a converted checkpoint or a training work
directory) with a fresh CMP; with --cmp_only only the CMP trains.
"""

from absl import flags, logging
from ml_collections import config_flags

from logocap_jax import errors
from logocap_jax.commands import cli
from logocap_jax.training import ablation, curves


def define_flags(flag_values: flags.FlagValues) -> None:
    define = cli.definer(flag_values)
    define(
        flags.DEFINE_list,
        "variants",
        None,
        "Comma-separated CMP variants: NAME or LABEL=NAME.",
        required=True,
    )
    define(
        flags.DEFINE_integer,
        "steps",
        None,
        "Training steps per variant; 0 measures the costs only.",
        lower_bound=0,
        required=True,
    )
    define(
        flags.DEFINE_string,
        "workdir",
        None,
        "Directory of the per-variant work directories and the report.",
        required=True,
    )
    define(
        flags.DEFINE_multi_string,
        "set",
        [],
        "Override for one variant: LABEL:FIELD=VALUE, e.g. conv:train.seed=1.",
    )
    define(
        flags.DEFINE_string,
        "init_checkpoint",
        "",
        "Model variables every variant starts from, except the CMP's.",
    )
    define(flags.DEFINE_bool, "cmp_only", False, "Train only the CMP (needs --init_checkpoint).")
    define(
        flags.DEFINE_integer,
        "timing_repeats",
        20,
        "Runs of the local KAMs stage timed (median).",
        lower_bound=1,
    )


def main(argv=None) -> None:
    """Runs the ablation of the command line.

    Raises:
      UserError: a bad command line, config or variant (`cli.run_main` prints it as one line).
    """
    args, _ = cli.parse(argv, define_flags, doc=__doc__, config=True)
    if not args.verbose:
        logging.set_verbosity(logging.WARNING)
    curves.require_matplotlib()  # Before hours of training.
    try:
        variants = ablation.parse_variants(args.variants)
        overrides = ablation.parse_overrides(args.set, [label for label, _ in variants])
        if args.cmp_only and not args.init_checkpoint:
            raise ValueError("--cmp_only trains the CMP on loaded weights: give --init_checkpoint")
    except ValueError as error:
        raise errors.UsageError(str(error)) from None
    try:
        ablation.run(
            args.config,
            variants,
            overrides,
            steps=args.steps,
            workdir=args.workdir,
            init_checkpoint=args.init_checkpoint,
            cmp_only=args.cmp_only,
            timing_repeats=args.timing_repeats,
            config_path=config_flags.get_config_filename(args["config"]),
        )
    except KeyboardInterrupt as stop:
        print(f"Stopped ({stop}); rerun the same command to resume.")


if __name__ == "__main__":
    cli.run_main(main)
