"""The One-Euro filter (Casiez, Roussel and Vogel, CHI 2012) for keypoint coordinates over time.

A first-order low-pass filter whose cutoff frequency rises with the signal's speed: at rest a low
cutoff removes jitter, in fast motion a high cutoff keeps the lag small. For a sample x at time t,
with dt since the previous sample,

    alpha(f) = 1 / (1 + 1 / (2 pi f dt))
    dx_hat   = dx_hat' + alpha(d_cutoff) * ((x - x_hat') / dt - dx_hat')
    x_hat    = x_hat' + alpha(min_cutoff + beta * |dx_hat|) * (x - x_hat')

(primes: the previous step's values). Every entry of the array is an independent filter sharing
one clock; the tracker keeps one state per track (design §7). Pure numpy; the functions return
new states and never modify their inputs.
"""

import dataclasses
from typing import NamedTuple

import numpy as np


@dataclasses.dataclass(frozen=True)
class OneEuroSettings:
    """Parameters of the One-Euro filter.

    Attributes:
      min_cutoff: cutoff frequency at rest, Hz. Lower removes more jitter and lags more.
      beta: growth of the cutoff with speed, Hz per (unit / s); for pixel coordinates, 1 / px.
        The lag of a steady motion is at most 1 / (2 pi beta) units, whatever its speed.
      d_cutoff: cutoff frequency of the speed estimate, Hz.
    """

    min_cutoff: float = 1.0
    beta: float = 0.05
    d_cutoff: float = 1.0

    def __post_init__(self):
        if self.min_cutoff <= 0 or self.d_cutoff <= 0:
            raise ValueError(
                f"min_cutoff and d_cutoff must be positive, got min_cutoff={self.min_cutoff}, "
                f"d_cutoff={self.d_cutoff}"
            )
        if self.beta < 0:
            raise ValueError(f"beta must be non-negative, got {self.beta}")


class OneEuroState(NamedTuple):
    """The filter's memory after a sample.

    Attributes:
      value: [...] filtered values (the raw value where `started` is False).
      speed: [...] filtered speeds, units per second.
      started: [...] bool, entries with a history; the others restart at their next sample.
      timestamp: time of the last sample, seconds.
    """

    value: np.ndarray
    speed: np.ndarray
    started: np.ndarray
    timestamp: float


def smoothing_factor(cutoff, dt: float):
    """alpha of an exponential low-pass filter of cutoff frequency `cutoff` (Hz) at step dt (s)."""
    return 1.0 / (1.0 + 1.0 / (2.0 * np.pi * np.asarray(cutoff) * dt))


def _observed_mask(observed, shape: tuple) -> np.ndarray:
    """A new bool array of `shape`: all True for None, else `observed` broadcast to it."""
    if observed is None:
        return np.ones(shape, bool)
    return np.broadcast_to(np.asarray(observed, bool), shape).copy()


def one_euro_start(values, timestamp: float, observed=None) -> OneEuroState:
    """A fresh state whose first sample is `values`: the filter outputs it unchanged.

    Args:
      values: [...] the first sample.
      timestamp: its time, seconds.
      observed: optional bool, broadcast to `values`; unobserved entries start at their next
        observed sample.

    Returns:
      `OneEuroState` with zero speed.
    """
    values = np.asarray(values, dtype=np.float64)
    started = _observed_mask(observed, values.shape)
    return OneEuroState(values.copy(), np.zeros_like(values), started, float(timestamp))


def one_euro_step(
    state: OneEuroState, values, timestamp: float, settings: OneEuroSettings, observed=None
) -> tuple[np.ndarray, OneEuroState]:
    """Filters one sample.

    Entries that are not `observed` (a keypoint below the visibility threshold) are passed
    through raw and lose their history, so that a joint that reappears is not dragged from a
    stale position; entries observed without a history start at their sample.

    Args:
      state: the state after the previous sample.
      values: [...] the new sample, same shape as the state.
      timestamp: its time, seconds; must be later than `state.timestamp`.
      settings: the filter's parameters.
      observed: optional bool, broadcast to `values`; default all True.

    Returns:
      (filtered [...] float64, the new state).

    Raises:
      ValueError: a shape differs from the state's, or the timestamp does not increase.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.shape != state.value.shape:
        raise ValueError(
            f"sample shape {values.shape} differs from the state's {state.value.shape}"
        )
    dt = float(timestamp) - state.timestamp
    if not dt > 0:
        raise ValueError(
            f"timestamps must increase, got {timestamp} after {state.timestamp} (seconds)"
        )
    observed = _observed_mask(observed, values.shape)
    raw_speed = (values - state.value) / dt
    speed = state.speed + smoothing_factor(settings.d_cutoff, dt) * (raw_speed - state.speed)
    cutoff = settings.min_cutoff + settings.beta * np.abs(speed)
    # x' + alpha (x - x') rather than alpha x + (1 - alpha) x': a constant stays exactly constant.
    filtered = state.value + smoothing_factor(cutoff, dt) * (values - state.value)
    keep = observed & state.started
    filtered = np.where(keep, filtered, values)
    speed = np.where(keep, speed, 0.0)
    return filtered, OneEuroState(filtered, speed, observed, float(timestamp))
