"""Writes the torch.save fixtures of tests/test_torch_checkpoint.py (run by hand, needs PyTorch).

  ~/torchenv/bin/python tests/make_torch_fixtures.py tests/data/torch_save

- `tensors.pth`: one tensor of each storage type the reader handles, views of a shared storage
  (a transposed, strided slice and an offset row), a 0-d and an empty tensor, a Parameter, and
  tensors inside lists, tuples and nested dicts next to plain Python values.
- `checkpoint.pth.tar`: a training checkpoint shaped like the official ones: `state_dict` (of a
  DataParallel conv + batch norm, so `module.`-prefixed, with its `_metadata`), `epoch`,
  `best_perf`, `model` and an SGD `optimizer` state with momentum buffers.
- `tensors_legacy.pth`: the object of `tensors.pth` in the legacy format of torch < 1.6
  (`_use_new_zipfile_serialization=False`): views share one storage there too.
- `tiny_state_dict_legacy.pth`: the tiny model's official state dict
  (tests/data/golden/tiny_state_dict.npz) as an OrderedDict of tensors in the legacy format, the
  format of the ImageNet HRNet backbone releases.
- `expected.npz`: every tensor of `tensors.pth` and `checkpoint.pth.tar` as torch's own `.numpy()`
  gives it (bfloat16 as float32), keyed by its path in the saved object joined with '/'
  (`tensors_legacy.pth` holds the same tensors as `tensors.pth`).
"""

import os
import sys
from collections import OrderedDict

GOLDEN = os.path.join(os.path.dirname(__file__), "data", "golden", "tiny_state_dict.npz")


def tensors_object():
    """The object saved as tensors.pth."""
    import torch

    generator = torch.Generator().manual_seed(0)
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    return {
        "float32": torch.randn(2, 3, generator=generator),
        "float64": torch.randn(3, generator=generator, dtype=torch.float64),
        "float16": torch.randn(4, generator=generator).half(),
        "bfloat16": torch.randn(4, generator=generator).bfloat16(),
        "int64": torch.arange(-2, 3),
        "int32": torch.tensor([7, -8], dtype=torch.int32),
        "int16": torch.tensor([300, -300], dtype=torch.int16),
        "int8": torch.tensor([-5, 5], dtype=torch.int8),
        "uint8": torch.tensor([0, 255], dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "base": base,
        "strided_view": base.t()[1:5, ::2],
        "row_view": base[2],
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 3),
        "parameter": torch.nn.Parameter(torch.tensor([0.25, -0.5])),
        "nested": {
            "list": [torch.ones(2), 1, "a"],
            "tuple": (torch.full((1, 2), 2.0), 2.5),
            "none": None,
        },
    }


def checkpoint_object():
    """The object saved as checkpoint.pth.tar."""
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 5, 5)).square().mean().backward()
    optimizer.step()
    return {
        "epoch": 140,
        "model": "logocap",
        "state_dict": torch.nn.DataParallel(model).state_dict(),
        "best_perf": 0.71,
        "optimizer": optimizer.state_dict(),
    }


def tiny_state_dict():
    """The object saved as tiny_state_dict_legacy.pth: the golden state dict, in its order."""
    import numpy as np
    import torch

    with np.load(GOLDEN) as data:
        return OrderedDict((key, torch.from_numpy(data[key])) for key in data.files)


def expected_arrays(obj, prefix=""):
    """{path: array} of every tensor in `obj`, converted by torch itself."""
    import torch

    if isinstance(obj, torch.Tensor):
        tensor = obj.detach().float() if obj.dtype == torch.bfloat16 else obj.detach()
        return {prefix: tensor.numpy()}
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, list | tuple):
        items = enumerate(obj)
    else:
        return {}
    arrays = {}
    for key, value in items:
        arrays.update(expected_arrays(value, f"{prefix}/{key}" if prefix else str(key)))
    return arrays


def write(directory):
    """Writes the fixtures into `directory`."""
    import numpy as np
    import torch

    os.makedirs(directory, exist_ok=True)
    tensors, checkpoint = tensors_object(), checkpoint_object()
    torch.save(tensors, os.path.join(directory, "tensors.pth"))
    torch.save(checkpoint, os.path.join(directory, "checkpoint.pth.tar"))
    for obj, name in (
        (tensors, "tensors_legacy.pth"),
        (tiny_state_dict(), "tiny_state_dict_legacy.pth"),
    ):
        torch.save(obj, os.path.join(directory, name), _use_new_zipfile_serialization=False)
    expected = {
        **expected_arrays(tensors, "tensors"),
        **expected_arrays(checkpoint, "checkpoint"),
    }
    np.savez(os.path.join(directory, "expected.npz"), **expected)


if __name__ == "__main__":
    write(sys.argv[1])
