"""The ablation runner: trains, evaluates and compares CMP variants under one recipe (the
ablate command, docs/cmp_variants.md).

Every variant trains with `trainer.train_and_evaluate` in <workdir>/<label> from the same config:
the same seed and batches, and the same initialisation of the backbone and heads (Flax derives
each parameter's initialisation from the seed and its module path, and only the CMP's modules
differ). A variant other than the config's starts from its own default options; a variant's own
overrides (`<field>=<value>`) apply after the runner's options.

After each variant the runner writes <workdir>/ablation.json, ablation.md and ablation.png: per
variant the CMP's parameter count, its FLOPs on one image's candidate slots (XLA cost analysis),
the CPU time of the local KAMs stage at those slots, the final loss terms, AP and AP50 at each
evaluation, and a plot of the loss and AP against the step (`training.curves`).

Resumable: rerunning skips finished variants and resumes an interrupted one from its latest
checkpoint (a SIGTERM or Ctrl-C checkpoints the variant in training and stops the runner).
"""

import copy
import functools
import json
import os
import re
import signal
import statistics
import time

import jax
import numpy as np

from logocap_jax import config_utils, errors
from logocap_jax.evaluation import evaluate
from logocap_jax.inference import pipeline, predict
from logocap_jax.models import LogoCap, cmp_variants
from logocap_jax.training import ablation_report, curves, trainer, training_log
from logocap_jax.weights import checkpoints

CMP_MODULE = "joints_mlp"
LABEL_PATTERN = re.compile(r"[A-Za-z0-9_.-]+")


def parse_variants(entries) -> list[tuple[str, str]]:
    """[(label, variant name)] of --variants entries NAME or LABEL=NAME; labels are unique."""
    variants = []
    for entry in entries:
        label, _, name = entry.rpartition("=")
        label = label or name
        if not LABEL_PATTERN.fullmatch(label) or not name:
            raise ValueError(
                f"Bad --variants entry {entry!r}: NAME or LABEL=NAME ({LABEL_PATTERN})"
            )
        variants.append((label, name))
    labels = [label for label, _ in variants]
    if len(set(labels)) != len(labels):
        raise ValueError(f"Repeated labels in --variants {labels}: use LABEL=NAME")
    return variants


def parse_overrides(entries, labels) -> dict[str, list[str]]:
    """{label: ["<field>=<value>", ...]} of entries LABEL:FIELD=VALUE (the values are parsed
    later, by `variant_config`, with the type of the field)."""
    overrides = {label: [] for label in labels}
    for entry in entries:
        label, colon, setting = entry.partition(":")
        if not colon or "=" not in setting:
            raise ValueError(f"Bad --set {entry!r}: expected LABEL:FIELD=VALUE")
        if label not in overrides:
            raise ValueError(f"--set {entry!r} names no variant of --variants {list(labels)}")
        overrides[label].append(setting)
    return overrides


def variant_config(base, name: str, overrides, *, steps: int, init_checkpoint: str, cmp_only):
    """The config of one variant: the base config, the variant, the runner's options, then the
    variant's `<field>=<value>` overrides; its CMP options are checked.

    Raises:
      ValueError: a CMP option the variant does not have.
      ConfigError: another field the config does not have, or a value its field rejects.
    """
    config = copy.deepcopy(base)
    if name != base.model.cmp_variant:
        config.model.cmp_options = {}
    config.model.cmp_variant = name
    config.train.num_steps = steps
    if init_checkpoint:
        config.train.init_checkpoint = init_checkpoint
        config.train.init_exclude = (CMP_MODULE,)
    if cmp_only:
        config.train.trainable_modules = (CMP_MODULE,)
    # An option the config does not set yet is added with its default, so the override's value
    # is parsed with the option's type.
    prefix, defaults = "model.cmp_options.", cmp_variants.default_options(name)
    options = config.model.cmp_options
    added = [o.partition("=")[0][len(prefix) :] for o in overrides if o.startswith(prefix)]
    try:
        cmp_variants.check_options(name, {**options, **dict.fromkeys(added)})
    except ValueError as error:
        raise errors.ConfigError(str(error)) from None
    with options.unlocked():
        for option in added:
            if option not in options:
                options[option] = defaults[option]
    return config_utils.override(config, overrides)


