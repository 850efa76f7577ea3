"""Five training steps against the official five (golden tiny_trajectory.npz).

`train_lib.train_step` runs five steps from the official state `tiny_loss_state_dict.npz` with
the training config's optimiser (a fresh Adam at lr 1e-5), on the batch of `tiny_loss.npz`
rebuilt by this project's augmentation and targets. Compared with the official run: the four
loss terms and their total at every step, the training instances selected per image (best OKS
>= 0.5), and after the fifth update every parameter's change and every BatchNorm running
statistic.

One real difference showed up and is fixed at its source: PyTorch moves the BatchNorm running
variance towards the unbiased batch variance, var * n / (n - 1) with n elements per channel,
Flax's BatchNorm towards the biased one. After five steps that left running variances 3.2e-3
relative off (8 x 8 stage-4 branch, n = 128). `models.layers.BatchNorm` (also under the CMP's
BatchNorms and Attentive Norm) now updates as PyTorch does. Adam (eps outside the square root,
bias correction), momentum 0.1 and the order of normalisation and update needed no change.

Noise floors the tolerances are set against: the official code run with 1 thread instead of 2
changes its losses by 3e-8, its parameter changes by more than 1e-6 in 1.3% of the elements and
by up to 2.5e-5, its running variances by up to 1.5e-5 relative (fixture README, section E).
This project's run under one XLA thread instead of two moves by similar amounts: the "1 thread"
numbers below are that run against the official one.
"""

import functools
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import test_augment

from logocap_jax import config_utils, convert, decode, oks, train_lib
from logocap_jax.data import targets
from logocap_jax.models import layers
from logocap_jax.preprocess import normalize

GOLDEN = Path(__file__).parent / "data" / "golden"
ROOT = Path(__file__).parent.parent
STEPS = 5
LEARNING_RATE = 1e-5
GROUND_TRUTH = ("keypoints", "areas", "valid", "transform", "transform_inv", "flip")
TERMS = {
    "heatmaps": "loss.loss.heatmaps",
    "offsets": "loss.loss.offsets",
    "oks": "loss.loss.oks",
    "refined_heatmaps": "loss.loss.hm",
    "total": "loss.total",
}
# Relative tolerance per term. Measured worst over the five steps: against the official run;
# this project's 1-thread run. One step changes the total by 5e-4 relative, the OKS term by 2%.
LOSS_RTOL = {
    "heatmaps": 5e-6,  # 2.1e-7; 7.0e-7
    "offsets": 5e-5,  # 3.6e-6; 6.4e-6
    "oks": 1e-3,  # 1.2e-4; 2.3e-4 (the official noise, 3e-8, is 2.8e-4 of this term)
    "refined_heatmaps": 5e-4,  # 3.4e-5; 9.4e-5
    "total": 2e-5,  # 1.3e-6; 5.1e-6
}
BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def trajectory_config():
    """configs/tiny.py at the fixture's training size (256 / 64) and learning rate."""
    config = config_utils.load_config(str(ROOT / "configs" / "tiny.py"))
    config.data.input_size = test_augment.INPUT_SIZE
    config.data.output_size = test_augment.OUTPUT_SIZE
    config.train.learning_rate = LEARNING_RATE
    return config


def pipeline_batch(golden: dict, config) -> dict:
    """The golden batch rebuilt by the project's augmentation and targets, as the input pipeline
    lays out a batch (the augmentation parameters recovered as in test_augment)."""
    with np.load(GOLDEN / "tiny_forward.npz") as forward:
        raw_images = [forward["image_raw_rgb"], golden["raw_rgb_1"]]
    examples = []
    for sample, image in enumerate(raw_images):
        warped = test_augment.run_sample(golden, raw_images, sample)
        heatmaps, heatmap_weights = targets.heatmap_targets(
            warped["joints"], config.data.output_size, valid_mask=warped["mask"]
        )
        offsets, offset_weights = targets.offset_targets(
            warped["joints"], warped["area"], config.data.output_size
        )
        ground_truth = targets.oks_ground_truth(
            test_augment.make_record(int(golden["image_ids"][sample])),
            test_augment.golden_params(golden, sample, image.shape[:2]),
            warped["transform"],
            input_size=config.data.input_size,
            max_people=config.data.max_people,
        )
        examples.append(
            {
                "images": normalize(warped["image"]),
                "heatmaps": heatmaps,
                "heatmap_weights": heatmap_weights,
                "offsets": offsets,
                "offset_weights": offset_weights,
                **ground_truth,
                "flip": np.asarray(ground_truth["flip"]),
            }
        )
    return {key: np.stack([example[key] for example in examples]) for key in examples[0]}


