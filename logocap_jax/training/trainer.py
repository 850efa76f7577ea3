"""The training loop: sharded train step, optimiser schedule, checkpoints, evaluation, metrics.

One program from a single CPU to a TPU pod: the global batch is sharded over the `data` axis of a
device mesh, parameters are replicated, and BatchNorm statistics are global-batch statistics by
construction under jit. Each process feeds its own shard of every global batch, reads metrics
from the device only when it logs, checkpoints or evaluates, and evaluates its share of the
evaluation images.
"""

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import traverse_util
from flax.training import train_state
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from logocap_jax import compile_options, config_utils, device_mesh, errors
from logocap_jax import progress as progress_lib
from logocap_jax.data import coco_records, input_pipeline, record_source, tfds_builders
from logocap_jax.evaluation import evaluate
from logocap_jax.inference import predict
from logocap_jax.training import forward, losses, run_io, training_log
from logocap_jax.weights import checkpoints, convert


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
    """train_config.optimizer on the learning-rate schedule: 'adam' (0.9, 0.999, eps 1e-8, no
    weight decay: the official training) or 'sgd' (with train_config.momentum).

    With train_config.trainable_modules, only those top-level modules' parameters train; the
    others stay as they are (`optax.multi_transform`: zero updates, no optimiser state).

    Raises:
      ConfigError: train.optimizer is neither 'adam' nor 'sgd'.
    """
    schedule = learning_rate_schedule(train_config, steps_per_epoch)
    if train_config.optimizer == "adam":
        optimizer = optax.adam(schedule)
    elif train_config.optimizer == "sgd":
        optimizer = optax.sgd(schedule, momentum=train_config.momentum or None)
    else:
        raise errors.ConfigError(
            f"train.optimizer must be 'adam' or 'sgd', got {train_config.optimizer!r}"
        )
    modules = tuple(train_config.trainable_modules)
    if not modules:
        return optimizer
    labels = functools.partial(trainable_labels, modules=modules)
    return optax.multi_transform({"train": optimizer, "frozen": optax.set_to_zero()}, labels)


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


def check_batch_layout(global_batch_size: int) -> None:
    """Raises ConfigError unless every device of this run gets an equal slice of the global
    batch (also when a run resumes on another number of processes or devices)."""
    devices, processes = jax.device_count(), jax.process_count()
    if global_batch_size % devices:
        raise errors.ConfigError(
            f"train.global_batch_size={global_batch_size} is not a multiple of the {devices} "
            f"devices of this run ({processes} processes): each device takes an equal slice; "
            "choose a multiple, or run on a device count that divides it"
        )


def _state_init(model, tx, input_size: int):
    def init(key):
        images = jnp.zeros((1, input_size, input_size, 3), jnp.float32)
        variables = model.init(key, images, method=model.initialize)
        return TrainState.create(
            apply_fn=model.apply,
            params=variables["params"],
            tx=tx,
            batch_stats=variables["batch_stats"],
        )

    return init


def abstract_train_state(model, tx, input_size: int, mesh: Mesh) -> TrainState:
    """The train state's shapes, dtypes and (replicated) shardings, computing nothing: the
    target of a checkpoint restore."""
    replicated = NamedSharding(mesh, PartitionSpec())
    shapes = jax.eval_shape(_state_init(model, tx, input_size), jax.random.key(0))
    return jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), shapes
    )


def create_train_state(model, tx, rng, input_size: int, mesh: Mesh) -> TrainState:
    """Initialises the model and optimiser directly into replicated arrays on the mesh."""
    init = _state_init(model, tx, input_size)
    replicated = NamedSharding(mesh, PartitionSpec())
    shardings = jax.tree_util.tree_map(lambda _: replicated, jax.eval_shape(init, rng))
    return compile_options.jit(init, run_once=True, out_shardings=shardings)(rng)


def loss_and_gradients(state: TrainState, batch, *, model, settings, loss_weights):
    """Loss terms and their gradient with respect to the parameters.

    Returns:
      (terms, gradients, new batch_stats, number of selected training instances).
    """

    def loss_fn(params):
        variables = {"params": params, "batch_stats": state.batch_stats}
        outputs, batch_stats = forward.training_outputs(model, variables, batch, settings=settings)
        # Named scopes mark the stages in the compiled program (logocap_jax.planning).
        with jax.named_scope("losses"):
            terms = losses.training_losses(outputs, batch, weights=loss_weights)
        return terms["total"], (terms, batch_stats, outputs.selected.sum())

    (_, (terms, batch_stats, selected)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params
    )
    return terms, grads, batch_stats, selected


def train_step(state: TrainState, batch, *, model, settings, loss_weights, schedule=None):
    """One optimisation step on a (sharded) global batch.

    Args:
      state: the train state.
      batch: images [B, H, W, 3], the map targets and the padded OKS ground truth (see
        `forward.training_outputs` and `losses.training_losses`).
      schedule: optional learning-rate schedule; its rate for this step joins the metrics.

    Returns:
      (new state, metrics): the loss terms, the number of selected training instances, the
      gradient norm (and the learning rate).
    """
    terms, grads, batch_stats, selected = loss_and_gradients(
        state, batch, model=model, settings=settings, loss_weights=loss_weights
    )
    with jax.named_scope("optimizer"):
        new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    metrics = dict(terms, selected_instances=selected, grad_norm=optax.global_norm(grads))
    if schedule is not None:
        metrics["learning_rate"] = schedule(state.step)
    return new_state, metrics


