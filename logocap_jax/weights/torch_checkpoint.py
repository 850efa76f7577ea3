"""Reading `torch.save` files without PyTorch.

`torch.save` writes one of two formats:

- Since torch 1.6, a zip archive: `<archive>/data.pkl`, a pickle (protocol 2) of the saved object
  in which every tensor is a call of `torch._utils._rebuild_tensor_v2` on a storage, and one raw
  little-endian record per storage, `<archive>/data/<key>`, that the pickle names by a persistent
  id `('storage', <storage type>, key, location, numel)`. Newer archives also hold
  `<archive>/byteorder`.
- Before torch 1.6 (and with `_use_new_zipfile_serialization=False`), the legacy format, in which
  e.g. the ImageNet HRNet backbones were released: one stream of pickles, the magic number
  0x1950a86a20f9469cfc6c, the protocol version 1001, a dict of system information, the saved
  object, whose storages are persistent ids `('storage', <storage type>, root key, location,
  numel, view)`, and the sorted list of the root keys; then, for each key in that order, the
  storage's element count (int64) and its elements, all little-endian. `view` is None, or (from
  old torch versions) `(view key, offset, numel)`: the storage is that slice of the root storage.
  Tensors may share a storage at different offsets and strides in both formats.

`load` reads both into the same Python structure with numpy arrays in place of tensors. Its
unpickler resolves only the globals that tensors and state dicts need (the pattern of "Restricting
Globals" in the Python `pickle` documentation): anything else, e.g. a pickled module or an
arbitrary callable, is refused, so reading a file never runs code from it. As the storages of a
legacy file follow the pickle of the object, that pickle is read twice: first to learn each
storage's dtype and size (building no tensors), then, once the storages are read, to build the
object. The tar archives of the earliest torch releases are refused with a message asking for
PyTorch.

`convert.load_state_dict` uses this reader when PyTorch is not installed; where it is, it uses
`torch.load(weights_only=True)`, the reference reader.
"""

import io
import pickle
import tarfile
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

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_LEGACY_MAGIC_PICKLE = pickle.dumps(_LEGACY_MAGIC, protocol=2)  # how torch.save writes it
# The members of the tar archives that the earliest torch releases wrote.
_TAR_MEMBERS = {"sys_info", "pickle", "storages", "tensors"}


class TorchCheckpointError(errors.InputFormatError):
    """A file that is not a `torch.save` file, or holds objects this reader refuses."""


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
    """One storage (or a view of one), as a flat array of its dtype."""

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


# `_rebuild_tensor` (storage, offset, size, stride) is what torch < 0.4 pickled; `_v2` adds
# requires_grad and backward hooks, which an array has no use for.
_TENSOR_REBUILDS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
}

_GLOBALS = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **_TENSOR_REBUILDS,
    **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES},
}


def _storage_id(pid):
    """(dtype, key, numel, view) of a persistent id ('storage', type, key, location, numel[, view]).

    `view` is None or (offset, numel) of a slice of the storage, checked to lie inside it.
    """
    if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
        raise TorchCheckpointError(f"Unsupported persistent id {pid!r:.80}")
    storage_type, key, _, numel = pid[1:5]
    if not isinstance(storage_type, _StorageType):
        raise TorchCheckpointError(f"Unsupported storage type {storage_type!r:.80}")
    if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
        raise TorchCheckpointError(f"Invalid storage key or size in {pid!r:.80}")
    view = pid[5] if len(pid) == 6 else None
    if view is not None:
        if not (
            isinstance(view, tuple)
            and len(view) == 3
            and all(isinstance(n, int) and n >= 0 for n in view[1:])
        ):
            raise TorchCheckpointError(f"Invalid storage view {view!r:.80} of storage {key}")
        _, offset, view_numel = view
        if offset + view_numel > numel:
            raise TorchCheckpointError(
                f"A view of {view_numel} elements at offset {offset} overruns storage {key} of "
                f"{numel} elements"
            )
        view = offset, view_numel
    return storage_type.dtype(), key, numel, view


def _storage_array(raw, dtype: np.dtype, numel: int, name: str, byteorder: str) -> np.ndarray:
    """The flat array of a storage record `name` of `numel` elements of `dtype`."""
    if len(raw) != numel * dtype.itemsize:
        raise TorchCheckpointError(
            f"Storage record {name} has {len(raw)} bytes, {numel} x {dtype} needs "
            f"{numel * dtype.itemsize}"
        )
    if byteorder == "big" and dtype.itemsize > 1:
        swapped = np.frombuffer(raw, f">u{dtype.itemsize}").astype(f"<u{dtype.itemsize}")
        return swapped.view(dtype)
    return np.frombuffer(raw, dtype)


