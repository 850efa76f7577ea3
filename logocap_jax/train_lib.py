"""The training loop: sharded train step, optimiser schedule, checkpoints, evaluation, metrics.

One program from a single CPU to a TPU pod: the global batch is sharded over the `data` axis of a
device mesh, parameters are replicated, and BatchNorm statistics are global-batch statistics by
construction under jit. Each process feeds its own shard of every global batch.
"""

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import tqdm
from flax import traverse_util
from flax.training import train_state
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from logocap_jax import (
    checkpoints,
    config_utils,
    convert,
    evaluate,
    losses,
    predict,
    train_forward,
    training_io,
)
from logocap_jax.data import coco_records, input_pipeline, tfds_builders


class TrainState(train_state.TrainState):
    """Optimiser state plus the BatchNorm running statistics."""

    batch_stats: Any


def learning_rate_schedule(train_config, steps_per_epoch: int):
    """Piecewise-constant learning rate: x lr_drop_factor at each of lr_drop_epochs."""
    boundaries = {
        int(epoch * steps_per_epoch): train_config.lr_drop_factor
        for epoch in train_config.lr_drop_epochs
    }
    return optax.piecewise_constant_schedule(train_config.learning_rate, boundaries)


def create_optimizer(train_config, steps_per_epoch: int):
    """Adam (0.9, 0.999, eps 1e-8) without weight decay, as the official training.

    With train_config.trainable_modules, only those top-level modules' parameters train; the
    others stay as they are (`optax.multi_transform`: zero updates, no Adam moments).
    """
    adam = optax.adam(learning_rate_schedule(train_config, steps_per_epoch))
    modules = tuple(train_config.trainable_modules)
    if not modules:
        return adam
    labels = functools.partial(trainable_labels, modules=modules)
    return optax.multi_transform({"train": adam, "frozen": optax.set_to_zero()}, labels)


def trainable_labels(params, modules) -> dict:
    """'train' for every parameter of the top-level `modules`, 'frozen' for the others."""
    unknown = sorted(set(modules) - set(params))
    if unknown:
        raise ValueError(
            f"train.trainable_modules {unknown} are not modules with parameters: {sorted(params)}"
        )
    return traverse_util.path_aware_map(
        lambda path, _: "train" if path[0] in modules else "frozen", params
    )


def make_mesh(devices=None) -> Mesh:
    """A one-axis ('data') mesh over all devices of all processes."""
    return Mesh(np.asarray(devices if devices is not None else jax.devices()), ("data",))


def create_train_state(model, tx, rng, input_size: int, mesh: Mesh) -> TrainState:
    """Initialises the model and optimiser directly into replicated arrays on the mesh."""

    def init(key):
        images = jnp.zeros((1, input_size, input_size, 3), jnp.float32)
        variables = model.init(key, images, method=model.initialize)
        return TrainState.create(
            apply_fn=model.apply,
            params=variables["params"],
            tx=tx,
            batch_stats=variables["batch_stats"],
        )

    replicated = NamedSharding(mesh, PartitionSpec())
    shardings = jax.tree_util.tree_map(lambda _: replicated, jax.eval_shape(init, rng))
    return jax.jit(init, out_shardings=shardings)(rng)


def loss_and_gradients(state: TrainState, batch, *, model, settings, loss_weights):
    """Loss terms and their gradient with respect to the parameters.

    Returns:
      (terms, gradients, new batch_stats, number of selected training instances).
    """

    def loss_fn(params):
        variables = {"params": params, "batch_stats": state.batch_stats}
        outputs, batch_stats = train_forward.training_outputs(
            model, variables, batch, settings=settings
        )
        terms = losses.training_losses(outputs, batch, weights=loss_weights)
        return terms["total"], (terms, batch_stats, outputs.selected.sum())

    (_, (terms, batch_stats, selected)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params
    )
    return terms, grads, batch_stats, selected


def train_step(state: TrainState, batch, *, model, settings, loss_weights):
    """One optimisation step on a (sharded) global batch.

    Args:
      state: the train state.
      batch: images [B, H, W, 3], the map targets and the padded OKS ground truth (see
        `train_forward.training_outputs` and `losses.training_losses`).

    Returns:
      (new state, metrics): the loss terms, the number of selected training instances and the
      gradient norm.
    """
    terms, grads, batch_stats, selected = loss_and_gradients(
        state, batch, model=model, settings=settings, loss_weights=loss_weights
    )
    new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    metrics = dict(terms, selected_instances=selected, grad_norm=optax.global_norm(grads))
    return new_state, metrics