def _capture(records: dict):
    """An interceptor keeping the network's predictions (no gradient) and the CMP's instances."""

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.module.path == () and context.method_name == "__call__":
            records["predictions"] = jax.lax.stop_gradient(out)
        elif context.module.path == () and context.method_name == "attraction_maps":
            records["selected"] = kwargs["mask"]
        return out

    return interceptor


def run_trajectory() -> dict:
    """Five train steps; per step the metrics, selection, centres and best OKS of every slot."""
    config = trajectory_config()
    with np.load(GOLDEN / "tiny_loss.npz") as data:
        golden = {k: data[k] for k in data.files if not k.startswith(("grad", "bn_after"))}
    batch = pipeline_batch(golden, config)
    model = config_utils.build_model(config)
    before = convert.load_state_dict(str(GOLDEN / "tiny_loss_state_dict.npz"))
    variables = convert.variables_from_state_dict(before, convert.model_template(model))
    settings = train_lib.train_settings_from(config)
    # One step per epoch: the first learning-rate drop (epoch 90) lies far beyond five steps.
    assert train_lib.learning_rate_schedule(config.train, 1)(STEPS) == LEARNING_RATE
    state = train_lib.TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        tx=train_lib.create_optimizer(config.train, 1),
        batch_stats=variables["batch_stats"],
    )

    @jax.jit
    def step(state, batch):
        records = {}
        with nn.intercept_methods(_capture(records)):
            state, metrics = train_lib.train_step(
                state,
                batch,
                model=model,
                settings=settings,
                loss_weights=train_lib.loss_weights_from(config),
            )
        # The candidates the step decoded, from its own predictions, to read their OKS.
        predictions = records["predictions"]
        height, width = batch["images"].shape[1:3]
        heatmaps = decode.upsample(predictions.heatmaps, height, width)
        centers = decode.center_nms(heatmaps[..., -1], settings.num_centers)
        poses = decode.initial_poses(centers, predictions.offsets)
        match, _ = jax.vmap(functools.partial(oks.match_candidates, input_width=width))(
            decode.local_mesh(poses, settings.logo_ca.local_half_size),
            *(batch[k] for k in GROUND_TRUTH),
        )
        decoded = {
            "selected": records["selected"].reshape(centers.shape[:2]),
            "centers": centers,
            "best_oks": match.person.max(axis=(2, 3)),
        }
        return state, metrics, decoded

    steps = []
    for _ in range(STEPS):
        state, metrics, decoded = step(state, batch)
        steps.append(jax.device_get((metrics, decoded)))
    return {
        "metrics": {k: np.array([m[k] for m, _ in steps]) for k in steps[0][0]},
        **{k: np.stack([d[k] for _, d in steps]) for k in steps[0][1]},
        "min_oks": settings.min_oks,
        "before": before,
        "after": convert.state_dict_from_variables(
            jax.device_get(train_lib.model_variables(state))
        ),
    }


@pytest.fixture(scope="module")
def trajectory():
    return run_trajectory()


@pytest.fixture(scope="module")
def official():
    with np.load(GOLDEN / "tiny_trajectory.npz") as data:
        return {k: data[k] for k in data.files}


def official_state(official) -> dict:
    return {k[len("state_after.") :]: v for k, v in official.items() if k.startswith("state_")}