class _Unpickler(pickle.Unpickler):
    """Resolves only the globals in `_globals`; a storage's persistent id is resolved by
    `storage(dtype, key, numel)`, which returns the storage's flat array."""

    _globals = _GLOBALS

    def __init__(self, file, storage=None):
        # utf-8, as torch.load: the strings of Python 2 pickles are bytes.
        super().__init__(file, encoding="utf-8")
        self._storage = storage

    def find_class(self, module, name):
        try:
            return self._globals[module, name]
        except KeyError:
            raise TorchCheckpointError(
                f"The checkpoint holds {module}.{name}, which this reader does not load (it "
                "reads tensors, state dicts and plain Python data); read it with PyTorch: "
                "pip install 'logocap-jax[torch]'"
            ) from None

    def persistent_load(self, pid):
        if self._storage is None:
            raise TorchCheckpointError(f"Unexpected persistent id {pid!r:.80}")
        dtype, key, numel, view = _storage_id(pid)
        array = self._storage(dtype, key, numel)
        if view is not None:
            offset, view_numel = view
            array = array[offset : offset + view_numel]
        return _Storage(array)


class _StorageScan(_Unpickler):
    """The first pass over the object pickle of a legacy file, whose storages follow it: notes
    the storages it names, builds no tensors."""

    _globals = {**_GLOBALS, **dict.fromkeys(_TENSOR_REBUILDS, lambda *_: None)}


# What unpickling damaged data raises (a TorchCheckpointError is a ValueError).
_PICKLE_ERRORS = (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError)


def _unpickle(unpickler: _Unpickler, where: str, part: str):
    """`unpickler.load()`, with the errors of a damaged pickle as TorchCheckpointErrors."""
    try:
        return unpickler.load()
    except TorchCheckpointError:
        raise
    except _PICKLE_ERRORS as error:
        if isinstance(error, EOFError) or "truncated" in str(error):
            raise TorchCheckpointError(f"{where} truncated: it ends inside {part}") from error
        raise TorchCheckpointError(f"{where}: unreadable pickle in {part} ({error})") from error


def load(path: str):
    """Reads a file written by `torch.save` without PyTorch.

    Args:
      path: the file, e.g. an official `.pth` / `.pth.tar` checkpoint, in the zip format of torch
        >= 1.6 or the legacy format of older torch (see the module docstring).

    Returns:
      The saved object with every tensor (or parameter) replaced by a numpy array of its dtype,
      shape and values (contiguous copies; views keep their own elements only). bfloat16 tensors
      become `ml_dtypes.bfloat16` arrays. Dicts, OrderedDicts, lists, tuples, numbers and strings
      are returned as they were saved.

    Raises:
      TorchCheckpointError: for a file that is not a `torch.save` file, is truncated or damaged,
        or is in the tar format of the earliest torch releases, and for a pickle that refers to
        anything but tensors, storages and OrderedDicts.
    """
    if zipfile.is_zipfile(path):
        try:
            return _load_zip(path)
        except zipfile.BadZipFile as error:
            raise TorchCheckpointError(f"{path} is a damaged zip archive ({error})") from error
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"PK":
        raise TorchCheckpointError(f"{path} is a truncated or damaged zip archive")
    return _load_legacy(data, path)


def _archive_prefix(archive: zipfile.ZipFile, path: str) -> str:
    pickles = [
        name for name in archive.namelist() if name.count("/") == 1 and name.endswith("/data.pkl")
    ]
    if len(pickles) != 1:
        raise TorchCheckpointError(
            f"{path} is a zip file but not a torch.save archive (no single <archive>/data.pkl)"
        )
    return pickles[0].split("/")[0]


def _load_zip(path: str):
    with zipfile.ZipFile(path) as archive:
        prefix = _archive_prefix(archive, path)
        names = set(archive.namelist())
        byteorder = "little"
        if f"{prefix}/byteorder" in names:
            byteorder = archive.read(f"{prefix}/byteorder").decode("ascii").strip()
            if byteorder not in ("little", "big"):
                raise TorchCheckpointError(f"{path}: unknown byte order {byteorder!r}")
        records = {}

        def storage(dtype, key, numel):
            name = f"{prefix}/data/{key}"
            if name not in records:
                try:
                    records[name] = archive.read(name)
                except KeyError:
                    raise TorchCheckpointError(f"Storage record {name} is missing") from None
            return _storage_array(records[name], dtype, numel, name, byteorder)

        data = archive.read(f"{prefix}/data.pkl")
        return _unpickle(_Unpickler(io.BytesIO(data), storage), path, f"{prefix}/data.pkl")


