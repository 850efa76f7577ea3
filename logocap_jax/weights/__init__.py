"""Model variables from any source of weights, in one call: `weights.load(config, source)`.

    variables = weights.load(config, "w32")                   # the official release (pretrained)
    variables = weights.load(config, "workdir/mini")          # a training work directory
    variables = weights.load(config, "ckpt/w32")              # a converted checkpoint
    variables = weights.load(config, "logocap-hrnet-w32-coco.pth.tar")   # a state dict

A source is a pretrained name (`pretrained.MODELS`: "w32", "w48"; write "./w32" for a folder
of that name), a directory (a checkpoint written by convert, pretrained or `save_variables`, or a
training work directory: its best model, else its latest step) or a file (an official state
dict: `.pth`/`.pth.tar` in torch's zip or legacy format, read without PyTorch, or `.npz`).
Every failure names the source and what is wrong with it.
"""

import os

from logocap_jax import config_utils, errors
from logocap_jax.weights import checkpoints, convert, pretrained


def load(config, source: str, **download) -> dict:
    """The model variables ({"params", "batch_stats"}) of `config`'s model from `source`.

    Args:
      config: the model's config.
      source: a pretrained name, a checkpoint or work directory, or a state dict file.
      **download: for a pretrained name, `pretrained.checkpoint_path`'s cache_dir, url, sha256
        and progress.

    Raises:
      InputNotFoundError: the source is neither a pretrained name nor an existing path.
      InputFormatError: the file or directory holds no readable weights.
      CheckpointMismatchError: the weights do not fit the config's model.
      pretrained.PretrainedError: the official weights cannot be downloaded or do not fit.
    """
    source = os.fspath(source)
    if source in pretrained.MODELS:
        return pretrained.load(source, config=config, **download)[1]
    template = convert.model_template(config_utils.build_model(config))
    if os.path.isdir(source):
        return checkpoints.restore_variables(source, template)
    if os.path.isfile(source):
        state_dict = convert.load_state_dict(source)
        try:
            return convert.variables_from_state_dict(state_dict, template)
        except errors.CheckpointMismatchError as error:
            raise errors.CheckpointMismatchError(f"{source}: {error}") from error
    raise errors.InputNotFoundError(
        f"No weights at {source}: neither a file or directory nor a pretrained name "
        f"({', '.join(sorted(pretrained.MODELS))})"
    )
