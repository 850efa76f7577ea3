"""train.remat: rematerialised HRNet stages and heads change where memory peaks, not what the
training step computes."""

import jax
import numpy as np
import optax
import pytest
from golden_arrays import GOLDEN, training_batch

from logocap_jax import config_utils, errors
from logocap_jax.training import trainer
from logocap_jax.weights import convert


def _model(config, scope):
    config.train.remat = scope
    return config_utils.build_train_model(config)


def test_remat_keeps_the_parameters_and_their_names(tiny_config):
    plain = convert.model_template(_model(tiny_config, "none"))
    rematerialised = convert.model_template(_model(tiny_config, "stages_and_heads"))
    assert jax.tree_util.tree_structure(rematerialised) == jax.tree_util.tree_structure(plain)
    shapes = lambda tree: [x.shape for x in jax.tree_util.tree_leaves(tree)]
    assert shapes(rematerialised) == shapes(plain)


@pytest.mark.parametrize(
    "key, value, message",
    [("remat", "layers", "remat scope 'layers'"), ("remat_policy", "dots", "policy 'dots'")],
)
def test_unknown_remat_setting_is_a_config_error(tiny_config, key, value, message):
    tiny_config.train[key] = value
    with pytest.raises(errors.ConfigError, match=message):
        config_utils.build_train_model(tiny_config)


@pytest.mark.slow
def test_remat_gives_the_losses_and_gradients_of_the_plain_step(tiny_config, golden_step):
    """'stages_and_heads' rematerialises every block 'stages' does, and the heads."""
    settings = config_utils.train_settings(tiny_config)
    weights = config_utils.loss_weights(tiny_config)
    batch = training_batch(golden_step)

    def step(model):
        variables = convert.variables_from_state_dict(
            convert.load_state_dict(str(GOLDEN / "tiny_loss_state_dict.npz")),
            convert.model_template(model),
        )
        state = trainer.TrainState.create(
            apply_fn=model.apply,
            params=variables["params"],
            tx=optax.adam(1e-3),
            batch_stats=variables["batch_stats"],
        )
        run = jax.jit(
            lambda s, b: trainer.loss_and_gradients(
                s, b, model=model, settings=settings, loss_weights=weights
            )
        )
        return jax.device_get(run(state, batch))

    plain = step(_model(tiny_config, "none"))
    rematerialised = step(_model(tiny_config, "stages_and_heads"))
    assert plain[0].keys() == rematerialised[0].keys()
    # The recomputed forward pass runs the same operations on the same inputs; only XLA's
    # fusion of them may differ, so float32 rounding is the tolerance.
    for name, want in plain[0].items():
        np.testing.assert_allclose(rematerialised[0][name], want, rtol=1e-5, err_msg=name)
    for got, want in zip(
        jax.tree_util.tree_leaves(rematerialised[1:3]), jax.tree_util.tree_leaves(plain[1:3])
    ):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6 * np.abs(want).max())
    assert rematerialised[3] == plain[3]
