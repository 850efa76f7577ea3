"""Reading torch.save files without PyTorch (logocap_jax.torch_checkpoint).

The fixtures in tests/data/torch_save were written by torch 2.13 (tests/make_torch_fixtures.py);
expected.npz holds torch's own `.numpy()` of every tensor in them. Tests that need PyTorch write
fresh files and skip where it is not installed.
"""

import os
import pickle
import pickletools
import sys
import zipfile
from collections import OrderedDict

import make_torch_fixtures
import ml_dtypes
import numpy as np
import pth_writer
import pytest

from logocap_jax import convert, torch_checkpoint

FIXTURES = os.path.join(os.path.dirname(__file__), "data", "torch_save")
GOLDEN = os.path.join(os.path.dirname(__file__), "data", "golden", "tiny_state_dict.npz")


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


def test_legacy_format_asks_for_torch(monkeypatch):
    with pytest.raises(torch_checkpoint.TorchCheckpointError, match=r"legacy format.*pip install"):
        torch_checkpoint.load(fixture("legacy.pth"))
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(torch_checkpoint.TorchCheckpointError, match="torch < 1.6"):
        convert.load_state_dict(fixture("legacy.pth"))


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
    for name in ("tensors.pth", "checkpoint.pth.tar"):
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
