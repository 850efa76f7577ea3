r"""Exports the inference program with `jax.export` (docs/export.md):

  python -m logocap_jax.commands.export --pretrained w32 --out export/w32
  python -m logocap_jax.commands.export --config configs/w32.py --checkpoint workdir/w32 \
      --platforms cpu,cuda,tpu --sizes any,512x512 --out export/mine

writes one program per size, the weights and model.json into --out (see
`logocap_jax.inference.export`); examples/run_exported.py runs them without this package.
"""

from absl import flags, logging

from logocap_jax import weights
from logocap_jax.commands import cli, weight_flags
from logocap_jax.inference import export


def define_flags(flag_values: flags.FlagValues) -> None:
    define = cli.definer(flag_values)
    define(flags.DEFINE_string, "out", None, "The export folder.", required=True)
    define(
        flags.DEFINE_list,
        "platforms",
        ["cpu", "cuda", "tpu"],
        f"Platforms to lower for, some of {', '.join(export.PLATFORMS)}; none need be present.",
    )
    define(
        flags.DEFINE_list,
        "sizes",
        [export.ANY_SIZE],
        "Network input sizes, one program each: 'any' (height and width multiples of 32) or "
        "WxH, e.g. 512x512.",
    )


def main(argv=None) -> None:
    """Writes the export folder of the command line and prints the paths written.

    Raises:
      UserError: a bad command line, config or weights, or flatbuffers missing (`cli.run_main`
        prints it as one line).
    """
    args, _ = weight_flags.parse(argv, define_flags, doc=__doc__)
    if not args.verbose:
        logging.set_verbosity(logging.WARNING)
    source = weight_flags.source(args)
    export.check_request(args.sizes, args.platforms)
    export.require_flatbuffers()
    variables = weights.load(args.config, source)
    written = export.export_model(
        args.config, variables, args.out, sizes=args.sizes, platforms=args.platforms
    )
    print("\n".join(written))


def entry_point():
    """The `python -m logocap_jax.commands.export` command."""
    cli.run_main(main)


if __name__ == "__main__":
    entry_point()
