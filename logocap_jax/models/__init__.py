"""Flax Linen modules of LOGO-CAP."""

from logocap_jax.models.logocap import CMP_VARIANTS, LogoCap, Predictions

__all__ = ["CMP_VARIANTS", "LogoCap", "Predictions"]
