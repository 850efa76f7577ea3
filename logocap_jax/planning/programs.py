"""The package's training step and inference program, lowered for a TPU slice from any host.

XLA's TPU compiler (libtpu, the `tpu` extra) runs on a CPU: a topology description stands for
the slice's chips, and a program traced on abstract arrays sharded over those chips compiles
for them ("deviceless" ahead-of-time compilation). The programs are the ones training and
evaluation run: `trainer.make_train_step` on `trainer.abstract_train_state` with the batch
sharded over the `data` axis of `device_mesh.make_mesh`, and `pipeline.make_predict_fn`.
"""

import copy
import functools
import os

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from logocap_jax import config_utils, device_mesh, errors
from logocap_jax.data import input_pipeline
from logocap_jax.inference import pipeline
from logocap_jax.training import trainer

PLATFORM = "tpu"
INSTALL_HINT = 'compiling for a TPU needs libtpu: pip install -e ".[tpu]"'


def require_libtpu() -> None:
    """Raises MissingDependencyError (one line: install the `tpu` extra) without libtpu."""
    try:
        import libtpu  # noqa: F401
    except ImportError as error:
        raise errors.MissingDependencyError(INSTALL_HINT) from error


@functools.cache
def topology_devices(topology: str, chip_config: str = "default") -> tuple:
    """The chips of a TPU slice named like 'v5e:2x2' or 'v4:2x2x1', as compile targets
    (`chip_config` 'megacore' for v4 and v5p: one device per chip, as JAX runs them).

    Raises:
      MissingDependencyError: libtpu is not installed.
      ConfigError: the topology name is not one libtpu knows.
    """
    require_libtpu()
    from jax.experimental import topologies

    # libtpu locks a file to own the local TPU; compiling without one needs no lock, and
    # another process (a test, a second plan) may hold it.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        description = topologies.get_topology_desc(
            topology_name=topology, platform=PLATFORM, chip_config_name=chip_config
        )
    except Exception as error:
        raise errors.ConfigError(
            f"unknown TPU topology {topology!r} (e.g. v5e:2x2, v4:2x2x1): {error}"
        ) from error
    return tuple(description.devices)


def for_tpu(config):
    """A copy of `config` whose 'auto' choices are the ones a TPU makes: tracing on a CPU host
    would otherwise pick the CPU's convolution forms."""
    config = copy.deepcopy(config)
    if config.model.conv_form == "auto":
        config.model.conv_form = "native"
    if config.logo_ca.dynamic_conv == "auto":
        config.logo_ca.dynamic_conv = "grouped"
    return config


def train_step_lowered(config, per_chip_batch: int, devices, steps_per_epoch: int = 1000):
    """The training step of `config` for `per_chip_batch` images on each of `devices`, lowered.

    `steps_per_epoch` only places the learning-rate drops, which do not change the program.
    """
    config = for_tpu(config)
    mesh = device_mesh.make_mesh(devices)
    model = config_utils.build_train_model(config)
    tx = trainer.create_optimizer(config.train, steps_per_epoch)
    state = trainer.abstract_train_state(model, tx, config.data.input_size, mesh)
    step = trainer.make_train_step(
        model,
        config_utils.train_settings(config),
        config_utils.loss_weights(config),
        mesh,
        state,
        trainer.learning_rate_schedule(config.train, steps_per_epoch),
    )
    batch_sharding = NamedSharding(mesh, PartitionSpec(device_mesh.DATA_AXIS))
    spec = input_pipeline.batch_spec(
        per_chip_batch * len(devices),
        input_size=config.data.input_size,
        output_size=config.data.output_size,
        max_people=config.data.max_people,
    )
    batch = {
        key: jax.ShapeDtypeStruct(shape, dtype, sharding=batch_sharding)
        for key, (shape, dtype) in spec.items()
    }
    return step.trace(state, batch).lower(lowering_platforms=(PLATFORM,))


def inference_lowered(config, per_chip_batch: int, devices, input_size: int | None = None):
    """The fused inference program (poses, scores and flags only) on square images of side
    `input_size` (default config.test.input_size), `per_chip_batch` on each of `devices`."""
    config = for_tpu(config)
    size = input_size or config.test.input_size
    mesh = device_mesh.make_mesh(devices)
    model = config_utils.build_model(config, dtype=config_utils.inference_dtype(config))
    dummy = np.zeros((1, size, size, 3), np.float32)
    shapes = jax.eval_shape(
        lambda key: model.init(key, dummy, method=model.initialize), jax.random.key(0)
    )
    replicated = NamedSharding(mesh, PartitionSpec())
    variables = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
        jax.eval_shape(lambda v: pipeline.inference_variables(v, model.dtype), shapes),
    )
    images = jax.ShapeDtypeStruct(
        (per_chip_batch * len(devices), size, size, 3),
        np.float32,
        sharding=NamedSharding(mesh, PartitionSpec(device_mesh.DATA_AXIS)),
    )
    predict = pipeline.make_predict_fn(
        model, config_utils.decode_settings(config), inspect=False, platform=PLATFORM
    )
    return predict.trace(variables, images).lower(lowering_platforms=(PLATFORM,))
