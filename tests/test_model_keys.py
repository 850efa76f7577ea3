"""The Flax models' variables match the official state dicts key for key, and conversion
(state dict <-> variables <-> orbax checkpoint, and the CLI) round-trips exactly.

All model shapes come from `jax.eval_shape` (convert.model_template): no real initialisation.
Everything here is exact (keys, shapes, counts, array values): conversion only transposes.
"""

import ast
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from logocap_jax import config_utils
from logocap_jax.weights import checkpoints, convert

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "data" / "golden"
TINY_STATE_DICT = GOLDEN / "tiny_state_dict.npz"
# Official numbers (golden README section C and the tiny config): trainable parameters
# (BatchNorm running statistics excluded), total and in the backbone.
PARAMETER_COUNTS = {
    "w32": (35_991_429, 29_305_536),
    "w48": (72_107_333, 65_325_120),
    "tiny": (643_805, None),
}
OFFICIAL_KEY_COUNT = 1873  # per README, num_batches_tracked included
TINY_KEY_COUNT = 415


def official_shapes(name):
    """{key: shape} of w32_keys.txt / w48_keys.txt without the num_batches_tracked counters."""
    shapes = {}
    lines = (GOLDEN / f"{name}_keys.txt").read_text().splitlines()
    assert len(lines) == OFFICIAL_KEY_COUNT
    for line in lines:
        key, shape, dtype = line.split("\t")
        if key.endswith("num_batches_tracked"):
            assert shape == "()" and dtype == "int64"
            continue
        assert dtype == "float32", key
        shapes[key] = ast.literal_eval(shape)
    return shapes


@pytest.fixture(scope="module")
def templates():
    out = {}
    for name in PARAMETER_COUNTS:
        model = config_utils.build_model(
            config_utils.load_config(str(ROOT / "configs" / f"{name}.py"))
        )
        out[name] = convert.model_template(model)
    return out


@pytest.fixture(scope="module")
def tiny_state_dict():
    return convert.load_state_dict(str(TINY_STATE_DICT))


@pytest.fixture(scope="module")
def tiny_variables(tiny_state_dict, templates):
    return convert.variables_from_state_dict(tiny_state_dict, templates["tiny"])


def _count(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


@pytest.mark.parametrize("name", ["w32", "w48"])
def test_state_dict_keys_and_shapes_match_official(templates, name):
    ours = convert.state_dict_shapes(templates[name])
    official = official_shapes(name)
    missing, unexpected = (
        sorted(official.keys() - ours.keys()),
        sorted(ours.keys() - official.keys()),
    )
    assert not missing and not unexpected, f"missing {missing[:5]}, unexpected {unexpected[:5]}"
    wrong = {k: (ours[k], official[k]) for k in official if tuple(ours[k]) != tuple(official[k])}
    assert not wrong, f"shape mismatches (ours, official): {dict(list(wrong.items())[:5])}"
    assert len(ours) == 1562  # 1873 minus 311 num_batches_tracked


@pytest.mark.parametrize("name", ["w32", "w48", "tiny"])
def test_parameter_counts(templates, name):
    total, backbone = PARAMETER_COUNTS[name]
    params = templates[name]["params"]
    assert _count(params) == total
    if backbone is not None:
        assert _count(params["backbone"]) == backbone


def test_tiny_state_dict_fits_the_tiny_template(templates, tiny_state_dict):
    assert len(tiny_state_dict) == TINY_KEY_COUNT
    ours = convert.state_dict_shapes(templates["tiny"])
    given = {k: v.shape for k, v in tiny_state_dict.items() if not convert.is_buffer_counter(k)}
    assert ours == given


def test_missing_key_is_named(templates, tiny_state_dict):
    state = dict(tiny_state_dict)
    del state["joints_mlp.4.weight_"]
    with pytest.raises(KeyError, match=r"joints_mlp\.4\.weight_"):
        convert.variables_from_state_dict(state, templates["tiny"])


def test_unexpected_key_is_named(templates, tiny_state_dict):
    state = dict(tiny_state_dict, **{"final_layer_cls.extra_weight": np.zeros(3, np.float32)})
    with pytest.raises(KeyError, match=r"final_layer_cls\.extra_weight"):
        convert.variables_from_state_dict(state, templates["tiny"])


@pytest.mark.parametrize(
    "key,shape", [("final_layer_cls.bias", (17,)), ("backbone.conv1.weight", (64, 3, 3, 2))]
)
def test_misshaped_array_is_named(templates, tiny_state_dict, key, shape):
    state = dict(tiny_state_dict, **{key: np.zeros(shape, np.float32)})
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        convert.variables_from_state_dict(state, templates["tiny"])


def test_conversion_layout(tiny_variables, tiny_state_dict):
    """Conv kernels OIHW -> HWIO, BN statistics renamed."""
    kernel = tiny_variables["params"]["backbone"]["conv1"]["kernel"]
    np.testing.assert_array_equal(
        kernel, tiny_state_dict["backbone.conv1.weight"].transpose(2, 3, 1, 0)
    )
    np.testing.assert_array_equal(
        tiny_variables["batch_stats"]["joints_mlp"]["4"]["var"],
        tiny_state_dict["joints_mlp.4.running_var"],
    )


def test_state_dict_round_trip(tiny_variables, tiny_state_dict):
    back = convert.state_dict_from_variables(tiny_variables)
    expected = {k: v for k, v in tiny_state_dict.items() if not convert.is_buffer_counter(k)}
    assert back.keys() == expected.keys()
    for key, value in expected.items():
        assert back[key].dtype == value.dtype and back[key].shape == value.shape, key
        np.testing.assert_array_equal(back[key], value, err_msg=key)


def _assert_same_tree(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        assert np.shape(x) == np.shape(y) and np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(x, y)


def test_orbax_round_trip(tiny_variables, templates, tmp_path):
    directory = tmp_path / "tiny_ckpt"
    checkpoints.save_variables(str(directory), tiny_variables)
    _assert_same_tree(checkpoints.restore_variables(str(directory)), tiny_variables)
    _assert_same_tree(
        checkpoints.restore_variables(str(directory), templates["tiny"]), tiny_variables
    )
    with pytest.raises(FileExistsError):
        checkpoints.save_variables(str(directory), tiny_variables)
    with pytest.raises(FileNotFoundError):
        checkpoints.restore_variables(str(tmp_path / "absent"))


def test_convert_cli(tiny_variables, tmp_path):
    output = tmp_path / "converted"
    python_path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=python_path, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "logocap_jax.commands.convert",
            "--config",
            "configs/tiny.py",
            "--input",
            str(TINY_STATE_DICT.relative_to(ROOT)),
            "--output",
            str(output),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "643,805 parameters" in proc.stdout
    _assert_same_tree(checkpoints.restore_variables(str(output)), tiny_variables)
