"""Official PyTorch state dicts <-> Flax variables, and the conversion CLI.

Flax module names equal the official module paths, so a variable's PyTorch key is its path
joined with dots plus a renamed leaf (kernel/scale -> weight, mean/var -> running_mean/var).
Convolution kernels go from PyTorch OIHW to Flax HWIO.

  python -m logocap_jax.commands.convert --config configs/w32.py --input logocap-w32.pth.tar \
      --output ckpt/w32

A user error (missing or unreadable file, a state dict that does not fit the config's model, an
existing output) prints one line and exits with status 2; --verbose shows the traceback.
"""

import os
import zipfile
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from logocap_jax import errors
from logocap_jax.weights import torch_checkpoint

_LEAF_TO_TORCH = {
    ("params", "kernel"): "weight",
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("params", "weight_"): "weight_",
    ("params", "bias_"): "bias_",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}


def torch_key(path) -> str:
    """The official state-dict key of a Flax variable path (collection, module..., leaf)."""
    collection, *modules, leaf = path
    try:
        return ".".join(modules + [_LEAF_TO_TORCH[collection, leaf]])
    except KeyError:
        raise ValueError(f"No PyTorch counterpart for variable {'/'.join(path)}") from None


def _to_torch_layout(array):
    return np.transpose(array, (3, 2, 0, 1)) if array.ndim == 4 else array


def _from_torch_layout(array):
    return np.transpose(array, (2, 3, 1, 0)) if array.ndim == 4 else array


def state_dict_shapes(variables) -> dict:
    """{official key: PyTorch shape} of every array in `variables` (arrays or shape structs)."""
    flat = traverse_util.flatten_dict(jax.tree_util.tree_map(lambda x: x, dict(variables)))
    shapes = {}
    for path, value in flat.items():
        shape = tuple(value.shape)
        shapes[torch_key(path)] = shape[::-1][:2] + shape[:2] if len(shape) == 4 else shape
    return shapes


def is_buffer_counter(key: str) -> bool:
    """BatchNorm step counters (`num_batches_tracked`) have no Flax counterpart."""
    return key.endswith("num_batches_tracked")


def variables_from_state_dict(state_dict: Mapping[str, np.ndarray], template) -> dict:
    """Builds Flax variables from an official state dict.

    Args:
      state_dict: official key -> array (PyTorch layout).
      template: variables (or `jax.eval_shape` structs) of the target model, fixing the tree.

    Returns:
      {'params': ..., 'batch_stats': ...} float32 numpy arrays in the template's tree.

    Raises:
      CheckpointKeysError: listing missing and unexpected keys (a KeyError).
      CheckpointMismatchError: naming a key whose shape does not fit (a ValueError).
    """
    flat = traverse_util.flatten_dict(dict(template))
    wanted = {torch_key(path): path for path in flat}
    given = {k for k in state_dict if not is_buffer_counter(k)}
    missing, unexpected = sorted(wanted.keys() - given), sorted(given - wanted.keys())
    if missing or unexpected:
        raise errors.CheckpointKeysError(
            f"State dict does not fit the model: missing keys {missing[:10]}"
            f"{' ...' if len(missing) > 10 else ''} ({len(missing)}), unexpected keys "
            f"{unexpected[:10]}{' ...' if len(unexpected) > 10 else ''} ({len(unexpected)})"
        )
    converted = {}
    for key, path in wanted.items():
        array = _from_torch_layout(np.asarray(state_dict[key], dtype=np.float32))
        if array.shape != tuple(flat[path].shape):
            raise errors.CheckpointMismatchError(
                f"State dict does not fit the model: key {key!r} has shape "
                f"{np.shape(state_dict[key])}, the model needs "
                f"{_to_torch_layout(np.zeros(flat[path].shape)).shape}"
            )
        converted[path] = array
    return traverse_util.unflatten_dict(converted)


def state_dict_from_variables(variables) -> dict:
    """The inverse of `variables_from_state_dict` (without `num_batches_tracked`)."""
    flat = traverse_util.flatten_dict(dict(variables))
    return {torch_key(path): _to_torch_layout(np.asarray(value)) for path, value in flat.items()}