def test_loss_terms_at_every_step(trajectory, official):
    for name, key in TERMS.items():
        ours, want = trajectory["metrics"][name], official[key]
        worst = np.max(np.abs(ours / want - 1))
        np.testing.assert_allclose(
            ours, want, rtol=LOSS_RTOL[name], err_msg=f"{name}: worst relative {worst:.2e}"
        )


def selection_report(trajectory, official, step: int, image: int) -> str:
    """The candidates nearest the OKS threshold at one step, ours against the official ones."""
    best = trajectory["best_oks"][step, image]
    lines = [
        f"step {step} image {image}: selected {trajectory['selected'][step, image].sum()}, "
        f"official {official['selected'][step, image]}; official OKS margin "
        f"{official['oks_margin'][step]:.2e}"
    ]
    for slot in np.argsort(np.abs(best - trajectory["min_oks"]))[:3]:
        lines.append(
            f"  slot {slot}: best OKS {best[slot]:.6f}, centre "
            f"{trajectory['centers'][step, image, slot]} (official "
            f"{official['centers'][step, image, slot]})"
        )
    return "\n".join(lines)


def test_selected_instances_at_every_step(trajectory, official):
    selected = trajectory["selected"]
    # The decoded candidates' OKS reproduces the step's own selection (no slot fell back).
    np.testing.assert_array_equal(trajectory["best_oks"] >= trajectory["min_oks"], selected)
    np.testing.assert_array_equal(
        selected.sum(axis=(1, 2)), trajectory["metrics"]["selected_instances"]
    )
    for step in range(STEPS):
        for image in range(2):
            # Official [6, 5], [7, 5], [6, 5], [5, 5], [5, 5]: measured the same.
            assert selected[step, image].sum() == official["selected"][step, image], (
                selection_report(trajectory, official, step, image)
            )


def test_selection_margins_and_centres_at_every_step(trajectory, official):
    # Smallest |best OKS - 0.5| over all candidates, >= 0.0185 at every step: far from a flip.
    # Measured 2.4e-5 from the official margins at most (1 thread 4.3e-5).
    margins = np.abs(trajectory["best_oks"] - trajectory["min_oks"]).min(axis=(1, 2))
    np.testing.assert_allclose(margins, official["oks_margin"], rtol=0, atol=5e-4)
    # Each decoded centre has an official one at most a pixel away (exactly tied border plateaus,
    # x = 0 / 1 or 254 / 255: fixture README hazard) with the same score; near-tied centres may
    # swap slots. Score differences: measured 9.3e-5 at most (1 thread 3.2e-4; scores <= 0.41).
    ours, want = trajectory["centers"], official["centers"]
    distance = np.abs(ours[..., :, None, :2] - want[..., None, :, :2]).sum(axis=-1)
    score_gap = np.abs(ours[..., :, None, 2] - want[..., None, :, 2])
    matched = np.any((distance <= 1) & (score_gap <= 1e-3), axis=-1)
    assert matched.all(), [(s, i, ours[s, i, n].tolist()) for s, i, n in np.argwhere(~matched)]
    # The selected candidates sit in the same slots at the same centres (rows elsewhere moved:
    # 1, 4, 0, 2, 0 per step).
    moved = np.any(ours[..., :2] != want[..., :2], axis=-1)
    assert not np.any(trajectory["selected"][moved]), np.argwhere(moved)