def make_train_step(model, settings, loss_weights, mesh: Mesh, state: TrainState, schedule=None):
    """`train_step` jitted with a replicated state (donated) and a data-sharded batch."""
    replicated = NamedSharding(mesh, PartitionSpec())
    state_shardings = jax.tree_util.tree_map(lambda x: x.sharding, state)
    step = functools.partial(
        train_step, model=model, settings=settings, loss_weights=loss_weights, schedule=schedule
    )
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
    return jax.device_get(jax.tree_util.tree_map(lambda x: x.addressable_data(0), tree))


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
        _in_turn(lambda: tfds_builders.build_mini(name, data_dir))
        name = f"coco_format/{name}"
    elif name.startswith("coco_person_keypoints/"):
        _in_turn(
            lambda: tfds_builders.build_named(
                tfds_builders.CocoPersonKeypoints,
                data_dir,
                data_config.manual_dir,
                configs=[data_config.split],
            )
        )
    source = record_source.data_source(name, data_config.split, data_dir)
    if data_config.image_ids:
        source = coco_records.select_images(
            (source[i] for i in range(len(source))),
            data_config.image_ids,
            missing_message=f"data.image_ids not in {data_config.dataset} {data_config.split}",
        )
    if data_config.max_examples > 0:
        return [source[i] for i in range(min(data_config.max_examples, len(source)))]
    return source


def _in_turn(function):
    """Runs `function` in one process after the other (process 0 first).

    Data sets are built on first use: on a shared file system the first process builds and the
    others find it built; on per-host disks each host builds its copy, never two processes at
    once into the same directory.
    """
    for index in range(jax.process_count()):
        if index == jax.process_index():
            function()
        run_io.wait_for_all_processes(f"data_set_built_by_{index}")