def _refuse_tar(path: str) -> None:
    """Raises a TorchCheckpointError naming what a tar archive at `path` is, if it is one."""
    try:
        with tarfile.open(path) as tar:
            names = tar.getnames()
    except (tarfile.TarError, OSError, EOFError):
        return
    if _TAR_MEMBERS <= set(names):
        raise TorchCheckpointError(
            f"{path} is a tar archive in the format of the earliest torch releases, which this "
            "reader does not read; read it with PyTorch: pip install 'logocap-jax[torch]' (or "
            "load and save it again with a newer torch)"
        )
    raise TorchCheckpointError(
        f"{path} is a tar archive, not a file written by torch.save (it holds {names[:5]}"
        f"{' ...' if len(names) > 5 else ''}); extract the checkpoint from it"
    )


def _load_legacy(data: bytes, path: str):
    """Reads a file in the legacy format (see the module docstring) from its bytes."""
    stream = io.BytesIO(data)
    where = f"{path}: legacy torch file"
    try:
        magic = _Unpickler(stream).load()
    except _PICKLE_ERRORS:  # whatever the first pickle is, it is not torch's magic number
        magic = None
    if magic != _LEGACY_MAGIC:
        if 0 < len(data) < len(_LEGACY_MAGIC_PICKLE) and _LEGACY_MAGIC_PICKLE.startswith(data):
            raise TorchCheckpointError(f"{where} truncated: it ends inside its magic number")
        _refuse_tar(path)
        raise TorchCheckpointError(f"{path} is not a file written by torch.save")
    version = _unpickle(_Unpickler(stream), where, "its protocol version")
    if version != _LEGACY_PROTOCOL:
        raise TorchCheckpointError(
            f"{where} of protocol version {version!r:.40}, this reader reads {_LEGACY_PROTOCOL}"
        )
    if not isinstance(_unpickle(_Unpickler(stream), where, "its system information"), dict):
        raise TorchCheckpointError(f"{where} has no system information after its version")

    # Pass 1: the dtype and size of each storage the object names.
    start = stream.tell()
    sizes = {}

    def note(dtype, key, numel):
        if sizes.setdefault(key, (dtype, numel)) != (dtype, numel):
            raise TorchCheckpointError(
                f"{where} names storage {key} as {sizes[key][1]} x {sizes[key][0]} and as "
                f"{numel} x {dtype}"
            )
        return np.empty(0, dtype)

    _unpickle(_StorageScan(stream, note), where, "the pickled object")
    keys = _unpickle(_Unpickler(stream), where, "its list of storages")
    if not (isinstance(keys, list) and all(isinstance(key, str) for key in keys)):
        raise TorchCheckpointError(f"{where} has no list of storage keys after the object")

    # The storage records, in the order of the list.
    arrays = {}
    position = stream.tell()
    for key in keys:
        if key not in sizes or key in arrays:
            what = "lists twice" if key in arrays else "lists, but the object does not use,"
            raise TorchCheckpointError(f"{where} {what} storage {key}")
        dtype, numel = sizes[key]
        if len(data) < position + 8:
            raise TorchCheckpointError(
                f"{where} truncated: storage {key} ({numel} x {dtype}) is missing"
            )
        count = int.from_bytes(data[position : position + 8], "little", signed=True)
        if count != numel:
            raise TorchCheckpointError(
                f"{where}: storage {key} holds {count} elements, the object names {numel}"
            )
        position += 8
        nbytes = numel * dtype.itemsize
        if len(data) < position + nbytes:
            raise TorchCheckpointError(
                f"{where} truncated: storage {key} ({numel} x {dtype}) needs {nbytes} bytes, "
                f"{len(data) - position} remain"
            )
        record = memoryview(data)[position : position + nbytes]
        arrays[key] = _storage_array(record, dtype, numel, key, "little")
        position += nbytes
    missing = sorted(sizes.keys() - arrays.keys())
    if missing:
        raise TorchCheckpointError(f"{where} does not list storages {missing[:10]} of its object")

    # Pass 2: the object, its tensors on the storages read.
    stream.seek(start)
    return _unpickle(
        _Unpickler(stream, lambda dtype, key, numel: arrays[key]), where, "the pickled object"
    )
