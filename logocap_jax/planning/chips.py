"""TPU chips: memory and peak rates per chip, for memory plans and roofline estimates.

Figures per chip from Google Cloud's TPU documentation (HBM capacity and bandwidth, peak
bfloat16 FLOP/s):
  v4  https://cloud.google.com/tpu/docs/v4   32 GiB,  1,200 GB/s, 275 TFLOP/s
  v5e https://cloud.google.com/tpu/docs/v5e  16 GiB,    819 GB/s, 197 TFLOP/s
  v5p https://cloud.google.com/tpu/docs/v5p  95 GiB,  2,765 GB/s, 459 TFLOP/s
  v6e https://cloud.google.com/tpu/docs/v6e  32 GiB,  1,640 GB/s, 918 TFLOP/s
"""

import dataclasses

from logocap_jax import errors

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
    """One TPU chip: HBM bytes, HBM bytes/s and peak bfloat16 FLOP/s; chip_config is how JAX
    sees it ('megacore': the two TensorCores of a v4 or v5p chip as one device)."""

    name: str
    hbm_bytes: int
    hbm_bytes_per_second: float
    peak_flops: float
    source: str
    chip_config: str = "default"

    def compute_seconds(self, flops: float) -> float:
        """The time of `flops` at the chip's peak rate: a lower bound on a step's time."""
        return flops / self.peak_flops

    def hbm_seconds(self, bytes_accessed: float) -> float:
        """The time to move `bytes_accessed` at the chip's HBM bandwidth."""
        return bytes_accessed / self.hbm_bytes_per_second


CHIPS = {
    "v4": Chip("v4", 32 * GIB, 1.2e12, 275e12, "https://cloud.google.com/tpu/docs/v4", "megacore"),
    "v5e": Chip("v5e", 16 * GIB, 819e9, 197e12, "https://cloud.google.com/tpu/docs/v5e"),
    "v5p": Chip(
        "v5p", 95 * GIB, 2.765e12, 459e12, "https://cloud.google.com/tpu/docs/v5p", "megacore"
    ),
    "v6e": Chip("v6e", 32 * GIB, 1.64e12, 918e12, "https://cloud.google.com/tpu/docs/v6e"),
}


def chip_of(topology: str) -> Chip:
    """The chip of a topology name such as 'v5e:2x2' (the part before the colon).

    Raises:
      ConfigError: a chip not in CHIPS.
    """
    name = topology.partition(":")[0]
    if name not in CHIPS:
        raise errors.ConfigError(
            f"unknown TPU chip {name!r} in topology {topology!r}; one of {', '.join(CHIPS)}"
        )
    return CHIPS[name]
