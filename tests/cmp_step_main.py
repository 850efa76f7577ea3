"""One sharded optimisation step of every CMP variant case, on all devices and on one device.

Run as a script by tests/test_cmp_sharding.py with 8 fake CPU devices (XLA_FLAGS must be set
before JAX starts): python tests/cmp_step_main.py OUT.npz. Per case, the step (masked batch
statistics, a masked squared error on the KAMs, Adam through `trainer.TrainState`) runs jitted
with a replicated state and instances sharded over the 'data' axis of `device_mesh.make_mesh`, once
on every device and once on a one-device mesh; loss, gradients and new statistics are saved.
"""

import functools
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from cmp_variant_cases import NUM_JOINTS, SIDE, cases, features
from flax import traverse_util
from jax.sharding import NamedSharding, PartitionSpec

from logocap_jax import device_mesh
from logocap_jax.models import cmp_variants
from logocap_jax.training import trainer

INSTANCES = 16  # two per device on 8 devices


def step(state, batch, *, model):
    mask = batch["mask"]

    def loss_fn(params):
        kams, new = model.apply(
            {"params": params, "batch_stats": state.batch_stats},
            batch["features"],
            train=True,
            mask=mask,
            mutable=["batch_stats"],
        )
        error = (kams - batch["targets"]) ** 2 * mask[:, None, None, None]
        return jnp.sum(error) / jnp.sum(mask), new.get("batch_stats", {})

    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return state.apply_gradients(grads=grads, batch_stats=stats), dict(loss=loss, grads=grads)


def run_case(name, options, mesh, batch):
    model = cmp_variants.create(name, options, num_joints=NUM_JOINTS, dtype=jnp.float32)
    variables = model.init(jax.random.key(0), features(0, count=1), train=False)
    state = trainer.TrainState.create(
        apply_fn=model.apply,
        params=variables.get("params", {}),
        tx=optax.adam(1e-3),
        batch_stats=variables.get("batch_stats", {}),
    )
    replicated = NamedSharding(mesh, PartitionSpec())
    state = jax.device_put(state, replicated)
    state_shardings = jax.tree_util.tree_map(lambda x: x.sharding, state)
    sharded = trainer.shard_batch(batch, mesh)
    assert sharded["features"].sharding.num_devices == len(mesh.devices.flat)
    fn = jax.jit(
        functools.partial(step, model=model),
        out_shardings=(state_shardings, replicated),
        # Each program runs once: skip LLVM's optimisations, compilation dominates.
        compiler_options={"xla_backend_optimization_level": 0},
    )
    state, out = fn(state, sharded)
    flat = traverse_util.flatten_dict(
        jax.device_get({"grads": out["grads"], "stats": state.batch_stats}), sep="/"
    )
    return {"loss": np.asarray(out["loss"]), **flat}


def main(out_path):
    rng = np.random.default_rng(0)
    batch = {
        "features": np.asarray(features(1, count=INSTANCES)),
        "targets": rng.uniform(size=(INSTANCES, SIDE, SIDE, NUM_JOINTS)).astype(np.float32),
        "mask": rng.uniform(size=INSTANCES) < 0.6,
    }
    saved = {"device_count": jax.device_count()}
    meshes = {"all": device_mesh.make_mesh(), "one": device_mesh.make_mesh(jax.devices()[:1])}
    for case, (name, options) in cases().items():
        for label, mesh in meshes.items():
            for key, value in run_case(name, options, mesh, batch).items():
                saved[f"{case}|{label}|{key}"] = value
    np.savez(out_path, **saved)


if __name__ == "__main__":
    main(sys.argv[1])
