"""The bfloat16 compute option: float32 parameters, statistics and losses, bf16 convolutions.

Passes on an Intel Xeon and on an AMD EPYC (Zen 4) under XLA's default instruction set,
--xla_cpu_max_isa=AVX2 and --xla_cpu_max_isa=SSE4_2: bfloat16 rounding (8 mantissa bits) is far
above anything the instruction set moves.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from golden_arrays import GOLDEN, training_batch
from golden_arrays import LOSS_TERMS as TERMS

from logocap_jax import config_utils
from logocap_jax.training import trainer
from logocap_jax.weights import convert

pytestmark = pytest.mark.slow


def test_bf16_training_step_is_close_to_float32(tiny_config, golden_step):
    config = tiny_config
    config.train.compute_dtype = "bfloat16"
    model = config_utils.build_model(config, dtype=config_utils.train_dtype(config))
    variables = convert.variables_from_state_dict(
        convert.load_state_dict(str(GOLDEN / "tiny_loss_state_dict.npz")),
        convert.model_template(model),
    )
    golden = golden_step
    state = trainer.TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        tx=optax.adam(1e-3),
        batch_stats=variables["batch_stats"],
    )
    terms, grads, batch_stats, _ = jax.jit(
        lambda s, b: trainer.loss_and_gradients(
            s,
            b,
            model=model,
            settings=config_utils.train_settings(config),
            loss_weights=config_utils.loss_weights(config),
        )
    )(state, training_batch(golden))

    for tree in (grads, batch_stats):
        assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(tree))
        assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(tree))
    for name in ("heatmaps", "offsets", "total"):
        assert terms[name].dtype == jnp.float32
        # bf16 keeps 8 bits of mantissa: the map losses stay within a few percent.
        np.testing.assert_allclose(terms[name], golden[TERMS[name]], rtol=5e-2, err_msg=name)