def make_train_step(model, settings, loss_weights, mesh: Mesh, state: TrainState):
    """`train_step` jitted with a replicated state (donated) and a data-sharded batch."""
    replicated = NamedSharding(mesh, PartitionSpec())
    state_shardings = jax.tree_util.tree_map(lambda x: x.sharding, state)
    step = functools.partial(train_step, model=model, settings=settings, loss_weights=loss_weights)
    return jax.jit(step, out_shardings=(state_shardings, replicated), donate_argnums=(0,))


def shard_batch(local_batch: dict, mesh: Mesh) -> dict:
    """Global arrays from this process's slice of the batch (its local rows)."""
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    return {
        key: jax.make_array_from_process_local_data(sharding, np.asarray(value))
        for key, value in local_batch.items()
    }


def model_variables(state: TrainState) -> dict:
    """{'params', 'batch_stats'} of a train state, for inference or export."""
    return {"params": state.params, "batch_stats": state.batch_stats}


def host_copy(tree):
    """This process's numpy copy of replicated arrays (also on several hosts, where replicated
    global arrays are not fully addressable)."""
    return jax.tree_util.tree_map(lambda x: np.asarray(x.addressable_data(0)), tree)


def loss_weights_from(config) -> losses.LossWeights:
    return losses.LossWeights(**config.train.loss_weights.to_dict())


def train_settings_from(config) -> train_forward.TrainSettings:
    return train_forward.TrainSettings(
        num_centers=config.decode.num_centers,
        max_instances=config.train.max_instances,
        instance_budget=config.train.instance_budget,
        logo_ca=config_utils.logo_ca_settings(config),
    )


def compute_dtype(config):
    return config_utils.dtype_named(config.train.compute_dtype)


def open_train_source(data_config):
    """The training split as a random-access source, building the TFDS data set if needed.

    Small CPU runs: a non-empty data_config.image_ids keeps only those images (found by
    reading every record), and max_examples > 0 only the first examples.

    Raises:
      ValueError: an image id of data_config.image_ids is not in the split.
    """
    data_dir = os.path.expanduser(data_config.data_dir)
    name = data_config.dataset
    if name in tfds_builders.MINI_DATASETS:
        tfds_builders.build_mini(name, data_dir)
        name = f"coco_format/{name}"
    elif name.startswith("coco_person_keypoints/"):
        tfds_builders.build_named(
            tfds_builders.CocoPersonKeypoints,
            data_dir,
            data_config.manual_dir,
            configs=[data_config.split],
        )
    source = tfds_builders.data_source(name, data_config.split, data_dir)
    if data_config.image_ids:
        source = coco_records.select_images(
            (source[i] for i in range(len(source))),
            data_config.image_ids,
            missing_message=f"data.image_ids not in {data_config.dataset} {data_config.split}",
        )
    if data_config.max_examples > 0:
        return [source[i] for i in range(min(data_config.max_examples, len(source)))]
    return source


def make_dataset(config, source):
    data = config.data
    augmentation = input_pipeline.Augmentation(
        max_rotation=data.max_rotation,
        min_scale=data.min_scale,
        max_scale=data.max_scale,
        max_translate=data.max_translate,
        flip_prob=data.flip_prob,
    )
    return input_pipeline.make_train_dataset(
        source,
        batch_size=config.train.global_batch_size,
        seed=config.train.seed,
        input_size=data.input_size,
        output_size=data.output_size,
        max_people=data.max_people,
        augmentation=augmentation,
        worker_count=data.worker_count,
    )


def _load_imagenet(state: TrainState, path: str) -> TrainState:
    variables, loaded, _ = convert.load_imagenet_backbone(
        host_copy(model_variables(state)), convert.load_state_dict(path)
    )
    print(f"ImageNet backbone: {len(loaded)} tensors from {path}")
    variables = jax.device_put(
        variables, jax.tree_util.tree_map(lambda x: x.sharding, model_variables(state))
    )
    return state.replace(params=variables["params"], batch_stats=variables["batch_stats"])


