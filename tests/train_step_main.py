"""One sharded training step of the tiny model on the golden batch (x4), saved to a .npz.

Run as a script by tests/test_train_sharding.py, once per device count (XLA_FLAGS must be set
before JAX starts): python tests/train_step_main.py OUT.npz
"""

import sys

import jax
import numpy as np
from flax import traverse_util
from golden_arrays import GOLDEN, ROOT, load, training_batch
from jax.sharding import NamedSharding, PartitionSpec

from logocap_jax import config_utils, device_mesh
from logocap_jax.training import trainer
from logocap_jax.weights import convert


def main(out_path):
    config = config_utils.load_config(str(ROOT / "configs" / "tiny.py"))
    # Room for every golden instance (at most 6 per image), fewer slots than all 30 for speed.
    config.train.max_instances = 8
    model = config_utils.build_model(config)
    variables = convert.variables_from_state_dict(
        convert.load_state_dict(str(GOLDEN / "tiny_loss_state_dict.npz")),
        convert.model_template(model),
    )
    pair = training_batch(load("tiny_loss.npz"))
    batch = {key: np.concatenate([value] * 4) for key, value in pair.items()}

    mesh = device_mesh.make_mesh()
    tx = trainer.create_optimizer(config.train, steps_per_epoch=10)
    state = trainer.TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        tx=tx,
        batch_stats=variables["batch_stats"],
    )
    state = jax.device_put(state, NamedSharding(mesh, PartitionSpec()))
    settings = config_utils.train_settings(config)
    weights = config_utils.loss_weights(config)
    batch = trainer.shard_batch(batch, mesh)
    gradients = jax.jit(
        lambda s, b: trainer.loss_and_gradients(
            s, b, model=model, settings=settings, loss_weights=weights
        )[1]
    )(state, batch)
    step = trainer.make_train_step(model, settings, weights, mesh, state)
    state, metrics = step(state, batch)
    flat = traverse_util.flatten_dict(jax.device_get(trainer.model_variables(state)), sep="/")
    flat.update(traverse_util.flatten_dict({"grad": jax.device_get(gradients)}, sep="/"))
    np.savez(
        out_path,
        device_count=jax.device_count(),
        learning_rate=config.train.learning_rate,
        **{f"metric/{k}": v for k, v in jax.device_get(metrics).items()},
        **flat,
    )


if __name__ == "__main__":
    main(sys.argv[1])
