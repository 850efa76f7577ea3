"""Training forward pass, losses and gradients against the official training step (tiny_loss.npz).

One jitted function runs the whole step on the golden batch (training-mode forward, the four
losses, the gradient of each term and of the total) and is shared by every golden test.
"""

import operator

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from golden_arrays import LOSS_TERMS as TERMS
from golden_arrays import nhwc, training_batch

from logocap_jax.training import forward, losses
from logocap_jax.weights import convert


def _capture(records: dict):
    """A Flax interceptor keeping the network outputs, the CMP input and every CMP layer output."""

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        path = context.module.path
        if path == () and context.method_name == "__call__":
            records["predictions"] = out
        elif path == () and context.method_name == "attraction_maps":
            records["latent"] = args[0]
        elif path[:1] == ("joints_mlp",) and len(path) > 1 and context.method_name == "__call__":
            records[".".join(path[1:])] = out
        return out

    return interceptor


@pytest.fixture(scope="module")
def golden(golden_step):
    return golden_step


@pytest.fixture(scope="module")
def step(golden, tiny_model, tiny_step_variables):
    """Outputs, loss terms, new BatchNorm statistics, captured intermediates and gradients.

    grads[name] is d term / d params for every loss term name of TERMS, in official layout.
    """
    model, variables = tiny_model, tiny_step_variables
    names = list(TERMS)

    @jax.jit
    def run(variables, batch):
        def terms_fn(params):
            records = {}
            with nn.intercept_methods(_capture(records)):
                outputs, batch_stats = forward.training_outputs(
                    model, {"params": params, "batch_stats": variables["batch_stats"]}, batch
                )
            terms = losses.training_losses(outputs, batch)
            return jnp.stack([terms[name] for name in names]), (
                outputs,
                terms,
                batch_stats,
                records,
            )

        _, vjp, aux = jax.vjp(terms_fn, variables["params"], has_aux=True)
        grads = jax.vmap(vjp)(jnp.eye(len(names)))[0]
        return aux, grads

    (outputs, terms, batch_stats, records), grads = run(variables, training_batch(golden))
    per_term = {
        name: convert.state_dict_from_variables(
            {"params": jax.tree_util.tree_map(operator.itemgetter(row), grads)}
        )
        for row, name in enumerate(names)
    }
    return {
        "outputs": outputs,
        "terms": terms,
        "records": records,
        "grads": per_term,
        "batch_stats": convert.state_dict_from_variables({"batch_stats": batch_stats}),
    }


def selected_rows(step):
    """Flat slot indices of the selected instances, image 0's first (the golden order)."""
    return np.flatnonzero(np.asarray(step["outputs"].selected).reshape(-1))


def plateau_twins(step, golden):
    """[B, N] slots whose center differs from the golden one only by an exact-tie twin pixel."""
    ours, theirs = np.asarray(step["outputs"].centers), golden["centers_topk"]
    differ = np.any(ours[..., :2] != theirs[..., :2], axis=-1)
    twin = (np.abs(ours[..., :2] - theirs[..., :2]).sum(-1) == 1) & np.isclose(
        ours[..., 2], theirs[..., 2], rtol=0, atol=1e-5
    )
    assert np.all(twin[differ]), "a decoded center differs beyond a tie between two pixels"
    return differ


def test_network_outputs_match_golden(step, golden):
    predictions = step["records"]["predictions"]
    for ours, name in [
        (predictions.heatmaps, "heatmaps"),
        (predictions.offsets, "offsets"),
        (predictions.embeddings, "embedding"),
    ]:
        # Training-mode BatchNorm, float32: measured 1.1e-5, 7.4e-5 (|max| 31), 1.2e-5.
        np.testing.assert_allclose(ours, nhwc(golden[name]), rtol=0, atol=2e-4)


def test_decoded_candidates_match_golden(step, golden):
    twins = plateau_twins(step, golden)
    # One border plateau (image 1, slot 29: x = 0 / 1 tie exactly, README hazard); never selected.
    assert twins.sum() <= 1 and not np.any(np.asarray(step["outputs"].selected)[twins])
    np.testing.assert_allclose(
        np.asarray(step["outputs"].centers)[~twins],
        golden["centers_topk"][~twins],
        rtol=0,
        atol=1e-5,
    )
    # Offsets differ by up to 7.4e-5 grid px, times the stride 4: measured 2.3e-4 px.
    np.testing.assert_allclose(
        np.asarray(step["outputs"].initial_poses)[~twins],
        golden["initial_poses"][~twins],
        rtol=0,
        atol=5e-4,
    )


