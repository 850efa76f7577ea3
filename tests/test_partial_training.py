"""Training part of the model on loaded weights: `train.trainable_modules` (the optimiser
freezes the other modules) and `train.init_checkpoint` / `init_exclude`
(`checkpoints.restore_modules`).

No model is run: variables come from the golden tiny state dict and `jax.eval_shape` templates.
"""

from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest

from logocap_jax import config_utils
from logocap_jax.training import trainer
from logocap_jax.weights import checkpoints, convert

ROOT = Path(__file__).resolve().parent.parent
GOLDEN_STATE_DICT = ROOT / "tests" / "data" / "golden" / "tiny_state_dict.npz"


def _train_config(**fields):
    config = config_utils.load_config(str(ROOT / "configs" / "mini.py")).train
    config.update(fields)
    return config


def _params(seed):
    rng = np.random.default_rng(seed)
    return {
        "backbone": {"conv": {"kernel": rng.normal(size=(3, 3, 2, 4)).astype(np.float32)}},
        "joints_mlp": {"0": {"kernel": rng.normal(size=(3, 3, 4, 8)).astype(np.float32)}},
    }


def test_trainable_modules_freeze_the_others():
    params, grads = _params(0), _params(1)
    tx = trainer.create_optimizer(_train_config(trainable_modules=("joints_mlp",)), 1)
    state = tx.init(params)
    updates, state = tx.update(grads, state, params)
    np.testing.assert_array_equal(updates["backbone"]["conv"]["kernel"], 0.0)
    # Adam's first step moves every trained weight by the learning rate (|g| >> eps).
    np.testing.assert_allclose(np.abs(updates["joints_mlp"]["0"]["kernel"]), 5e-3, rtol=1e-4)
    moments = jax.tree_util.tree_leaves(state)
    assert sum(np.size(x) for x in moments) < 2 * 3 * 3 * 4 * 8 + 10  # no backbone moments


def test_without_trainable_modules_everything_trains():
    params, grads = _params(0), _params(1)
    tx = trainer.create_optimizer(_train_config(), 1)
    updates, _ = tx.update(grads, tx.init(params), params)
    assert np.all(np.abs(updates["backbone"]["conv"]["kernel"]) > 0)


def test_unknown_trainable_module_is_named():
    tx = trainer.create_optimizer(_train_config(trainable_modules=("joint_mlp",)), 1)
    with pytest.raises(ValueError, match=r"\['joint_mlp'\].*'backbone', 'joints_mlp'"):
        tx.init(_params(0))


@pytest.fixture(scope="module")
def golden_checkpoint(tmp_path_factory):
    config = config_utils.load_config(str(ROOT / "configs" / "tiny.py"))
    variables = convert.variables_from_state_dict(
        convert.load_state_dict(str(GOLDEN_STATE_DICT)),
        convert.model_template(config_utils.build_model(config)),
    )
    directory = tmp_path_factory.mktemp("golden") / "tiny"
    checkpoints.save_variables(str(directory), variables)
    return directory, variables


def _fresh_variables(variant, options):
    config = config_utils.load_config(str(ROOT / "configs" / "tiny.py"))
    config.model.cmp_variant = variant
    config.model.cmp_options = ml_collections.ConfigDict(options)
    template = convert.model_template(config_utils.build_model(config))
    return jax.tree_util.tree_map(lambda x: np.full(x.shape, 7.0, x.dtype), template)


def test_restore_modules_keeps_the_excluded_cmp(golden_checkpoint):
    directory, golden = golden_checkpoint
    fresh = _fresh_variables("skeleton_graph", {"width": 4})
    restored = checkpoints.restore_modules(str(directory), fresh, exclude=("joints_mlp",))
    for collection in ("params", "batch_stats"):
        assert restored[collection].keys() == fresh[collection].keys()
        for name, tree in restored[collection].items():
            expected = fresh[collection][name] if name == "joints_mlp" else golden[collection][name]
            for ours, want in zip(
                jax.tree_util.tree_leaves(tree), jax.tree_util.tree_leaves(expected)
            ):
                np.testing.assert_array_equal(ours, want)


def test_restore_modules_names_what_does_not_fit(golden_checkpoint):
    directory, _ = golden_checkpoint
    fresh = _fresh_variables("skeleton_graph", {"width": 4})
    with pytest.raises(ValueError, match="joints_mlp is missing or does not fit"):
        checkpoints.restore_modules(str(directory), fresh)
    with pytest.raises(ValueError, match=r"\['joint_mlp'\]"):
        checkpoints.restore_modules(str(directory), fresh, exclude=("joint_mlp",))