def load_imagenet_backbone(variables, state_dict: Mapping[str, np.ndarray]):
    """Copies ImageNet-pretrained HRNet weights into the backbone, as the official training does.

    Checkpoint keys are bare backbone names (`conv1.weight`, `stage3.2.fuse_layers.1.0.0.0.weight`,
    the HRNet classification release's naming). Keys with no backbone counterpart (its
    classification head: incre_modules, downsamp_modules, final_layer, classifier) are ignored;
    backbone variables absent from the file keep their initialisation.

    Args:
      variables: the model's variables, e.g. from `LogoCap.init`.
      state_dict: key -> array in PyTorch layout.

    Returns:
      (variables with the backbone replaced, sorted loaded keys, sorted ignored keys).

    Raises:
      CheckpointMismatchError: naming a key whose shape does not fit the backbone (a
        ValueError).
    """
    flat = traverse_util.flatten_dict(dict(variables))
    loaded = set()
    for path, value in flat.items():
        if len(path) < 3 or path[1] != "backbone":
            continue
        key = torch_key((path[0],) + path[2:])
        if key not in state_dict:
            continue
        array = _from_torch_layout(np.asarray(state_dict[key], dtype=np.float32))
        if array.shape != tuple(value.shape):
            raise errors.CheckpointMismatchError(
                f"ImageNet checkpoint key {key!r} has shape {np.shape(state_dict[key])},"
                f" the backbone needs {_to_torch_layout(np.zeros(value.shape)).shape}"
            )
        flat[path] = array
        loaded.add(key)
    ignored = sorted(k for k in state_dict if k not in loaded and not is_buffer_counter(k))
    return traverse_util.unflatten_dict(flat), sorted(loaded), ignored


def _state_dict_of(saved, path: str) -> Mapping:
    """The state dict in a loaded checkpoint: itself, or a training checkpoint's 'state_dict'."""
    if isinstance(saved, Mapping) and isinstance(saved.get("state_dict"), Mapping):
        saved = saved["state_dict"]
    if not isinstance(saved, Mapping):
        raise errors.InputFormatError(f"{path} holds a {type(saved).__name__}, not a state dict")
    return saved


def _torch_to_numpy(tensor) -> np.ndarray:
    import torch

    if tensor.dtype == torch.bfloat16:
        import ml_dtypes

        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


def load_state_dict(path: str) -> dict:
    """Reads an official checkpoint as {key: array in PyTorch layout}.

    `.npz` files hold key -> array. `.pth` / `.pth.tar` files (written by `torch.save`) are read
    with PyTorch when it is installed (`torch.load(weights_only=True)`, the reference reader),
    else with `torch_checkpoint`, which reads both the zip format of torch >= 1.6 and the legacy
    format of older torch without PyTorch. Of a training checkpoint only its 'state_dict' is
    kept (entries such as 'epoch' or 'optimizer' are ignored); DataParallel 'module.' prefixes
    are removed.

    Args:
      path: the `.npz`, `.pth` or `.pth.tar` file.

    Returns:
      key -> numpy array, of the dtype it was saved with.

    Raises:
      InputNotFoundError: if `path` does not exist.
      InputFormatError: a folder, or a .npz file that is not a readable NumPy archive.
      torch_checkpoint.TorchCheckpointError: without PyTorch, for a file that is not a readable
        torch.save file (the message names the problem, and says to install PyTorch where that
        would help).
      InputFormatError: if the file holds something other than a state dict.
    """
    if not os.path.exists(path):
        raise errors.InputNotFoundError(f"Checkpoint not found: {path}")
    if not os.path.isfile(path):
        raise errors.InputFormatError(f"{path} is a folder, expected a .npz or .pth state dict")
    if path.endswith(".npz"):
        try:
            with np.load(path) as data:
                return {key: data[key] for key in data.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
            raise errors.InputFormatError(
                f"{path} is not a readable .npz state dict ({error})"
            ) from error
    try:
        import torch
    except ImportError:
        torch = None
    if torch is None:
        state_dict = _state_dict_of(torch_checkpoint.load(path), path)
    else:
        state_dict = _state_dict_of(torch.load(path, map_location="cpu", weights_only=True), path)
        state_dict = {
            key: _torch_to_numpy(value) if isinstance(value, torch.Tensor) else value
            for key, value in state_dict.items()
        }
    others = sorted(str(k) for k, v in state_dict.items() if not isinstance(v, np.ndarray))
    if others:
        raise errors.InputFormatError(
            f"{path} is not a state dict: entries {others[:10]}{' ...' if len(others) > 10 else ''}"
            " are not tensors"
        )
    return {key.removeprefix("module."): value for key, value in state_dict.items()}


def model_template(model, image_size: int = 64):
    """Variable shapes of `model` (no computation)."""
    images = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    return jax.eval_shape(lambda: model.init(jax.random.key(0), images, method=model.initialize))