@pytest.mark.parametrize("index", [0, 1])
def test_oks_targets_and_selection_match_golden(step, golden, index):
    outputs, keep = step["outputs"], ~plateau_twins(step, golden)[index]
    np.testing.assert_array_equal(outputs.selected[index], golden[f"selected_{index}"])
    # Candidates from the JAX network (poses within 5e-4 px): measured 4.0e-5, pose_gt 3.1e-5.
    np.testing.assert_allclose(
        np.asarray(outputs.oks_joints[index])[keep],
        golden[f"oks_parts_{index}"][keep],
        rtol=0,
        atol=2e-4,
    )
    np.testing.assert_allclose(
        np.asarray(outputs.oks_person[index])[keep],
        golden[f"oks_person_{index}"][keep],
        rtol=0,
        atol=2e-4,
    )
    np.testing.assert_allclose(
        np.asarray(outputs.pose_gt[index])[keep],
        golden[f"pose_gt_{index}"][keep][..., :2],
        rtol=0,
        atol=1e-4,
    )


def test_latent_codes_and_cmp_match_golden(step, golden):
    rows, records = selected_rows(step), step["records"]
    assert len(rows) == golden["latent_code"].shape[0] == 11
    to_nchw = lambda x: np.moveaxis(np.asarray(x)[rows], -1, 1)
    # Measured 5.4e-5 (|max| 4.0).
    np.testing.assert_allclose(to_nchw(records["latent"]), golden["latent_code"], rtol=0, atol=1e-4)
    layers = {
        "0": records["0"],
        "1": records["1"],
        "2": nn.relu(records["1"]),
        "3": records["3"],
        "4": records["4"],
        "5": nn.relu(records["4"]),
        "6": records["6"],
        "7": records["7"],
        "8": nn.relu(records["7"]),
        "9": records["9"],
    }
    for layer, ours in layers.items():
        want = golden[f"cmp.{layer}"]
        # BatchNorm over the 11 selected instances only: measured <= 7.4e-6 of the layer's max.
        np.testing.assert_allclose(
            to_nchw(ours), want, rtol=0, atol=1e-4 * np.abs(want).max(), err_msg=f"cmp.{layer}"
        )
    attention = jax.nn.hard_sigmoid(np.asarray(records["4.attn_weights.attention.0"])[rows, 0, 0])
    np.testing.assert_allclose(attention, golden["cmp.4.attn_weights"], rtol=0, atol=1e-5)  # 3.5e-6
    kams = np.asarray(step["outputs"].kams).reshape(-1, 11, 11, 17)
    np.testing.assert_allclose(
        np.moveaxis(kams[rows], -1, 1), golden["cmp.9"], rtol=0, atol=5e-5
    )  # 8.8e-6


