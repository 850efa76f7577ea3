"""Writes numpy state dicts in the torch.save zip layout, for tests that run without PyTorch.

The layout follows what torch.save writes (see tests/data/torch_save, written by torch itself):
`<archive>/data.pkl`, a protocol-2 pickle in which each array is
`torch._utils._rebuild_tensor_v2(<persistent id ('storage', torch.<Type>Storage, key, 'cpu',
numel)>, 0, shape, stride, False, OrderedDict())`, one raw little-endian record per storage under
`<archive>/data/<key>`, and `<archive>/byteorder`. test_torch_checkpoint.py checks that this
writer's pickles use the same globals and persistent ids as torch's.
"""

import io
import pickle
import zipfile
from collections import OrderedDict

import numpy as np

_STORAGE_TYPES = {
    np.dtype("float32"): "FloatStorage",
    np.dtype("float64"): "DoubleStorage",
    np.dtype("float16"): "HalfStorage",
    np.dtype("int64"): "LongStorage",
    np.dtype("int32"): "IntStorage",
    np.dtype("uint8"): "ByteStorage",
    np.dtype("bool"): "BoolStorage",
}
# Module-level classes named like torch's storage classes, pickled by reference as GLOBALs.
for _name in set(_STORAGE_TYPES.values()):
    globals()[_name] = type(_name, (), {"__module__": __name__})


def _rebuild_tensor_v2(*args):
    """Named like torch's; pickled by reference only."""


class _Storage:
    def __init__(self, key: str, array: np.ndarray):
        self.key, self.array = key, array


class _Pickler(pickle.Pickler):
    def __init__(self, file):
        super().__init__(file, protocol=2)
        self.storages = []

    def reducer_override(self, obj):
        if not isinstance(obj, np.ndarray):
            return NotImplemented
        array = np.array(obj, order="C")
        storage = _Storage(str(len(self.storages)), array)
        self.storages.append(storage)
        stride = tuple(s // array.itemsize for s in array.strides)
        return _rebuild_tensor_v2, (storage, 0, array.shape, stride, False, OrderedDict())

    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            storage_class = globals()[_STORAGE_TYPES[obj.array.dtype]]
            return ("storage", storage_class, obj.key, "cpu", obj.array.size)
        return None


def save(obj, path: str, archive_name: str = "archive") -> None:
    """Writes `obj` (dicts, lists, numbers, strings and numpy arrays) like torch.save would."""
    buffer = io.BytesIO()
    pickler = _Pickler(buffer)
    pickler.dump(obj)
    data = buffer.getvalue()
    here = __name__.encode()
    data = data.replace(b"c%s\n_rebuild_tensor_v2\n" % here, b"ctorch._utils\n_rebuild_tensor_v2\n")
    for name in set(_STORAGE_TYPES.values()):
        data = data.replace(b"c%s\n%s\n" % (here, name.encode()), b"ctorch\n%s\n" % name.encode())
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{archive_name}/data.pkl", data)
        archive.writestr(f"{archive_name}/byteorder", "little")
        for storage in pickler.storages:
            little = storage.array.astype(storage.array.dtype.newbyteorder("<"), copy=False)
            archive.writestr(f"{archive_name}/data/{storage.key}", little.tobytes())
        archive.writestr(f"{archive_name}/version", "3\n")
