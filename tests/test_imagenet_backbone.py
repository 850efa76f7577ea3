"""ImageNet-pretrained HRNet weights go into the backbone 1:1 by name."""

import jax
import numpy as np
import pytest

from logocap_jax import config_utils
from logocap_jax.weights import convert

GOLDEN = "tests/data/golden/tiny_state_dict.npz"


@pytest.fixture(scope="module")
def setup():
    model = config_utils.build_model(config_utils.load_config("configs/tiny.py"))
    template = convert.model_template(model)
    zeros = jax.tree_util.tree_map(lambda x: np.zeros(x.shape, x.dtype), template)
    state_dict = convert.load_state_dict(GOLDEN)
    backbone = {
        k.removeprefix("backbone."): v for k, v in state_dict.items() if k.startswith("backbone.")
    }
    return zeros, state_dict, backbone


def test_backbone_keys_load_and_classifier_keys_are_ignored(setup):
    zeros, state_dict, backbone = setup
    checkpoint = dict(
        backbone,
        **{
            "classifier.weight": np.ones((1000, 2048)),
            "incre_modules.0.0.conv1.weight": np.ones((32, 64, 1, 1)),
        },
    )
    variables, loaded, ignored = convert.load_imagenet_backbone(zeros, checkpoint)
    expected = {k for k in backbone if not convert.is_buffer_counter(k)}
    assert set(loaded) == expected
    assert ignored == ["classifier.weight", "incre_modules.0.0.conv1.weight"]
    converted = convert.state_dict_from_variables(variables)
    for key in expected:
        np.testing.assert_array_equal(converted["backbone." + key], state_dict["backbone." + key])
    # Heads and CMP keep their (here zero) initialisation.
    assert not np.any(converted["final_layer_cls.weight"])
    assert not np.any(converted["joints_mlp.0.weight"])


def test_missing_backbone_keys_keep_their_init(setup):
    zeros, _, backbone = setup
    partial = {k: v for k, v in backbone.items() if not k.startswith("stage4")}
    variables, loaded, _ = convert.load_imagenet_backbone(zeros, partial)
    converted = convert.state_dict_from_variables(variables)
    assert not any(k.startswith("stage4") for k in loaded)
    assert not np.any(converted["backbone.stage4.0.branches.0.0.conv1.weight"])
    assert np.any(converted["backbone.conv1.weight"])


def test_shape_mismatch_names_the_key(setup):
    zeros, _, backbone = setup
    bad = dict(backbone, **{"conv1.weight": np.zeros((64, 3, 5, 5), np.float32)})
    with pytest.raises(ValueError, match="conv1.weight"):
        convert.load_imagenet_backbone(zeros, bad)
