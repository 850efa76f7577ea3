"""Reading official .pth / .pth.tar checkpoints (needs the optional torch extra)."""

import numpy as np
import pytest

from logocap_jax.weights import convert

torch = pytest.importorskip("torch", reason="reading .pth files needs pip install '.[torch]'")

GOLDEN = "tests/data/golden/tiny_state_dict.npz"


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "module_prefix"])
def test_pth_state_dicts_read_like_npz(tmp_path, wrap):
    expected = convert.load_state_dict(GOLDEN)
    tensors = {key: torch.from_numpy(np.asarray(value)) for key, value in expected.items()}
    if wrap == "module_prefix":
        tensors = {f"module.{key}": value for key, value in tensors.items()}
    payload = {"state_dict": tensors, "epoch": 140} if wrap == "state_dict" else tensors
    path = tmp_path / "model.pth.tar"
    torch.save(payload, path)
    loaded = convert.load_state_dict(str(path))
    assert set(loaded) == set(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(loaded[key], value)
