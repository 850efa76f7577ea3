"""Reading `torch.save` files without PyTorch.

Since torch 1.6, `torch.save` writes a zip archive: `<archive>/data.pkl`, a pickle (protocol 2)
of the saved object in which every tensor is a call of `torch._utils._rebuild_tensor_v2` on a
storage, and one raw little-endian record per storage, `<archive>/data/<key>`, that the pickle
names by a persistent id `('storage', <storage type>, key, location, numel)`. Newer archives also
hold `<archive>/byteorder`.

`load` reads such files into the same Python structure with numpy arrays in place of tensors. Its
unpickler resolves only the globals that tensors and state dicts need (the pattern of "Restricting
Globals" in the Python `pickle` documentation): anything else, e.g. a pickled module or an
arbitrary callable, is refused, so reading a file never runs code from it. Legacy files (torch
older than 1.6, not zip) are refused with a message asking for PyTorch.

`convert.load_state_dict` uses this reader when PyTorch is not installed; where it is, it uses
`torch.load(weights_only=True)`, the reference reader, which also reads legacy files.
"""

import io
import pickle
import zipfile
from collections import OrderedDict

import numpy as np

from logocap_jax import errors

_STORAGE_DTYPES = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
}


class TorchCheckpointError(errors.InputFormatError):
    """A file that is not a `torch.save` zip archive, or holds objects this reader refuses."""


class _StorageType:
    """Stands in for a `torch.<Type>Storage` class in the pickle: it only names a dtype."""

    def __init__(self, name: str):
        self.name = name

    def dtype(self) -> np.dtype:
        name = _STORAGE_DTYPES[self.name]
        if name == "bfloat16":
            import ml_dtypes

            return np.dtype(ml_dtypes.bfloat16)
        return np.dtype(name)


class _Storage:
    """One storage record, as a flat array of its dtype."""

    def __init__(self, array: np.ndarray):
        self.array = array


def _rebuild_tensor(storage, storage_offset, size, stride, *_):
    """The array a pickled tensor describes: `size` elements at `stride` from `storage_offset`."""
    if not isinstance(storage, _Storage):
        raise TorchCheckpointError(f"A tensor refers to {type(storage).__name__}, not a storage")
    size, stride, offset = tuple(size), tuple(stride), int(storage_offset)
    numel = storage.array.size
    if len(size) != len(stride) or any(n < 0 for n in size) or any(s < 0 for s in stride):
        raise TorchCheckpointError(f"Invalid tensor size {size} / stride {stride}")
    if 0 in size:
        return np.zeros(size, storage.array.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if offset < 0 or last >= numel:
        raise TorchCheckpointError(
            f"A tensor of size {size}, stride {stride} at offset {offset} overruns its storage "
            f"of {numel} elements"
        )
    itemsize = storage.array.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage.array[offset:], size, tuple(s * itemsize for s in stride), writeable=False
    )
    return np.array(view, order="C")


def _rebuild_parameter(data, *_):
    """A pickled `torch.nn.Parameter`: its data."""
    return data


_GLOBALS = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES},
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, byteorder: str):
        super().__init__(io.BytesIO(data))
        self._archive = archive
        self._prefix = prefix
        self._byteorder = byteorder
        self._records = {}

    def find_class(self, module, name):
        try:
            return _GLOBALS[module, name]
        except KeyError:
            raise TorchCheckpointError(
                f"The checkpoint holds {module}.{name}, which this reader does not load (it "
                "reads tensors, state dicts and plain Python data); read it with PyTorch: "
                "pip install 'logocap-jax[torch]'"
            ) from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise TorchCheckpointError(f"Unsupported persistent id {pid!r:.80}")
        _, storage_type, key, _, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise TorchCheckpointError(f"Unsupported storage type {storage_type!r:.80}")
        dtype = storage_type.dtype()
        name = f"{self._prefix}/data/{key}"
        if name not in self._records:
            try:
                self._records[name] = self._archive.read(name)
            except KeyError:
                raise TorchCheckpointError(f"Storage record {name} is missing") from None
        raw = self._records[name]
        if len(raw) != int(numel) * dtype.itemsize:
            raise TorchCheckpointError(
                f"Storage record {name} has {len(raw)} bytes, {numel} x {dtype} needs "
                f"{int(numel) * dtype.itemsize}"
            )
        if self._byteorder == "big" and dtype.itemsize > 1:
            swapped = np.frombuffer(raw, f">u{dtype.itemsize}").astype(f"<u{dtype.itemsize}")
            array = swapped.view(dtype)
        else:
            array = np.frombuffer(raw, dtype)
        return _Storage(array)


def _archive_prefix(archive: zipfile.ZipFile, path: str) -> str:
    pickles = [
        name for name in archive.namelist() if name.count("/") == 1 and name.endswith("/data.pkl")
    ]
    if len(pickles) != 1:
        raise TorchCheckpointError(
            f"{path} is a zip file but not a torch.save archive (no single <archive>/data.pkl)"
        )
    return pickles[0].split("/")[0]


def load(path: str):
    """Reads a file written by `torch.save` (torch >= 1.6) without PyTorch.

    Args:
      path: the file, e.g. an official `.pth` / `.pth.tar` checkpoint.

    Returns:
      The saved object with every tensor (or parameter) replaced by a numpy array of its dtype,
      shape and values (contiguous copies; views keep their own elements only). bfloat16 tensors
      become `ml_dtypes.bfloat16` arrays. Dicts, OrderedDicts, lists, tuples, numbers and strings
      are returned as they were saved.

    Raises:
      TorchCheckpointError: for a legacy (torch < 1.6) or otherwise unreadable file, and for a
        pickle that refers to anything but tensors, storages and OrderedDicts.
    """
    with open(path, "rb") as f:
        head = f.read(4)
    if not zipfile.is_zipfile(path):
        if head[:1] == b"\x80":
            raise TorchCheckpointError(
                f"{path} was saved in the legacy format of torch < 1.6, which this reader does "
                "not read; read it with PyTorch: pip install 'logocap-jax[torch]' (or load and "
                "save it again with a newer torch)"
            )
        if head[:2] == b"PK":
            raise TorchCheckpointError(f"{path} is a truncated or damaged zip archive")
        raise TorchCheckpointError(f"{path} is not a file written by torch.save")
    try:
        return _load_zip(path)
    except zipfile.BadZipFile as error:
        raise TorchCheckpointError(f"{path} is a damaged zip archive ({error})") from error


def _load_zip(path: str):
    with zipfile.ZipFile(path) as archive:
        prefix = _archive_prefix(archive, path)
        names = set(archive.namelist())
        byteorder = "little"
        if f"{prefix}/byteorder" in names:
            byteorder = archive.read(f"{prefix}/byteorder").decode("ascii").strip()
            if byteorder not in ("little", "big"):
                raise TorchCheckpointError(f"{path}: unknown byte order {byteorder!r}")
        data = archive.read(f"{prefix}/data.pkl")
        unpickler = _Unpickler(data, archive, prefix, byteorder)
        try:
            return unpickler.load()
        except TorchCheckpointError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError) as error:
            raise TorchCheckpointError(f"{path}: unreadable pickle ({error})") from error
