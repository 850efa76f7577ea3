"""The convert command: an official state dict (or any weights source) -> an orbax checkpoint.

  python -m logocap_jax.commands.convert --config configs/w32.py \
      --input logocap-hrnet-w32-coco.pth.tar --output ckpt/w32

Installed as `logocap-convert`.
"""

import os

import jax
import numpy as np

from logocap_jax import errors
from logocap_jax.weights.convert import load_state_dict, model_template, variables_from_state_dict


def main(argv=None):
    """Converts --input into an orbax checkpoint at --output (see the module docstring)."""
    from logocap_jax import config_utils
    from logocap_jax.commands import cli
    from logocap_jax.weights import checkpoints

    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli.add_config_arguments(parser)
    parser.add_argument("--input", required=True, help="official .pth/.pth.tar or .npz state dict")
    parser.add_argument(
        "--output", required=True, help="directory of the orbax checkpoint to write"
    )
    args = cli.parse_args(parser, argv)
    if os.path.exists(args.output):
        raise errors.OutputExistsError(f"Checkpoint directory already exists: {args.output}")
    model = config_utils.build_model(args.config)
    variables = variables_from_state_dict(load_state_dict(args.input), model_template(model))
    checkpoints.save_variables(args.output, variables)
    count = sum(np.size(x) for x in jax.tree_util.tree_leaves(variables["params"]))
    print(f"Wrote {args.output}: {count:,} parameters")


def entry_point():
    """The `logocap-convert` command: `main` with one-line user errors."""
    from logocap_jax.commands import cli

    cli.run_main(main)


if __name__ == "__main__":
    entry_point()
