"""The instance budget (`TrainSettings.instance_budget`): select first, then compute.

Carrying only T instances per batch through the CMP and LOGO-CA must give the losses, gradients
and BatchNorm statistics of the all-slots computation whenever the batch's selected slots fit.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from golden_arrays import LOSS_TERMS as TERMS
from golden_arrays import training_batch

from logocap_jax.training import forward, losses

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def golden(golden_step):
    return golden_step


@pytest.fixture(scope="module")
def runs(golden, tiny_model, tiny_step_variables):
    """Loss terms, gradients, batch statistics and outputs: all slots, budget 16, budget 8."""
    model, variables = tiny_model, tiny_step_variables
    all_settings = {
        "all": forward.TrainSettings(),
        "budget16": forward.TrainSettings(instance_budget=16),
        "budget8": forward.TrainSettings(instance_budget=8),
    }

    @jax.jit
    def run(variables, batch):
        results = {}
        for name, settings in all_settings.items():

            def total(params, settings=settings):
                outputs, batch_stats = forward.training_outputs(
                    model,
                    {"params": params, "batch_stats": variables["batch_stats"]},
                    batch,
                    settings=settings,
                )
                terms = losses.training_losses(outputs, batch)
                return terms["total"], (terms, batch_stats, outputs)

            (_, aux), grads = jax.value_and_grad(total, has_aux=True)(variables["params"])
            results[name] = (*aux, grads)
        return results

    return run(variables, training_batch(golden))


def _relative_error(ours, theirs):
    diff = sum(jnp.sum((a - b) ** 2) for a, b in zip(ours, theirs))
    return float(jnp.sqrt(diff / sum(jnp.sum(b**2) for b in theirs)))


def test_budget_that_fits_equals_all_slots(runs, golden):
    terms, batch_stats, outputs, grads = runs["budget16"]
    all_terms, all_stats, all_outputs, all_grads = runs["all"]
    # 6 + 5 golden instances are selected: all fit in 16.
    assert outputs.selected.shape == (16,)
    assert int(outputs.selected.sum()) == int(all_outputs.selected.sum()) == 11
    for name in TERMS:
        np.testing.assert_allclose(terms[name], golden[TERMS[name]], rtol=1e-5, err_msg=name)
        np.testing.assert_allclose(terms[name], all_terms[name], rtol=1e-5, err_msg=name)
    leaves = jax.tree_util.tree_leaves
    # Same sums in another order (float32): measured below 1e-6.
    assert _relative_error(leaves(grads), leaves(all_grads)) < 1e-5
    assert _relative_error(leaves(batch_stats), leaves(all_stats)) < 1e-6


def test_budget_keeps_the_selected_instances_in_batch_order(runs):
    _, _, outputs, _ = runs["budget16"]
    _, _, all_outputs, _ = runs["all"]
    rows = np.flatnonzero(np.asarray(all_outputs.selected).reshape(-1))
    want = np.asarray(all_outputs.refined).reshape(-1, *all_outputs.refined.shape[2:])[rows]
    np.testing.assert_allclose(np.asarray(outputs.refined)[: len(rows)], want, atol=1e-6)
    np.testing.assert_array_equal(
        np.asarray(outputs.assignment)[: len(rows)],
        np.asarray(all_outputs.assignment).reshape(-1)[rows],
    )


def test_budget_that_overflows_keeps_the_first_selected(runs):
    _, _, outputs, grads = runs["budget8"]
    _, _, all_outputs, _ = runs["all"]
    # 11 selected, 8 kept: image 0's six, then image 1's first two.
    assert bool(np.all(outputs.selected))
    rows = np.flatnonzero(np.asarray(all_outputs.selected).reshape(-1))[:8]
    np.testing.assert_array_equal(
        np.asarray(outputs.pose_gt), np.asarray(all_outputs.pose_gt).reshape(-1, 17, 2)[rows]
    )
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree_util.tree_leaves(grads))


def test_negative_budget_is_rejected():
    with pytest.raises(ValueError, match="instance_budget"):
        forward.TrainSettings(instance_budget=-1)
