"""The flags that name a model's weights, shared by the commands that load them (predict, eval):
--checkpoint, --state_dict or --pretrained, whose release's bundled config is the default
--config."""

import os
import sys
from collections.abc import Sequence

from absl import flags

from logocap_jax import errors
from logocap_jax.commands import cli
from logocap_jax.weights import pretrained


def parse(argv, define_flags, *, doc: str, positional: bool = False):
    """`cli.parse` for a command that loads weights: these flags besides the command's own, and
    --pretrained's bundled config as the default --config."""

    def define_all(flag_values: flags.FlagValues) -> None:
        _define_weight_flags(flag_values)
        define_flags(flag_values)

    return cli.parse(
        argv,
        define_all,
        doc=doc,
        config=True,
        default_config=_default_config(argv),
        positional=positional,
    )


def _define_weight_flags(flag_values: flags.FlagValues) -> None:
    define = cli.definer(flag_values)
    define(
        flags.DEFINE_string,
        "checkpoint",
        None,
        "An orbax checkpoint directory (from convert or train, or a training work directory).",
    )
    define(
        flags.DEFINE_string, "state_dict", None, "An official .pth/.pth.tar or an .npz state dict."
    )
    define(
        flags.DEFINE_enum,
        "pretrained",
        None,
        "The official COCO-trained weights of this model, downloaded and converted on first "
        f"use (cached in ${pretrained.CACHE_DIR_ENV} or ~/.cache/logocap_jax; a mirror or local "
        f"copy of the release folder: ${pretrained.RELEASE_URL_ENV}); the config defaults to "
        "the model's bundled config, and --config replaces it (its model must fit the weights).",
        enum_values=sorted(pretrained.MODELS),
    )


def _default_config(argv: Sequence[str] | None) -> str | None:
    """The bundled config of the release that --pretrained names, if any."""
    argv = sys.argv[1:] if argv is None else argv
    release = pretrained.MODELS.get(cli.flag_value(argv, "--pretrained"))
    return release.config if release else None


def source(flag_values: flags.FlagValues) -> str:
    """The weights the flags name, for `weights.load`.

    Raises:
      UsageError: not exactly one of --checkpoint, --state_dict and --pretrained is given.
    """
    given = [flag_values.checkpoint, flag_values.state_dict, flag_values.pretrained]
    if sum(value is not None for value in given) != 1:
        raise errors.UsageError(
            "give exactly one of --checkpoint (orbax directory), --state_dict and --pretrained"
        )
    checkpoint, state_dict, name = given
    if name is not None:
        return name
    path = checkpoint or state_dict
    # A path that looks like a pretrained name is read as the path it is.
    return os.path.join(".", path) if path in pretrained.MODELS else path
