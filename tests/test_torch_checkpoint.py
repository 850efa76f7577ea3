"""Reading torch.save files without PyTorch (logocap_jax.weights.torch_checkpoint).

The fixtures in tests/data/torch_save were written by torch 2.13 (tests/make_torch_fixtures.py),
in the zip format of torch >= 1.6 and in the legacy format of older torch; expected.npz holds
torch's own `.numpy()` of every tensor in them. Tests that need PyTorch write fresh files and skip
where it is not installed.
"""

import io
import os
import pickle
import pickletools
import sys
import tarfile
import zipfile
from collections import OrderedDict

import jax
import make_torch_fixtures
import ml_dtypes
import numpy as np
import pth_writer
import pytest

from logocap_jax import config_utils
from logocap_jax.weights import convert, torch_checkpoint

FIXTURES = os.path.join(os.path.dirname(__file__), "data", "torch_save")
GOLDEN = os.path.join(os.path.dirname(__file__), "data", "golden", "tiny_state_dict.npz")
# The header of a legacy file, as torch/serialization.py writes it.
LEGACY_MAGIC, LEGACY_PROTOCOL = 0x1950A86A20F9469CFC6C, 1001


def fixture(name):
    return os.path.join(FIXTURES, name)


@pytest.fixture(scope="module")
def expected():
    with np.load(fixture("expected.npz")) as data:
        return {key: data[key] for key in data.files}


def arrays_in(obj, prefix):
    """{path joined with '/': array} of every array in a loaded object."""
    if isinstance(obj, np.ndarray):
        return {prefix: obj}
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, list | tuple):
        items = enumerate(obj)
    else:
        return {}
    arrays = {}
    for key, value in items:
        arrays.update(arrays_in(value, f"{prefix}/{key}"))
    return arrays


def assert_same_arrays(loaded: dict, expected: dict):
    assert sorted(loaded) == sorted(expected)
    for key, want in expected.items():
        have = loaded[key]
        assert have.shape == want.shape, key
        if have.dtype == ml_dtypes.bfloat16:
            assert want.dtype == np.float32, key
            have = have.astype(np.float32)
        assert have.dtype == want.dtype, key
        np.testing.assert_array_equal(have, want, err_msg=key)


def assert_identical_arrays(loaded: dict, other: dict):
    """Two readings agree exactly: same paths, dtypes (bfloat16 included), shapes and bytes."""
    assert sorted(loaded) == sorted(other)
    for key, want in other.items():
        have = loaded[key]
        assert (have.dtype, have.shape) == (want.dtype, want.shape), key
        assert have.tobytes() == want.tobytes(), key


def test_every_storage_type_view_and_nesting_reads_as_torch_wrote_it(expected):
    loaded = torch_checkpoint.load(fixture("tensors.pth"))
    assert_same_arrays(
        arrays_in(loaded, "tensors"),
        {k: v for k, v in expected.items() if k.startswith("tensors/")},
    )
    assert loaded["bfloat16"].dtype == ml_dtypes.bfloat16
    assert loaded["nested"]["list"][1:] == [1, "a"]
    assert isinstance(loaded["nested"]["tuple"], tuple) and loaded["nested"]["tuple"][1] == 2.5
    assert loaded["nested"]["none"] is None


def test_views_are_contiguous_copies_of_their_own_elements():
    loaded = torch_checkpoint.load(fixture("tensors.pth"))
    base = loaded["base"]
    np.testing.assert_array_equal(loaded["strided_view"], base.T[1:5, ::2])
    np.testing.assert_array_equal(loaded["row_view"], base[2])
    for name in ("strided_view", "row_view"):
        view = loaded[name]
        assert view.flags.c_contiguous and view.flags.owndata and view.flags.writeable
    assert loaded["scalar"].shape == () and loaded["scalar"] == 3.5
    assert loaded["empty"].shape == (0, 3)


def test_training_checkpoint_reads_with_every_entry(expected):
    loaded = torch_checkpoint.load(fixture("checkpoint.pth.tar"))
    assert (loaded["epoch"], loaded["model"], loaded["best_perf"]) == (140, "logocap", 0.71)
    assert loaded["optimizer"]["param_groups"][0]["lr"] == 0.1
    assert isinstance(loaded["state_dict"], OrderedDict)
    assert loaded["state_dict"]._metadata["module.1"] == {"version": 2}
    assert_same_arrays(
        arrays_in(loaded, "checkpoint"),
        {k: v for k, v in expected.items() if k.startswith("checkpoint/")},
    )


