"""Five training steps against the official five (golden tiny_trajectory.npz).

`trainer.train_step` runs five steps from the official state `tiny_loss_state_dict.npz` with
the training config's optimiser (a fresh Adam at lr 1e-5), on the official batch of
`tiny_loss.npz` (its stored images and targets: rebuilding them through OpenCV's warp gives
inputs that differ between CPUs, a few pixels one level off, enough to decode another centre at
step 4). Compared with the official run: the four
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

Other CPUs and instruction sets. The numbers in the comments below were measured on an Intel Xeon.
On an AMD EPYC (Zen 4, 2 cores), with XLA's default (AVX-512) / --xla_cpu_max_isa=AVX2 /
--xla_cpu_max_isa=SSE4_2, against the official run: loss terms at most 7.0e-7 / 7.0e-7 / 1.4e-7
relative (heatmaps), 5.3e-6 / 3.8e-6 / 1.9e-6 (offsets), 2.6e-4 / 2.7e-4 / 6.2e-5 (OKS),
8.4e-5 / 8.6e-5 / 1.5e-5 (refined heatmaps), 4.7e-6 / 4.9e-6 / 6.7e-7 (total); OKS margins
within 5.1e-5 / 5.1e-5 / 1.3e-5; parameter changes 97.0% / 97.0% / 99.86% within 0.02 and
99.88% / 99.88% / 99.998% within 0.1 of lr x steps, worst 0.53 / 0.53 / 0.22; running means
1.1e-5 / 1.2e-5 / 4.4e-6, variances 7.4e-5 / 7.2e-5 / 2.1e-5; the same selections at every step.
AVX-512 and AVX2 split the reductions alike; SSE4_2 lands near the Intel figures.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from golden_arrays import GOLDEN, ROOT, load, training_batch

from logocap_jax import config_utils, decode, oks
from logocap_jax.models import layers
from logocap_jax.training import trainer
from logocap_jax.weights import convert

pytestmark = pytest.mark.slow

INPUT_SIZE, OUTPUT_SIZE = 256, 64  # the official step's training sizes
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
    config.data.input_size = INPUT_SIZE
    config.data.output_size = OUTPUT_SIZE
    config.train.learning_rate = LEARNING_RATE
    return config


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
    batch = training_batch(load("tiny_loss.npz", skip=("grad", "bn_after")))
    model = config_utils.build_model(config)
    before = convert.load_state_dict(str(GOLDEN / "tiny_loss_state_dict.npz"))
    variables = convert.variables_from_state_dict(before, convert.model_template(model))
    settings = config_utils.train_settings(config)
    # One step per epoch: the first learning-rate drop (epoch 90) lies far beyond five steps.
    assert trainer.learning_rate_schedule(config.train, 1)(STEPS) == LEARNING_RATE
    state = trainer.TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        tx=trainer.create_optimizer(config.train, 1),
        batch_stats=variables["batch_stats"],
    )

    @jax.jit
    def step(state, batch):
        records = {}
        with nn.intercept_methods(_capture(records)):
            state, metrics = trainer.train_step(
                state,
                batch,
                model=model,
                settings=settings,
                loss_weights=config_utils.loss_weights(config),
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
        "after": convert.state_dict_from_variables(jax.device_get(trainer.model_variables(state))),
    }


@pytest.fixture(scope="module")
def trajectory():
    return run_trajectory()


@pytest.fixture(scope="module")
def official():
    return load("tiny_trajectory.npz")


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