def _comparable(config) -> dict:
    """The config as JSON data, without train.num_steps (extending a run is a resume)."""
    data = json.loads(config.to_json())
    data["train"].pop("num_steps")
    return data


def _flat(data, prefix=()) -> dict:
    """{'a.b': value} of nested dicts."""
    if not isinstance(data, dict):
        return {".".join(prefix): data}
    return {k: v for key, value in data.items() for k, v in _flat(value, prefix + (key,)).items()}


def check_same_config(config, workdir: str) -> None:
    """Records the variant's config in its work directory, or checks it against the record.

    Raises:
      ValueError: the work directory was trained with another config (differing fields named).
    """
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        os.makedirs(workdir, exist_ok=True)
        with open(path, "w") as f:
            f.write(config.to_json(indent=2))
        return
    with open(path) as f:
        recorded = json.load(f)
    recorded["train"].pop("num_steps", None)
    ours, theirs = _flat(_comparable(config)), _flat(recorded)
    differ = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
    if differ:
        raise ValueError(
            f"{workdir} was trained with another config (fields {differ}); use another "
            "--workdir or label"
        )


def checkpoint_step(workdir: str) -> int:
    """The latest training checkpoint's step in a work directory, 0 if none."""
    return max(checkpoints.training_steps(workdir), default=0)


def train_variant(config, workdir: str) -> None:
    """`trainer.train_and_evaluate`, with the signal handlers it installs removed afterwards.

    Raises:
      KeyboardInterrupt: a signal stopped the training (its checkpoint is saved).
    """
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        trainer.train_and_evaluate(config, workdir)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    if checkpoint_step(workdir) < config.train.num_steps:
        raise KeyboardInterrupt(f"stopped at step {checkpoint_step(workdir)} of {workdir}")


def evaluate_checkpoint(config, workdir: str, step: int) -> None:
    """Evaluates the training checkpoint of `step` and logs it with its drawings, as the
    training loop does (for a run interrupted between its last checkpoint and its last
    evaluation)."""
    state, _ = checkpoints.read_training_checkpoint(workdir, step)
    variables = {name: state[name] for name in checkpoints.MODEL_COLLECTIONS}
    predictor = predict.Predictor.from_config(config, variables, batch_size=config.eval.batch_size)
    result = evaluate.run_evaluation(
        predictor,
        config.eval.annotations,
        config.eval.images,
        max_images=config.eval.max_images,
        image_ids=config.eval.image_ids,
        progress=False,
        draw_images=config.eval.logged_images,
    )
    if result.stats is not None:
        log = training_log.TrainingLog(workdir, config, last_step=step)
        try:
            log.write(step, "eval", result.stats, images=result.drawings)
        finally:
            log.close()


def measure_cost(config, repeats: int) -> dict:
    """The CMP's parameters and FLOPs, and the CPU time of the local KAMs stage, on one image's
    candidate slots (float32, eval mode).

    FLOPs come from XLA's cost analysis of the compiled CMP at [N, S, S, K*C]; the time is the
    median of `repeats` runs of `pipeline.local_kams` (embedding sampling, CMP, clamp) on
    random embeddings and meshes.
    """
    model = config_utils.build_model(config)
    settings = config_utils.decode_settings(config)
    side = 2 * settings.logo_ca.local_half_size + 1
    slots, joints = settings.num_centers, config.model.num_joints
    channels = joints * config.model.embedding_dim
    cpu = jax.devices("cpu")[0]
    with jax.default_device(cpu):
        keys = jax.random.split(jax.random.key(0), 4)
        features = jax.random.normal(keys[0], (slots, side, side, channels))
        variables = jax.jit(
            functools.partial(model.init, method=LogoCap.attraction_maps, train=False)
        )(keys[1], features)
        params = variables.get("params", {})
        cmp_fn = functools.partial(model.apply, train=False, method=LogoCap.attraction_maps)
        analysis = jax.jit(cmp_fn).lower(variables, features).compile().cost_analysis()
        if isinstance(analysis, list | tuple):
            analysis = analysis[0]
        grid = config.test.input_size // 4
        embeddings = jax.random.normal(keys[2], (1, grid, grid, config.model.embedding_dim))
        mesh = jax.random.uniform(keys[3], (1, slots, side, side, joints, 2)) * (4 * grid - 1)
        network = pipeline.NetworkOutputs(None, None, embeddings)
        candidates = pipeline.Candidates(None, None, mesh)
        stage = jax.jit(functools.partial(pipeline.local_kams, model, settings=settings))
        jax.block_until_ready(stage(variables, network, candidates))
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            jax.block_until_ready(stage(variables, network, candidates))
            times.append(time.perf_counter() - start)
    return {
        "cmp_parameters": int(sum(np.size(x) for x in jax.tree_util.tree_leaves(params))),
        # XLA omits the entry for a program without floating-point operations.
        "cmp_flops": float(analysis.get("flops", 0.0)),
        "local_kams_ms": 1e3 * statistics.median(times),
        "slots": slots,
        "window": side,
        "cpu_cores": os.cpu_count(),
    }