def test_load_state_dict_without_torch_unwraps_and_strips_module_prefix(monkeypatch, expected):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    loaded = convert.load_state_dict(fixture("checkpoint.pth.tar"))
    prefix = "checkpoint/state_dict/module."
    assert_same_arrays(
        loaded,
        {k.removeprefix(prefix): v for k, v in expected.items() if k.startswith(prefix)},
    )
    assert loaded["1.num_batches_tracked"].dtype == np.int64


def test_load_state_dict_names_entries_that_are_not_tensors(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    path = str(tmp_path / "mixed.pth")
    pth_writer.save({"weight": np.ones(2, np.float32), "note": "hello"}, path)
    with pytest.raises(ValueError, match=r"\['note'\] are not tensors"):
        convert.load_state_dict(path)
    pth_writer.save([np.ones(2, np.float32)], path)
    with pytest.raises(ValueError, match="holds a list, not a state dict"):
        convert.load_state_dict(path)


def _rewrite(source, target, replace):
    """Copies a zip archive, replacing records: replace(name, data) -> new data or None (drop)."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for name in src.namelist():
            data = replace(name, src.read(name))
            if data is not None:
                dst.writestr(name, data)


def test_other_globals_are_refused_without_running_them(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    path = str(tmp_path / "evil.pth")
    evil = pickle.dumps({"weight": Payload()}, protocol=2)
    _rewrite(fixture("tensors.pth"), path, lambda n, d: evil if n.endswith("data.pkl") else d)
    with pytest.raises(torch_checkpoint.TorchCheckpointError, match="system"):
        torch_checkpoint.load(path)
    assert not marker.exists()


def test_damaged_files_give_clear_errors(tmp_path):
    with open(fixture("tensors.pth"), "rb") as f:
        data = f.read()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(torch_checkpoint.TorchCheckpointError, match="truncated or damaged"):
        torch_checkpoint.load(str(truncated))
    text = tmp_path / "text.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(torch_checkpoint.TorchCheckpointError, match="not a file written by"):
        torch_checkpoint.load(str(text))
    short = str(tmp_path / "short.pth")
    _rewrite(fixture("tensors.pth"), short, lambda n, d: d[:-4] if n.endswith("/data/0") else d)
    with pytest.raises(torch_checkpoint.TorchCheckpointError, match=r"data/0 has \d+ bytes"):
        torch_checkpoint.load(short)
    missing = str(tmp_path / "missing.pth")
    _rewrite(fixture("tensors.pth"), missing, lambda n, d: None if n.endswith("/data/1") else d)
    with pytest.raises(torch_checkpoint.TorchCheckpointError, match="data/1 is missing"):
        torch_checkpoint.load(missing)
    other_zip = str(tmp_path / "other.zip")
    with zipfile.ZipFile(other_zip, "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(torch_checkpoint.TorchCheckpointError, match="not a torch.save archive"):
        torch_checkpoint.load(other_zip)


def test_tensor_overrunning_its_storage_is_refused(tmp_path):
    path = str(tmp_path / "overrun.pth")
    pth_writer.save({"weight": np.arange(6, dtype=np.float32).reshape(2, 3)}, path)
    # Stride (3, 1) -> (4, 1): the last element would lie past the 6-element storage.
    _rewrite(
        path,
        path + ".bad",
        lambda n, d: d.replace(b"K\x03K\x01\x86", b"K\x04K\x01\x86") if n.endswith(".pkl") else d,
    )
    with pytest.raises(torch_checkpoint.TorchCheckpointError, match="overruns its storage"):
        torch_checkpoint.load(path + ".bad")


def test_big_endian_archives_are_swapped(tmp_path):
    arrays = {
        "f32": np.linspace(-1, 1, 5, dtype=np.float32),
        "i64": np.arange(-3, 3, dtype=np.int64),
        "f16": np.array([0.5, -2.0], np.float16),
        "b": np.array([True, False]),
    }
    little = str(tmp_path / "little.pth")
    pth_writer.save(arrays, little)
    dtypes = [a.dtype for a in arrays.values()]  # storage keys 0, 1, ... in this order

    def to_big(name, data):
        if name.endswith("/byteorder"):
            return b"big"
        if "/data/" in name:
            return np.frombuffer(data, dtypes[int(name.rsplit("/", 1)[1])]).byteswap().tobytes()
        return data

    big = str(tmp_path / "big.pth")
    _rewrite(little, big, to_big)
    loaded = torch_checkpoint.load(big)
    for key, value in arrays.items():
        assert loaded[key].dtype == value.dtype
        np.testing.assert_array_equal(loaded[key], value)


def _pickle_globals(path):
    """The GLOBAL names in a torch.save archive's pickle."""
    with zipfile.ZipFile(path) as archive:
        data = archive.read(next(n for n in archive.namelist() if n.endswith("/data.pkl")))
    return {arg for op, arg, _ in pickletools.genops(data) if op.name == "GLOBAL"}


def test_test_writer_matches_torch_layout(tmp_path, expected):
    """tests/pth_writer.py stands in for torch.save in tests without torch: same format."""
    torch_names = _pickle_globals(fixture("checkpoint.pth.tar"))
    state_dict = convert.load_state_dict(fixture("checkpoint.pth.tar"))
    path = str(tmp_path / "written.pth.tar")
    pth_writer.save({"state_dict": OrderedDict(state_dict), "epoch": 140}, path)
    assert (
        _pickle_globals(path)
        == torch_names
        == {
            "collections OrderedDict",
            "torch._utils _rebuild_tensor_v2",
            "torch FloatStorage",
            "torch LongStorage",
        }
    )
    loaded = torch_checkpoint.load(path)
    assert loaded["epoch"] == 140
    assert_same_arrays(loaded["state_dict"], state_dict)


def test_fresh_torch_files_read_like_torch(tmp_path):
    torch = pytest.importorskip("torch")
    make_torch_fixtures.write(str(tmp_path))
    for name in (
        "tensors.pth",
        "checkpoint.pth.tar",
        "tensors_legacy.pth",
        "tiny_state_dict_legacy.pth",
    ):
        path = str(tmp_path / name)
        want = make_torch_fixtures.expected_arrays(torch.load(path, weights_only=True), "x")
        assert_same_arrays(arrays_in(torch_checkpoint.load(path), "x"), want)


def test_tiny_state_dict_written_by_torch_round_trips_exactly(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    with np.load(GOLDEN) as data:
        state_dict = {key: data[key] for key in data.files}
    tensors = OrderedDict((f"module.{k}", torch.from_numpy(v)) for k, v in state_dict.items())
    path = str(tmp_path / "tiny.pth.tar")
    torch.save({"state_dict": tensors, "epoch": 140}, path)
    monkeypatch.setitem(sys.modules, "torch", None)
    assert_same_arrays(convert.load_state_dict(path), state_dict)


def test_test_writer_files_load_in_torch(tmp_path):
    torch = pytest.importorskip("torch")
    arrays = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "n": np.array(3, np.int64)}
    path = str(tmp_path / "written.pth")
    pth_writer.save({"state_dict": arrays, "epoch": 1}, path)
    loaded = torch.load(path, weights_only=True)
    assert loaded["epoch"] == 1
    for key, value in arrays.items():
        np.testing.assert_array_equal(loaded["state_dict"][key].numpy(), value)


# The legacy format (torch < 1.6): magic number, protocol version and system info pickles, the
# object's pickle, the list of storage keys, then each storage's int64 count and elements.


def legacy_parts(data: bytes):
    """(header pickles, object pickle, the rest: storage list and records) of a legacy file."""
    stream, ends = io.BytesIO(data), []
    for _ in range(5):
        for _ in pickletools.genops(stream):  # parses, runs nothing; stops after STOP
            pass
        ends.append(stream.tell())
    return data[: ends[2]], data[ends[2] : ends[3]], data[ends[3] :], ends


def pickle_stream(data):
    """The pickles one after another in `data`."""
    stream, parts = io.BytesIO(data), []
    while stream.tell() < len(data):
        start = stream.tell()
        for _ in pickletools.genops(stream):
            pass
        parts.append(data[start : stream.tell()])
    return parts


def read_fixture(name) -> bytes:
    with open(fixture(name), "rb") as f:
        return f.read()


def test_legacy_file_reads_like_the_zip_file_and_torch(expected):
    legacy = torch_checkpoint.load(fixture("tensors_legacy.pth"))
    zipped = torch_checkpoint.load(fixture("tensors.pth"))
    want = {k: v for k, v in expected.items() if k.startswith("tensors/")}
    assert_same_arrays(arrays_in(legacy, "tensors"), want)  # torch's own .numpy()
    assert_identical_arrays(arrays_in(legacy, "tensors"), arrays_in(zipped, "tensors"))
    assert legacy["bfloat16"].dtype == ml_dtypes.bfloat16
    assert legacy["nested"]["list"][1:] == [1, "a"] and legacy["nested"]["tuple"][1] == 2.5
    assert legacy["nested"]["none"] is None
    # base, strided_view and row_view share one storage in the file (see the next test), at
    # different offsets and strides; each array is a copy of its own elements.
    np.testing.assert_array_equal(legacy["strided_view"], legacy["base"].T[1:5, ::2])
    np.testing.assert_array_equal(legacy["row_view"], legacy["base"][2])
    assert legacy["strided_view"].flags.c_contiguous and legacy["row_view"].flags.owndata


def test_legacy_fixture_shares_storages_between_views():
    """The views of tensors_legacy.pth are tensors on one storage (not copies torch made)."""
    _, obj_pickle, rest, _ = legacy_parts(read_fixture("tensors_legacy.pth"))
    pids = []

    class Recorder(pickle.Unpickler):  # builds nothing: every global is a recording stub
        def find_class(self, module, name):
            return lambda *args: (module, name, args)

        def persistent_load(self, pid):
            pids.append(pid)
            return pid

    Recorder(io.BytesIO(obj_pickle)).load()
    keys = pickle.loads(rest)  # the list of storage keys: plain strings
    assert len(pids) == 18 and len({pid[2] for pid in pids}) == len(keys) == 16
    assert all(len(pid) == 6 and pid[0] == "storage" and pid[5] is None for pid in pids)


def test_legacy_tiny_state_dict_gives_the_same_variables(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    npz = convert.load_state_dict(GOLDEN)
    zipped = str(tmp_path / "tiny.pth")
    pth_writer.save(OrderedDict(npz), zipped)
    legacy = convert.load_state_dict(fixture("tiny_state_dict_legacy.pth"))
    assert list(legacy) == list(npz)
    assert_same_arrays(legacy, npz)
    assert_identical_arrays(legacy, convert.load_state_dict(zipped))
    assert isinstance(torch_checkpoint.load(fixture("tiny_state_dict_legacy.pth")), OrderedDict)
    config = config_utils.load_config(config_utils.default_config_path("tiny"))
    template = convert.model_template(config_utils.build_model(config))
    want = convert.variables_from_state_dict(npz, template)
    have = convert.variables_from_state_dict(legacy, template)
    assert jax.tree_util.tree_structure(have) == jax.tree_util.tree_structure(want)
    for a, b in zip(jax.tree_util.tree_leaves(have), jax.tree_util.tree_leaves(want)):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)


def test_legacy_files_with_other_globals_are_refused_without_running_them(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    evil = pickle.dumps({"weight": Payload()}, protocol=2)
    header, _, rest, _ = legacy_parts(read_fixture("tensors_legacy.pth"))
    path = tmp_path / "evil.pth"
    path.write_bytes(header + evil + rest)
    with pytest.raises(torch_checkpoint.TorchCheckpointError, match=r"holds \w+\.system"):
        torch_checkpoint.load(str(path))
    # In place of the magic number: not a torch file, and nothing runs either.
    path.write_bytes(evil + read_fixture("tensors_legacy.pth"))
    with pytest.raises(torch_checkpoint.TorchCheckpointError, match="not a file written by"):
        torch_checkpoint.load(str(path))
    assert not marker.exists()


@pytest.mark.parametrize(
    "cut, message",
    [
        (lambda ends: 5, "truncated: it ends inside its magic number"),
        (lambda ends: ends[2] + 40, "truncated: it ends inside the pickled object"),
        (lambda ends: ends[3] + 3, "truncated: it ends inside its list of storages"),
        (lambda ends: ends[4] + 4, r"truncated: storage \d+ \(\d+ x \w+\) is missing"),
        (lambda ends: ends[4] + 12, r"truncated: storage \d+ .* needs \d+ bytes, 4 remain"),
        (lambda ends: -1, r"truncated: storage \d+ .* needs \d+ bytes, \d+ remain"),
    ],
)
def test_truncated_legacy_files_say_so(tmp_path, cut, message):
    data = read_fixture("tensors_legacy.pth")
    path = tmp_path / "truncated.pth"
    path.write_bytes(data[: cut(legacy_parts(data)[3])])
    with pytest.raises(torch_checkpoint.TorchCheckpointError, match=message):
        torch_checkpoint.load(str(path))


def test_truncated_legacy_state_dict_names_the_storage(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    data = read_fixture("tiny_state_dict_legacy.pth")
    path = tmp_path / "truncated.pth"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(
        torch_checkpoint.TorchCheckpointError, match=r"legacy torch file truncated: storage \d+"
    ):
        convert.load_state_dict(str(path))


class FloatStorage:
    """Pickled as torch.FloatStorage (see write_legacy)."""


def _rebuild_tensor_v2(*args):
    """Pickled as torch._utils._rebuild_tensor_v2 (see write_legacy)."""


def _rebuild_tensor(*args):
    """Pickled as torch._utils._rebuild_tensor, what torch < 0.4 pickled (see write_legacy)."""


class _StorageId:
    def __init__(self, pid):
        self.pid = pid


class LegacyTensor:
    """A float32 tensor on storage `key` (of `numel` elements, or `view` of it) in write_legacy."""

    def __init__(self, key, numel, offset, size, stride, view=None, old=False):
        self.pid = ("storage", FloatStorage, key, "cpu", numel, view)
        self.args = offset, size, stride
        self.old = old  # pickled as torch < 0.4 did: no requires_grad and hooks

    def __reduce__(self):
        if self.old:
            return _rebuild_tensor, (_StorageId(self.pid), *self.args)
        return _rebuild_tensor_v2, (_StorageId(self.pid), *self.args, False, OrderedDict())


def write_legacy(path, obj, storages, keys=None, counts=None):
    """Writes `obj` (LegacyTensor leaves) in the legacy layout, as torch._legacy_save does.

    `storages`: key -> float32 array, written in the order of `keys` (default: sorted) with
    their size as count (or `counts[key]`).
    """

    class Pickler(pickle.Pickler):
        def persistent_id(self, value):
            return value.pid if isinstance(value, _StorageId) else None

    out = io.BytesIO()
    sys_info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"int": 4}}
    for value in (LEGACY_MAGIC, LEGACY_PROTOCOL, sys_info):
        pickle.dump(value, out, protocol=2)
    buffer = io.BytesIO()
    Pickler(buffer, protocol=2).dump(obj)
    data = buffer.getvalue()
    here = __name__.encode()
    for module, name in (("torch", b"FloatStorage"), ("torch._utils", b"_rebuild_tensor_v2")):
        data = data.replace(b"c%s\n%s\n" % (here, name), b"c%s\n%s\n" % (module.encode(), name))
    data = data.replace(b"c%s\n_rebuild_tensor\n" % here, b"ctorch._utils\n_rebuild_tensor\n")
    out.write(data)
    keys = sorted(storages) if keys is None else keys
    pickle.dump(keys, out, protocol=2)
    for key in keys:
        count = (counts or {}).get(key, storages[key].size)
        out.write(np.int64(count).astype("<i8").tobytes() + storages[key].astype("<f4").tobytes())
    with open(path, "wb") as f:
        f.write(out.getvalue())


def test_write_legacy_matches_torch_layout(tmp_path):
    path = str(tmp_path / "written.pth")
    write_legacy(path, {"w": LegacyTensor("7", 2, 0, (2,), (1,))}, {"7": np.ones(2, np.float32)})
    with open(path, "rb") as f:
        written = legacy_parts(f.read())
    torch_written = legacy_parts(read_fixture("tensors_legacy.pth"))
    # The same magic number and version pickles (the header's plain values, no globals).
    assert pickle_stream(written[0])[:2] == pickle_stream(torch_written[0])[:2]
    assert pickle.loads(pickle_stream(torch_written[0])[1]) == LEGACY_PROTOCOL
    assert pickle.loads(pickle_stream(torch_written[0])[0]) == LEGACY_MAGIC

    def names(obj_pickle):
        return {arg for op, arg, _ in pickletools.genops(obj_pickle) if op.name == "GLOBAL"}

    assert names(written[1]) <= names(torch_written[1])
    assert torch_checkpoint.load(path)["w"].tolist() == [1.0, 1.0]


def test_legacy_storage_views_and_shared_storages(tmp_path):
    """Old torch pickled views of a storage: (view key, offset, numel) of the root storage."""
    root = np.arange(10, dtype=np.float32)
    obj = {
        # elements 2..7 of the root, a 2x2 tensor at offset 1, stride (1, 2) in the view
        "in_view": LegacyTensor("100", 10, 1, (2, 2), (1, 2), view=("200", 2, 6)),
        "same_view": LegacyTensor("100", 10, 0, (6,), (1,), view=("200", 2, 6)),
        "on_root": LegacyTensor("100", 10, 3, (3,), (2,)),
        "whole": LegacyTensor("100", 10, 0, (2, 5), (5, 1)),
    }
    path = str(tmp_path / "views.pth")
    write_legacy(path, obj, {"100": root})
    loaded = torch_checkpoint.load(path)
    view = root[2:8]
    np.testing.assert_array_equal(loaded["in_view"], [[view[1], view[3]], [view[2], view[4]]])
    np.testing.assert_array_equal(loaded["same_view"], view)
    np.testing.assert_array_equal(loaded["on_root"], root[3:9:2])
    np.testing.assert_array_equal(loaded["whole"], root.reshape(2, 5))
    assert all(array.dtype == np.float32 for array in loaded.values())
    # A tensor past the end of its view (though inside the root) is refused.
    write_legacy(path, {"x": LegacyTensor("100", 10, 5, (2,), (1,), ("200", 2, 6))}, {"100": root})
    with pytest.raises(torch_checkpoint.TorchCheckpointError, match="overruns its storage of 6"):
        torch_checkpoint.load(path)
    write_legacy(path, {"x": LegacyTensor("100", 10, 0, (2,), (1,), ("200", 6, 6))}, {"100": root})
    with pytest.raises(torch_checkpoint.TorchCheckpointError, match="overruns storage 100"):
        torch_checkpoint.load(path)


def test_legacy_storage_records_that_do_not_match_are_refused(tmp_path):
    path = str(tmp_path / "bad.pth")
    obj = {"x": LegacyTensor("1", 4, 0, (4,), (1,))}
    write_legacy(path, obj, {"1": np.ones(4, np.float32)}, counts={"1": 5})
    with pytest.raises(torch_checkpoint.TorchCheckpointError, match="storage 1 holds 5 elements"):
        torch_checkpoint.load(path)
    write_legacy(path, obj, {"1": np.ones(4, np.float32)}, keys=[])
    with pytest.raises(torch_checkpoint.TorchCheckpointError, match=r"does not list storages"):
        torch_checkpoint.load(path)
    write_legacy(path, obj, {"1": np.ones(4, np.float32), "2": np.ones(1, np.float32)})
    with pytest.raises(torch_checkpoint.TorchCheckpointError, match="does not use, storage 2"):
        torch_checkpoint.load(path)
    header, *_ = legacy_parts(read_fixture("tensors_legacy.pth"))
    with open(path, "wb") as f:
        version, other = pickle.dumps(LEGACY_PROTOCOL, protocol=2), pickle.dumps(1000, protocol=2)
        f.write(header.replace(version, other))
    with pytest.raises(torch_checkpoint.TorchCheckpointError, match="protocol version 1000"):
        torch_checkpoint.load(path)


def test_tensors_pickled_by_old_torch_read_alike(tmp_path):
    """torch < 0.4 pickled a tensor as torch._utils._rebuild_tensor(storage, offset, size,
    stride)."""
    root = np.arange(6, dtype=np.float32)
    path = str(tmp_path / "old.pth")
    write_legacy(path, {"x": LegacyTensor("1", 6, 1, (2, 2), (3, 1), old=True)}, {"1": root})
    with open(path, "rb") as f:
        assert b"ctorch._utils\n_rebuild_tensor\n" in f.read()
    np.testing.assert_array_equal(torch_checkpoint.load(path)["x"], [[1, 2], [4, 5]])


def test_tar_archives_are_refused_naming_what_they_are(tmp_path):
    early = str(tmp_path / "early.pth")
    with tarfile.open(early, "w") as tar:
        for name in ("sys_info", "pickle", "storages", "tensors"):
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(torch_checkpoint.TorchCheckpointError, match="earliest torch releases"):
        torch_checkpoint.load(early)
    release = str(tmp_path / "release.tar.gz")
    with tarfile.open(release, "w:gz") as tar:
        tar.add(fixture("tensors.pth"), "logocap/model.pth")
    with pytest.raises(
        torch_checkpoint.TorchCheckpointError,
        match=r"is a tar archive, not a file written by torch.save \(it holds \['logocap",
    ):
        torch_checkpoint.load(release)
