"""Flax Linen modules of LOGO-CAP."""

from logocap_jax.models.logocap import LogoCap, Predictions

__all__ = ["LogoCap", "Predictions"]
