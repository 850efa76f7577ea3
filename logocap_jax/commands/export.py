"""Exports the inference program with `jax.export` (docs/export.md):

  python -m logocap_jax.commands.export --pretrained w32 --out export/w32
  python -m logocap_jax.commands.export --config configs/w32.py --checkpoint workdir/w32 \
      --platforms cpu,cuda,tpu --sizes any,512x512 --out export/mine

writes one program per size, the weights and model.json into --out (see
`logocap_jax.inference.export`). examples/run_exported.py runs them without this package.

A user error prints one line and exits with status 2; --verbose shows the traceback.
"""

import os

from absl import flags, logging

from logocap_jax import config_utils, errors, weights
from logocap_jax.commands import cli
from logocap_jax.inference import export
from logocap_jax.weights import pretrained

FLAGS = flags.FLAGS


def define_flags(flag_values) -> None:
    """The command's flags; --config.<key>=<value> overrides are read apart (`cli.run_absl`)."""
    flags.DEFINE_string(
        "config",
        None,
        "A bundled config (w32, w48, tiny, mini) or config file; default --pretrained's.",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "checkpoint", None, "Orbax checkpoint or training work directory.", flag_values=flag_values
    )
    flags.DEFINE_string(
        "state_dict", None, "Official .pth/.pth.tar or .npz state dict.", flag_values=flag_values
    )
    flags.DEFINE_enum(
        "pretrained",
        None,
        sorted(pretrained.MODELS),
        "The official COCO-trained weights (downloaded and converted on first use).",
        flag_values=flag_values,
    )
    flags.DEFINE_string("out", None, "The export folder.", flag_values=flag_values)
    flags.DEFINE_list(
        "platforms",
        ["cpu", "cuda", "tpu"],
        f"Platforms to lower for, some of {', '.join(export.PLATFORMS)}; none need be present.",
        flag_values=flag_values,
    )
    flags.DEFINE_list(
        "sizes",
        [export.ANY_SIZE],
        "Network input sizes, one program each: 'any' (height and width multiples of 32) or "
        "WxH, e.g. 512x512.",
        flag_values=flag_values,
    )
    flags.DEFINE_bool("verbose", False, "Show the traceback of an error.", flag_values=flag_values)
    flags.mark_flags_as_required(["out"], flag_values=flag_values)


def weights_source(flag_values) -> str:
    """The one --checkpoint, --state_dict or --pretrained given, for `weights.load`.

    Raises:
      UsageError: not exactly one of them is given.
    """
    given = [flag_values.checkpoint, flag_values.state_dict, flag_values.pretrained]
    if sum(source is not None for source in given) != 1:
        raise errors.UsageError("give exactly one of --checkpoint, --state_dict and --pretrained")
    checkpoint, state_dict, name = given
    if name is not None:
        return name
    source = checkpoint or state_dict
    # A path that looks like a pretrained name is read as the path it is.
    return os.path.join(".", source) if source in pretrained.MODELS else source


def main(argv, config, flag_values=FLAGS) -> None:
    if len(argv) > 1:
        raise errors.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flag_values.verbose:
        logging.set_verbosity(logging.WARNING)
    source = weights_source(flag_values)
    export.check_request(flag_values.sizes, flag_values.platforms)
    if config is None:
        if flag_values.pretrained is None:
            raise errors.UsageError("give --config (or --pretrained, whose config is the default)")
        config = config_utils.load_config(pretrained.MODELS[flag_values.pretrained].config)
    export.require_flatbuffers()
    variables = weights.load(config, source)
    for path in export.export_model(
        config, variables, flag_values.out, sizes=flag_values.sizes, platforms=flag_values.platforms
    ):
        print(path)


def entry_point():
    """The `python -m logocap_jax.commands.export` command."""
    define_flags(FLAGS)
    cli.run_absl(main)


if __name__ == "__main__":
    entry_point()