def variant_record(label: str, name: str, overrides, config, workdir: str, cost: dict) -> dict:
    """What the report shows of one variant."""
    metrics = curves.read_metrics(workdir)
    train = [
        {"step": step, **{k: row[k] for k in curves.LOSS_TERMS}}
        for step, row in sorted(metrics["train"].items())
    ]
    evaluations = [
        {"step": step, "AP": 100 * row["AP"], "AP50": 100 * row["AP50"]}
        for step, row in sorted(metrics["eval"].items())
    ]
    options = {**cmp_variants.default_options(name), **config.model.cmp_options.to_dict()}
    return {
        "label": label,
        "variant": name,
        "options": options,
        "options_set": config.model.cmp_options.to_dict(),
        "overrides": list(overrides),
        "workdir": workdir,
        **cost,
        "final_step": train[-1]["step"] if train else 0,
        "final_loss": {k: train[-1][k] for k in curves.LOSS_TERMS} if train else None,
        "train": train,
        "evaluations": evaluations,
    }


def run(
    base,
    variants,
    overrides,
    *,
    steps,
    workdir,
    init_checkpoint="",
    cmp_only=False,
    timing_repeats=20,
    config_path="",
) -> dict:
    """Trains, evaluates and measures every variant in turn, rewriting the report after each.

    Args:
      base: the config (with the command line's global overrides).
      variants: [(label, variant name)].
      overrides: {label: ["<field>=<value>", ...]}.
      steps: training steps per variant; 0 measures costs only.
      workdir: the runner's directory; each variant works in workdir/label.
      init_checkpoint: model variables every variant starts from (the CMP excluded).
      cmp_only: train only the CMP.
      timing_repeats: timed runs of the local KAMs stage.
      config_path: the config file, for the report.

    Returns:
      The report (what ablation.json holds).
    """
    if cmp_only and not init_checkpoint:
        raise ValueError("cmp_only trains the CMP on loaded weights: give init_checkpoint")
    configs = {
        label: variant_config(
            base,
            name,
            overrides[label],
            steps=steps,
            init_checkpoint=init_checkpoint,
            cmp_only=cmp_only,
        )
        for label, name in variants
    }
    os.makedirs(workdir, exist_ok=True)
    report = {
        "config": config_path,
        "steps": steps,
        "seed": base.train.seed,
        "init_checkpoint": init_checkpoint,
        "cmp_only": cmp_only,
        "devices": jax.device_count(),
        "timing_repeats": timing_repeats,
        "variants": [],
    }
    for label, name in variants:
        config, directory = configs[label], os.path.join(workdir, label)
        check_same_config(config, directory)
        if steps > 0 and checkpoint_step(directory) < steps:
            print(f"[{label}] training {name} from step {checkpoint_step(directory)} to {steps}")
            train_variant(config, directory)
        evaluated = curves.read_metrics(directory)["eval"]
        final, eval_every = checkpoint_step(directory), config.train.eval_every_steps
        if steps > 0 and final == steps and eval_every > 0 and steps not in evaluated:
            print(f"[{label}] evaluating step {steps}")
            evaluate_checkpoint(config, directory, steps)
        cost_path = os.path.join(directory, "cost.json")
        if not os.path.exists(cost_path):
            print(f"[{label}] measuring the CMP's cost")
            with open(cost_path, "w") as f:
                json.dump(measure_cost(config, timing_repeats), f)
        with open(cost_path) as f:
            cost = json.load(f)
        record = variant_record(label, name, overrides[label], config, directory, cost)
        report["variants"].append(record)
        ablation_report.write(report, workdir)
        print(f"[{label}] done: {os.path.join(workdir, 'ablation.md')}")
    return report
