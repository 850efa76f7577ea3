"""The four LOGO-CAP training losses (paper Sec. 3.2, design §3.8) on static-shaped outputs.

Heatmap and offset losses are DEKR's (Geng et al., CVPR 2021); the KAM ("oks") and refined-heatmap
losses are LOGO-CAP's. Slots that are not selected training instances contribute nothing, and
every normalisation counts selected instances only, as the official code, which drops the other
slots, does.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import optax

from logocap_jax.oks import MIN_OKS
from logocap_jax.training.forward import TrainingOutputs

# Transition point of the offsets' smooth-L1 loss, grid pixels.
SMOOTH_L1_BETA = 1.0 / 9.0


@dataclasses.dataclass(frozen=True)
class LossWeights:
    """Factors of the loss terms; the defaults are the official (paper's) 1, 0.01, 0.01, 1."""

    heatmaps: float = 1.0
    offsets: float = 0.01
    oks: float = 0.01
    refined_heatmaps: float = 1.0


def heatmap_loss(heatmaps, targets, weights):
    """Mean of the weighted squared error (the weight is not squared).

    Args:
      heatmaps, targets: [B, h, w, K + 1].
      weights: [B, h, w, 1] pixel weights, broadcast over channels.
    """
    return jnp.mean((heatmaps - targets) ** 2 * weights)


def offset_loss(offsets, targets, weights, *, beta: float = SMOOTH_L1_BETA):
    """Weighted smooth-L1 summed and divided by the number of positive-weight entries (min 1).

    Args:
      offsets, targets, weights: [B, h, w, 2K]; x and y entries count separately.
    """
    error = optax.huber_loss(offsets, targets, delta=beta) / beta
    count = jnp.maximum(jnp.sum(weights > 0), 1)
    return jnp.sum(error * weights) / count


def joint_weights(oks_joints, oks_person, *, min_oks: float = MIN_OKS):
    """Per-joint "improvement potential": best OKS in the window minus the OKS at its center.

    Zero for instances whose best person OKS is below `min_oks`.

    Args:
      oks_joints: [..., S, S, K]; oks_person: [..., S, S].

    Returns:
      [..., K] weights.
    """
    center = oks_joints.shape[-2] // 2
    weights = oks_joints.max(axis=(-3, -2)) - oks_joints[..., center, center, :]
    return weights * (oks_person.max(axis=(-2, -1)) >= min_oks)[..., None]


def kam_loss(kams, oks_joints, weights, selected, passed):
    """KAM regression onto the per-joint OKS: per instance the mean over (S, S, K) of the
    weighted squared error, summed over instances and divided by the number of instances
    passing the OKS gate (min 1).

    Args:
      kams, oks_joints: [..., S, S, K]; weights: [..., K]; selected, passed: [...] bool.
    """
    error = (kams - oks_joints) ** 2 * weights[..., None, None, :]
    per_instance = jnp.where(selected, jnp.mean(error, axis=(-3, -2, -1)), 0.0)
    return jnp.sum(per_instance) / jnp.maximum(jnp.sum(selected & passed), 1)


def refined_heatmap_loss(refined, targets, weights, selected):
    """Mean over the selected instances' (K, A, A) maps of the joint-weighted squared error.

    Args:
      refined, targets: [..., K, A, A]; weights: [..., K]; selected: [...] bool.
    """
    error = (refined - targets) ** 2 * weights[..., None, None]
    per_instance = jnp.where(selected, jnp.sum(error, axis=(-3, -2, -1)), 0.0)
    per_map = refined.shape[-3] * refined.shape[-2] * refined.shape[-1]
    return jnp.sum(per_instance) / (jnp.maximum(jnp.sum(selected), 1) * per_map)


def training_losses(
    outputs: TrainingOutputs,
    targets: Mapping[str, Any],
    *,
    weights: LossWeights = LossWeights(),
    min_oks: float = MIN_OKS,
) -> dict:
    """The four weighted loss terms and their sum.

    Args:
      outputs: `forward.training_outputs`.
      targets: channels-last maps of `data.targets`, batched: 'heatmaps' [B, h, w, K + 1],
        'heatmap_weights' [B, h, w, 1], 'offsets' and 'offset_weights' [B, h, w, 2K].
      weights: factors of the terms.
      min_oks: OKS gate of the KAM and refined-heatmap weights.

    Returns:
      {'heatmaps', 'offsets', 'oks', 'refined_heatmaps', 'total'} scalars, factors applied.
    """
    per_joint = joint_weights(outputs.oks_joints, outputs.oks_person, min_oks=min_oks)
    passed = outputs.oks_person.max(axis=(-2, -1)) >= min_oks
    terms = {
        "heatmaps": weights.heatmaps
        * heatmap_loss(outputs.heatmaps, targets["heatmaps"], targets["heatmap_weights"]),
        "offsets": weights.offsets
        * offset_loss(outputs.offsets, targets["offsets"], targets["offset_weights"]),
        "oks": weights.oks
        * kam_loss(outputs.kams, outputs.oks_joints, per_joint, outputs.selected, passed),
        "refined_heatmaps": weights.refined_heatmaps
        * refined_heatmap_loss(
            outputs.refined, outputs.refined_targets, per_joint, outputs.selected
        ),
    }
    terms["total"] = terms["heatmaps"] + terms["offsets"] + terms["oks"] + terms["refined_heatmaps"]
    return terms
