"""The convert command: an official state dict (or any weights source) -> an orbax checkpoint.

  python -m logocap_jax.commands.convert --config configs/w32.py \
      --input logocap-hrnet-w32-coco.pth.tar --output ckpt/w32

Installed as `logocap-convert`.
"""

import os

import jax
import numpy as np
from absl import flags

from logocap_jax import config_utils, errors
from logocap_jax.commands import cli
from logocap_jax.weights import checkpoints
from logocap_jax.weights.convert import load_state_dict, model_template, variables_from_state_dict


def define_flags(flag_values: flags.FlagValues) -> None:
    define = cli.definer(flag_values)
    define(
        flags.DEFINE_string,
        "input",
        None,
        "An official .pth/.pth.tar or an .npz state dict.",
        required=True,
    )
    define(
        flags.DEFINE_string,
        "output",
        None,
        "The orbax checkpoint directory to write.",
        required=True,
    )


def main(argv=None) -> None:
    """Converts --input into an orbax checkpoint at --output (see the module docstring).

    Raises:
      UserError: a bad command line or input (`cli.run_main` prints it as one line).
    """
    args, _ = cli.parse(argv, define_flags, doc=__doc__, config=True)
    if os.path.exists(args.output):
        raise errors.OutputExistsError(f"Checkpoint directory already exists: {args.output}")
    model = config_utils.build_model(args.config)
    variables = variables_from_state_dict(load_state_dict(args.input), model_template(model))
    checkpoints.save_variables(args.output, variables)
    count = sum(np.size(x) for x in jax.tree_util.tree_leaves(variables["params"]))
    print(f"Wrote {args.output}: {count:,} parameters")


def entry_point():
    """The `logocap-convert` command: `main` with one-line user errors."""
    cli.run_main(main)


if __name__ == "__main__":
    entry_point()
