"""One way to load weights: `weights.load(config, source)` for every kind of source."""

import jax
import numpy as np
import pytest
from golden_arrays import GOLDEN, ROOT

from logocap_jax import config_utils, errors, weights
from logocap_jax.weights import checkpoints

LEGACY_PTH = ROOT / "tests" / "data" / "torch_save" / "tiny_state_dict_legacy.pth"


def assert_same_variables(ours, expected):
    assert jax.tree_util.tree_structure(ours) == jax.tree_util.tree_structure(expected)
    for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(expected)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_state_dicts_in_every_format_give_the_same_variables(tiny_config, tiny_variables):
    # The .npz golden weights, and the same weights in torch's legacy (pre-1.6) format read
    # without PyTorch.
    assert_same_variables(weights.load(tiny_config, GOLDEN / "tiny_state_dict.npz"), tiny_variables)
    assert_same_variables(weights.load(tiny_config, LEGACY_PTH), tiny_variables)


def test_checkpoint_directory_and_a_path_named_like_a_pretrained_model(
    tiny_config, tiny_variables, tmp_path, monkeypatch
):
    checkpoints.save_variables(str(tmp_path / "w32"), tiny_variables)
    assert_same_variables(weights.load(tiny_config, tmp_path / "w32"), tiny_variables)
    monkeypatch.chdir(tmp_path)
    assert_same_variables(weights.load(tiny_config, "./w32"), tiny_variables)


def test_a_missing_source_is_named(tiny_config, tmp_path):
    with pytest.raises(errors.InputNotFoundError, match="nowhere.npz.*w32, w48"):
        weights.load(tiny_config, tmp_path / "nowhere.npz")


def test_weights_of_another_model_name_the_file():
    with pytest.raises(errors.CheckpointMismatchError, match="tiny_state_dict.npz: State dict"):
        weights.load(config_utils.load_config("w32"), GOLDEN / "tiny_state_dict.npz")


def test_a_file_that_holds_no_weights_is_named(tiny_config, tmp_path):
    bad = tmp_path / "notes.pth"
    bad.write_text("not a checkpoint")
    with pytest.raises(errors.InputFormatError, match="notes.pth"):
        weights.load(tiny_config, bad)