def make_dataset(config, source, start_index: int = 0):
    """The training stream of `config` over `source`, from stream position `start_index`."""
    data = config.data
    return input_pipeline.make_train_dataset(
        source,
        batch_size=config.train.global_batch_size,
        seed=config.train.seed,
        input_size=data.input_size,
        output_size=data.output_size,
        max_people=data.max_people,
        augmentation=config_utils.augmentation(config),
        worker_count=data.worker_count,
        start_index=start_index,
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


def _evaluate(config, predictor, state: TrainState) -> evaluate.EvaluationResult:
    # Every process predicts its share of the images (evaluate.run_evaluation) and gets the
    # same stats, so the best-checkpoint save, which is collective, is decided the same way.
    # Only process 0's drawings are logged.
    return evaluate.run_evaluation(
        predictor.with_variables(host_copy(model_variables(state))),
        config.eval.annotations,
        config.eval.images,
        max_images=config.eval.max_images,
        image_ids=config.eval.image_ids,
        progress=False,
        draw_images=config.eval.logged_images if jax.process_index() == 0 else 0,
    )


def train_and_evaluate(config, workdir: str, *, progress: bool = True) -> TrainState:
    """Trains with `config` in `workdir`, resuming from its latest checkpoint if there is one.

    Writes (process 0) metrics.jsonl (train rows average the steps since the previous row),
    TensorBoard event files in tensorboard/ and, with train.wandb_project, a W&B run
    (`training_log`); (all processes) checkpoints/ (latest keep-N, with the input position),
    best/ (model variables of the best evaluation AP) and, with train.log_image_ids,
    image_ids/ (the images each process fed). Run by every process of a multi-host job; any
    process count resumes any checkpoint. `progress` shows the steps on process 0
    (`logocap_jax.progress`: a bar on a terminal, else a line per log step).

    SIGTERM to any process (a preemption notice) or Ctrl-C makes every process checkpoint
    after the same step and return; the signal handlers are restored on return.

    Raises:
      ConfigError: the global batch does not split over this run's devices, or the work
        directory's checkpoint has another global batch size.
      MissingDependencyError: train.wandb_project is set and wandb is not installed.
      FloatingPointError: a loss became NaN or infinite (the message names the steps and the
        last good checkpoint).
    """
    check_batch_layout(config.train.global_batch_size)
    os.makedirs(workdir, exist_ok=True)
    mesh = device_mesh.make_mesh()
    print(
        f"Process {jax.process_index()} of {jax.process_count()}: {jax.local_device_count()} of "
        f"{jax.device_count()} devices"
    )
    source = open_train_source(config.data)
    batch_size = config.train.global_batch_size
    steps_per_epoch = max(1, len(source) // batch_size)
    num_steps = (
        config.train.num_steps
        if config.train.num_steps > 0
        else config.train.num_epochs * steps_per_epoch
    )
    model = config_utils.build_train_model(config)
    tx = create_optimizer(config.train, steps_per_epoch)
    latest = checkpoints.latest_manager(workdir, max_to_keep=config.train.keep_checkpoints)
    best = checkpoints.best_manager(workdir)
    restored_step = latest.latest_step()
    next_example = 0
    if restored_step is not None:
        state, next_example = run_io.restore_checkpoint(
            latest, abstract_train_state(model, tx, config.data.input_size, mesh), batch_size
        )
    else:
        state = create_train_state(
            model, tx, jax.random.key(config.train.seed), config.data.input_size, mesh
        )
        if config.train.init_checkpoint:
            state = _load_init_checkpoint(state, config.train)
        elif config.train.imagenet_checkpoint:
            state = _load_imagenet(state, config.train.imagenet_checkpoint)
    step_fn = make_train_step(
        model,
        config_utils.train_settings(config),
        config_utils.loss_weights(config),
        mesh,
        state,
        learning_rate_schedule(config.train, steps_per_epoch),
    )
    log = training_log.TrainingLog(workdir, config, last_step=restored_step)
    try:
        loop = _Loop(
            config,
            workdir,
            mesh,
            latest=latest,
            best=best,
            iterator=iter(make_dataset(config, source, start_index=next_example)),
            next_example=next_example,
            predictor=predict.Predictor.from_config(
                config, host_copy(model_variables(state)), batch_size=config.eval.batch_size
            ),
            log=log,
        )
        return loop.run(state, step_fn, num_steps, progress=progress)
    finally:
        # Also after an error: the last good checkpoint that the error names is complete.
        latest.wait_until_finished()
        best.wait_until_finished()
        log.close()


class _Loop:
    """The step loop of `train_and_evaluate` and what it writes."""

    def __init__(
        self, config, workdir, mesh, *, latest, best, iterator, next_example, predictor, log
    ):
        self.config, self.mesh = config, mesh
        self.latest, self.best = latest, best
        self.iterator, self.next_example = iterator, next_example
        self.predictor = predictor
        self.training_log = log
        self.image_ids = run_io.ImageIdLog(workdir, config.train.log_image_ids)
        self.metrics = run_io.StepMetrics(workdir)
        self.last_saved = None
        self.replaced = 0  # Unusable records the pipeline replaced (this process) since the log.

    def run(self, state: TrainState, step_fn, num_steps: int, *, progress: bool) -> TrainState:
        train = self.config.train
        first = int(jax.device_get(state.step))
        self.last_saved = first if first else None
        if first == 0 and train.eval_every_steps > 0:
            self.evaluate(state, 0)
        throughput = run_io.Throughput(train.global_batch_size)
        steps = progress_lib.Progress(
            range(first + 1, num_steps + 1),
            total=num_steps,
            initial=first,
            unit="step",
            desc="train",
            every=train.log_every_steps,
            enabled=progress and jax.process_index() == 0,
        )
        with steps, run_io.StopSignals() as stop_signals:
            for step in steps:
                with throughput.waiting_for_input():
                    local = next(self.iterator)
                self.image_ids.write(step, local.pop("image_id", ()))
                self.replaced += int(np.sum(local.pop("replaced", 0)))
                batch = shard_batch(local, self.mesh)
                if step == first + 1:
                    with throughput.excluded():
                        step_fn = run_io.compile_together(step_fn, state, batch)
                state, step_metrics = step_fn(state, batch)
                throughput.step_done()
                self.next_example += train.global_batch_size
                self.metrics.add(step, step_metrics)
                # Agreed by all processes; asked after every step, counting from 1.
                stopping = stop_signals.reached(step - first)
                done = step == num_steps or stopping
                log = step % train.log_every_steps == 0 or done
                save = step % train.checkpoint_every_steps == 0 or done
                evaluate_now = (
                    train.eval_every_steps > 0
                    and not stopping
                    and (step % train.eval_every_steps == 0 or step == num_steps)
                )
                if log or save or evaluate_now:
                    # The only wait for the device; it checks the losses before a save.
                    self.metrics.fetch(self.last_saved)
                if log:
                    values = dict(self.metrics.mean(), **throughput.summary())
                    self.training_log.write(
                        step, "train", dict(values, replaced_records=self.replaced)
                    )
                    self.replaced = 0
                    steps.set_postfix(
                        loss=values["total"], **{"examples/s": values["examples_per_second"]}
                    )
                if save:
                    run_io.save_checkpoint(
                        self.latest, step, state, self.next_example, train.global_batch_size
                    )
                    self.last_saved = step
                if evaluate_now:
                    with throughput.excluded():
                        self.evaluate(state, step)
                if stopping:
                    print(
                        f"Stopped by a signal after step {step}; checkpoint saved, rerun to resume."
                    )
                    break
        return state

    def evaluate(self, state: TrainState, step: int):
        """Evaluates `state` (every process its share) and writes the stats and drawings; after
        step 0 the model also goes to best/ (saved by all processes, with the same stats)."""
        result = _evaluate(self.config, self.predictor, state)
        if result.stats is None:
            return
        self.training_log.write(step, "eval", result.stats, images=result.drawings)
        if step > 0:
            self.best.save(
                step, args=ocp.args.StandardSave(model_variables(state)), metrics=result.stats
            )