def test_parameter_changes_over_five_steps(trajectory, official):
    before, after, want = trajectory["before"], trajectory["after"], official_state(official)
    keys = sorted(k for k in after if not k.endswith(BUFFERS))
    assert keys == sorted(k for k in want if not k.endswith(BUFFERS)) and len(keys) == 211
    budget = LEARNING_RATE * STEPS
    errors = {
        key: (
            (after[key].astype(np.float64) - before[key])
            - (want[key].astype(np.float64) - before[key])
        )
        / budget
        for key in keys
    }
    flat = np.concatenate([error.ravel() for error in errors.values()])
    assert flat.size == 643_805
    worst_key = max(keys, key=lambda k: np.abs(errors[k]).max())
    worst = np.abs(errors[worst_key])
    index = tuple(int(i) for i in np.unravel_index(worst.argmax(), worst.shape))
    change = lambda state: float(state[worst_key][index]) - float(before[worst_key][index])
    within = {tol: np.mean(np.abs(flat) <= tol) for tol in (0.02, 0.1)}
    report = (
        f"change error / (lr x steps): {within[0.02]:.2%} within 0.02 (1e-6), "
        f"{within[0.1]:.3%} within 0.1 (5e-6); worst {worst.max():.3f} at {worst_key}"
        f"{list(index)}: ours {change(after):.3e}, official {change(want):.3e}"
    )
    # Measured 99.14% / 99.978% / worst 0.51 (1 thread: 96.9% / 99.87% / 0.51). The official
    # code against itself: 98.7% / 99.97% / 0.5. Adam with eps 1e-7 instead of 1e-8 gave
    # 43.6% / 87.9% / 0.77 (and failed every other check of this file).
    assert within[0.02] >= 0.95, report
    assert within[0.1] >= 0.995, report
    assert worst.max() <= 1.0, report


def test_batch_norm_statistics_after_five_steps(trajectory, official):
    before, after, want = trajectory["before"], trajectory["after"], official_state(official)
    for key in (k for k in want if k.endswith("num_batches_tracked")):
        # The official counters advanced by the five steps. No counterpart here: with momentum
        # 0.1 PyTorch does not read them.
        assert want[key] - before[key] == STEPS, key
    within, report = [], []
    for kind, tol in (("running_mean", 5e-5), ("running_var", 1.5e-4)):
        keys = sorted(k for k in want if k.endswith(kind))
        assert keys == sorted(k for k in after if k.endswith(kind)) and len(keys) == 68
        # Means relative to the tensor's largest (they cross zero), variances elementwise.
        per_tensor = kind == "running_mean"
        errors = {
            k: np.abs(after[k] - want[k]) / (np.abs(want[k]).max() if per_tensor else want[k])
            for k in keys
        }
        flat = np.concatenate([e.ravel() for e in errors.values()])
        worst = max(keys, key=lambda k: errors[k].max())
        within.append(np.mean(flat <= tol))
        report.append(
            f"{kind}: {within[-1]:.2%} within {tol:g}, worst {flat.max():.2e} at "
            f"{worst}[{np.argmax(errors[worst])}]"
        )
    # Measured: means 9.0e-6 of the tensor's max (1 thread 1.2e-5); variances 4.2e-5 relative,
    # 42 of 3072 above the official 1.5e-5 (1 thread 6.8e-5). The biased update was 3.2e-3 off.
    assert within == [1.0, 1.0], "\n".join(report)


@pytest.mark.parametrize("masked", [False, True])
def test_running_variance_takes_the_unbiased_batch_variance(masked):
    rng = np.random.default_rng(0)
    x = rng.normal(0.5, 2.0, (4, 3, 3, 5)).astype(np.float32)
    rows = np.array([True, False, True, True]) if masked else np.ones(4, bool)
    mask = jnp.broadcast_to(rows[:, None, None, None], x.shape) if masked else None
    norm = layers.BatchNorm(use_running_average=False)
    variables = norm.init(jax.random.key(0), x)
    y, state = norm.apply(variables, x, mask=mask, mutable=["batch_stats"])
    used = x[rows].reshape(-1, 5).astype(np.float64)
    stats = state["batch_stats"]
    np.testing.assert_allclose(stats["mean"], 0.1 * used.mean(axis=0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * used.var(axis=0, ddof=1), rtol=1e-5)
    # The batch itself is normalised with the biased variance, as in PyTorch.
    normalized = (x[rows] - used.mean(axis=0)) / np.sqrt(used.var(axis=0) + layers.BN_EPSILON)
    np.testing.assert_allclose(y[rows], normalized, rtol=0, atol=1e-5)