def _load_init_checkpoint(state: TrainState, train_config) -> TrainState:
    variables = checkpoints.restore_modules(
        train_config.init_checkpoint,
        host_copy(model_variables(state)),
        exclude=tuple(train_config.init_exclude),
    )
    print(
        f"Initial weights from {train_config.init_checkpoint}, except {train_config.init_exclude}"
    )
    variables = jax.device_put(
        variables, jax.tree_util.tree_map(lambda x: x.sharding, model_variables(state))
    )
    return state.replace(params=variables["params"], batch_stats=variables["batch_stats"])


def _evaluate(config, predictor, state: TrainState) -> dict:
    # Every process evaluates its own copy (the best-checkpoint save is collective).
    result = evaluate.run_evaluation(
        predictor.with_variables(host_copy(model_variables(state))),
        config.eval.annotations,
        config.eval.images,
        max_images=config.eval.max_images,
        image_ids=config.eval.image_ids,
        progress=False,
    )
    return result.stats


def train_and_evaluate(config, workdir: str) -> TrainState:
    """Trains with `config` in `workdir`, resuming from its latest checkpoint if there is one.

    Writes metrics.jsonl, checkpoints/ (latest keep-N, with the data iterator state) and best/
    (model variables of the best evaluation AP).
    """
    os.makedirs(workdir, exist_ok=True)
    mesh = make_mesh()
    source = open_train_source(config.data)
    steps_per_epoch = max(1, len(source) // config.train.global_batch_size)
    num_steps = (
        config.train.num_steps
        if config.train.num_steps > 0
        else config.train.num_epochs * steps_per_epoch
    )
    model = config_utils.build_model(config, dtype=compute_dtype(config))
    tx = create_optimizer(config.train, steps_per_epoch)
    state = create_train_state(
        model, tx, jax.random.key(config.train.seed), config.data.input_size, mesh
    )
    iterator = iter(make_dataset(config, source))
    latest, best = training_io.checkpoint_managers(workdir, config)
    if latest.latest_step() is not None:
        state = training_io.restore_checkpoint(latest, state, iterator)
    elif config.train.init_checkpoint:
        state = _load_init_checkpoint(state, config.train)
    elif config.train.imagenet_checkpoint:
        state = _load_imagenet(state, config.train.imagenet_checkpoint)
    step_fn = make_train_step(
        model, train_settings_from(config), loss_weights_from(config), mesh, state
    )
    predictor = predict.Predictor.from_config(
        config, host_copy(model_variables(state)), batch_size=config.eval.batch_size
    )
    writer, preempted = training_io.MetricsWriter(workdir), training_io.PreemptionFlag()
    schedule = learning_rate_schedule(config.train, steps_per_epoch)
    first = int(state.step)
    last_saved = first if first else None
    if first == 0 and config.train.eval_every_steps > 0:
        writer.write(0, "eval", _evaluate(config, predictor, state) or {})
    progress = tqdm.tqdm(
        range(first, num_steps),
        initial=first,
        total=num_steps,
        unit="step",
        disable=jax.process_index() != 0,
    )
    replaced = 0  # Unusable records the pipeline replaced (this process) since the last log.
    for step in progress:
        local = next(iterator)
        local.pop("image_id", None)
        replaced += int(np.sum(local.pop("replaced", 0)))
        state, metrics = step_fn(state, shard_batch(local, mesh))
        metrics = jax.device_get(metrics)
        training_io.check_finite(metrics, step + 1, workdir, last_saved)
        done = step + 1 == num_steps or preempted.raised
        if (step + 1) % config.train.log_every_steps == 0 or done:
            writer.write(
                step + 1,
                "train",
                dict(metrics, learning_rate=schedule(step), replaced_records=replaced),
            )
            replaced = 0
            progress.set_postfix(loss=f"{metrics['total']:.4g}")
        if (
            (step + 1) % config.train.checkpoint_every_steps == 0
            or done
            or latest.reached_preemption(step + 1)
        ):
            training_io.save_checkpoint(latest, step + 1, state, iterator)
            last_saved = step + 1
        if config.train.eval_every_steps > 0 and (
            (step + 1) % config.train.eval_every_steps == 0 or step + 1 == num_steps
        ):
            stats = _evaluate(config, predictor, state)
            if stats is not None:
                writer.write(step + 1, "eval", stats)
                best.save(
                    step + 1, args=ocp.args.StandardSave(model_variables(state)), metrics=stats
                )
        if preempted.raised:
            print(f"Stopped by a signal after step {step + 1}; checkpoint saved, rerun to resume.")
            break
    latest.wait_until_finished()
    best.wait_until_finished()
    return state