def test_refined_heatmaps_match_golden(step, golden):
    rows = selected_rows(step)[golden["maps_instance_index"]]
    refined = np.asarray(step["outputs"].refined).reshape(-1, 17, 97, 97)[rows]
    # Measured 1.8e-6 (|max| 0.23).
    np.testing.assert_allclose(refined, golden["out_hm_sub"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", list(TERMS))
def test_loss_terms_match_golden(step, golden, name):
    # float32 reductions in another order: measured relative 1.1e-6 at most (refined_heatmaps).
    np.testing.assert_allclose(step["terms"][name], golden[TERMS[name]], rtol=1e-5)


# Gradient tolerances. Many backbone gradients are sums of terms that cancel (a tensor's largest
# entry can be 1e-6 when the largest gradient is 1.4e-2), so their last digits follow the float32
# reduction order, which depends on how XLA splits the work over the cores. Measured against the
# official gradients on an AMD EPYC (Zen 4), per term: the worst error relative to its tensor's
# largest entry, and the worst absolute error.
#                       2 cores, AVX-512     --xla_cpu_max_isa=AVX2  --xla_cpu_max_isa=SSE4_2
#   heatmaps            2.8e-3, 1.4e-7       2.8e-3, 1.4e-7          4.8e-4, 2.3e-8
#   offsets             5.6e-4, 4.2e-9       5.7e-4, 4.3e-9          3.5e-4, 3.3e-9
#   oks                 3.0e-3, 6.3e-8       3.0e-3, 6.3e-8          1.5e-4, 3.1e-9
#   refined_heatmaps    1.0e-3, 5.0e-8       1.0e-3, 5.0e-8          1.4e-4, 6.4e-9
#   total               1.4e-2, 3.4e-7       1.4e-2, 3.4e-7          7.5e-3, 3.8e-8
# The same run on one core moves the total's gradients by 1.5e-2 of a tensor's largest entry
# (3.7e-7) and lands within 1.3e-3 (3.6e-8) of the official ones; on an Intel Xeon, 2 cores:
# 1.0e-3 (3.3e-8). So each entry may be off by 2e-3 of its tensor's largest entry plus twice the
# worst absolute error above, and each tensor's relative L2 error stays within 2e-2 (measured at
# most 5.8e-3), which still catches a tensor whose gradient is wrong.
GRAD_RTOL_OF_TENSOR = 2e-3
GRAD_ATOL = {
    "heatmaps": 3e-7,
    "offsets": 1e-8,
    "oks": 1.5e-7,
    "refined_heatmaps": 1e-7,
    "total": 7e-7,
}
GRAD_L2_RTOL = 2e-2


def assert_gradients_close(ours: dict, official: dict, term: str) -> None:
    """Per-tensor gradient checks of one loss term with the tolerances above."""
    for key, want in official.items():
        atol = GRAD_ATOL[term] + GRAD_RTOL_OF_TENSOR * np.abs(want).max()
        np.testing.assert_allclose(ours[key], want, rtol=0, atol=atol, err_msg=f"{term} {key}")
        if np.any(want):
            l2 = np.linalg.norm(ours[key] - want) / np.linalg.norm(want)
            assert l2 <= GRAD_L2_RTOL, f"{term} {key}: relative L2 error {l2:.2e}"


def test_gradients_match_golden(step, golden):
    grads = step["grads"]["total"]
    official = {k[len("grad.") :]: v for k, v in golden.items() if k.startswith("grad.")}
    assert sorted(grads) == sorted(official)
    assert_gradients_close(grads, official, "total")


def test_per_term_gradients_match_golden(step, golden):
    checked = 0
    for name, golden_name in TERMS.items():
        prefix = f"gradterm.{golden_name}."
        official = {k[len(prefix) :]: v for k, v in golden.items() if k.startswith(prefix)}
        # Terms that do not reach a tensor give 0 there.
        assert_gradients_close(step["grads"][name], official, name)
        checked += len(official)
    assert checked == 48


def test_batch_norm_statistics_after_the_step(step, golden):
    stats = step["batch_stats"]
    keys = sorted(k[len("bn_after.") :] for k in golden if k.startswith("bn_after."))
    assert sorted(stats) == keys
    for key in keys:
        want = golden[f"bn_after.{key}"]
        if key.endswith("running_mean"):
            np.testing.assert_allclose(
                stats[key], want, rtol=0, atol=1e-5 * np.abs(want).max() + 1e-7, err_msg=key
            )  # measured 1.2e-7 of the max
        else:
            # Unbiased batch variance folded in, as PyTorch (the CMP's over the 11 selected
            # instances only): measured 6.0e-7 relative. Flax's biased update was 8.2e-4 off
            # (stage-4 8 x 8 branch, n = 128 elements per channel).
            np.testing.assert_allclose(stats[key], want, rtol=5e-6, atol=0, err_msg=key)


def _synthetic_outputs(rng, batch=2, slots=4, window=5, extent=7, joints=17):
    shape = (batch, slots)
    oks_joints = rng.uniform(0, 1, shape + (window, window, joints)).astype(np.float32)
    oks_person = rng.uniform(0.2, 0.8, shape + (window, window)).astype(np.float32)
    selected = np.array([[True, False, True, False], [True, False, False, False]])
    oks_person[1, 0] = 0.3  # image 1: nothing passes, slot 0 kept as the fallback
    return forward.TrainingOutputs(
        heatmaps=None,
        offsets=None,
        centers=None,
        initial_poses=None,
        oks_joints=oks_joints,
        oks_person=oks_person,
        assignment=None,
        pose_gt=None,
        selected=selected,
        kams=rng.normal(size=oks_joints.shape).astype(np.float32),
        refined=rng.normal(size=shape + (joints, extent, extent)).astype(np.float32),
        refined_targets=rng.uniform(0, 1, shape + (joints, extent, extent)).astype(np.float32),
    )


def test_instance_losses_follow_the_official_normalisation():
    rng = np.random.default_rng(0)
    outputs = _synthetic_outputs(rng)
    outputs.oks_person[0, 0, 2, 2] = outputs.oks_person[0, 2, 1, 3] = 0.9
    weights = losses.joint_weights(outputs.oks_joints, outputs.oks_person)
    passed = outputs.oks_person.max(axis=(-2, -1)) >= 0.5
    kam = losses.kam_loss(outputs.kams, outputs.oks_joints, weights, outputs.selected, passed)
    refined = losses.refined_heatmap_loss(
        outputs.refined, outputs.refined_targets, weights, outputs.selected
    )
    # The official form: drop unselected slots, then plain means / sums over what is left.
    rows = outputs.selected
    oks_j, oks_p = outputs.oks_joints[rows], outputs.oks_person[rows]
    rho = oks_p.max(axis=(1, 2))
    w = (oks_j.max(axis=(1, 2)) - oks_j[:, 2, 2]) * (rho >= 0.5)[:, None]
    want_kam = np.sum(np.mean((outputs.kams[rows] - oks_j) ** 2 * w[:, None, None], axis=(1, 2, 3)))
    want_kam /= max(1, np.sum(rho >= 0.5))
    want_refined = np.mean(
        (outputs.refined[rows] - outputs.refined_targets[rows]) ** 2 * w[:, :, None, None]
    )
    assert np.sum(rho >= 0.5) == 2 and rows.sum() == 3
    np.testing.assert_allclose(kam, want_kam, rtol=1e-5)
    np.testing.assert_allclose(refined, want_refined, rtol=1e-5)


def test_unselected_slots_contribute_nothing():
    outputs = _synthetic_outputs(np.random.default_rng(1))
    targets = {
        "heatmaps": np.zeros((2, 4, 4, 18), np.float32),
        "heatmap_weights": np.ones((2, 4, 4, 1), np.float32),
        "offsets": np.zeros((2, 4, 4, 34), np.float32),
        "offset_weights": np.zeros((2, 4, 4, 34), np.float32),
    }
    outputs = outputs._replace(
        heatmaps=np.ones((2, 4, 4, 18), np.float32), offsets=np.ones((2, 4, 4, 34), np.float32)
    )
    base = losses.training_losses(outputs, targets)
    junk = ~outputs.selected
    changed = outputs._replace(
        kams=np.where(junk[..., None, None, None], 1e6, outputs.kams),
        refined=np.where(junk[..., None, None, None], np.nan, outputs.refined),
        oks_person=np.where(junk[..., None, None], 0.99, outputs.oks_person),
    )
    for name, value in losses.training_losses(changed, targets).items():
        np.testing.assert_allclose(value, base[name], rtol=1e-6, err_msg=name)
    assert float(base["offsets"]) == 0.0  # no positive offset weight: the count clamps to 1


def test_map_losses_formulas():
    rng = np.random.default_rng(2)
    pred, target = rng.normal(size=(2, 3, 3, 34)), rng.normal(size=(2, 3, 3, 34))
    pred[0, 0, 0, 0] = target[0, 0, 0, 0] + 0.05  # inside the quadratic zone
    weights = rng.uniform(0, 1, (2, 3, 3, 34)) * (rng.uniform(size=(2, 3, 3, 34)) > 0.5)
    beta = 1 / 9
    diff = np.abs(pred - target)
    smooth = np.where(diff < beta, 0.5 * diff**2 / beta, diff - 0.5 * beta)
    np.testing.assert_allclose(
        losses.offset_loss(pred, target, weights),
        np.sum(smooth * weights) / np.sum(weights > 0),
        rtol=1e-5,
    )
    heat_w = rng.uniform(0, 1, (2, 3, 3, 1))
    np.testing.assert_allclose(
        losses.heatmap_loss(pred[..., :18], target[..., :18], heat_w),
        np.mean((pred[..., :18] - target[..., :18]) ** 2 * heat_w),
        rtol=1e-5,
    )


def test_selected_slots_come_first_in_slot_order():
    selected = jnp.array([[False, True, False, True, True], [False, False, False, False, False]])
    slots = np.asarray(forward.selected_slots(selected, 3))
    np.testing.assert_array_equal(slots, [[1, 3, 4], [0, 1, 2]])


def test_compacted_instances_give_the_golden_losses(golden, tiny_model, tiny_step_variables):
    # 6 and 5 instances are selected: carrying 8 slots per image through the CMP and LOGO-CA
    # must give the same losses as carrying all 30.
    model = tiny_model
    settings = forward.TrainSettings(max_instances=8)

    @jax.jit
    def run(variables, batch):
        outputs, _ = forward.training_outputs(model, variables, batch, settings=settings)
        return outputs.selected, losses.training_losses(outputs, batch)

    selected, terms = run(tiny_step_variables, training_batch(golden))
    assert selected.shape == (2, 8)
    np.testing.assert_array_equal(np.asarray(selected).sum(axis=1), [6, 5])
    for name in TERMS:
        np.testing.assert_allclose(terms[name], golden[TERMS[name]], rtol=1e-5)
