"""Timing of the test-time pipeline, reported as in the paper's Table 4."""

import collections
import dataclasses
import time

import jax
import numpy as np

from logocap_jax.inference.pipeline import STAGES


@dataclasses.dataclass
class SpeedReport:
    """Accumulates per-image times, people counts and host transfers of the batches run.

    A batch's time runs from its dispatch to its results on the host (host reading of the next
    images overlaps it). Compilation is timed apart (`compile_seconds`) and left out of the
    averages. Per-stage times exist only for Predictors that time the stages.
    """

    total_seconds: list = dataclasses.field(default_factory=list)
    stage_seconds: dict = dataclasses.field(default_factory=lambda: collections.defaultdict(list))
    people: list = dataclasses.field(default_factory=list)
    compile_seconds: float = 0.0
    bytes_to_device: int = 0
    bytes_to_host: int = 0

    def add(self, total: float, people_per_image, stage_times: dict | None = None):
        """Records one batch: its seconds, the people found in each image, {stage: seconds}."""
        count = len(people_per_image)
        self.total_seconds.extend([total / count] * count)
        self.people.extend(people_per_image)
        for stage in STAGES if stage_times else ():
            self.stage_seconds[stage].extend([stage_times[stage] / count] * count)

    def add_compile(self, seconds: float):
        self.compile_seconds += seconds

    def add_transfer(self, *, to_device: int = 0, to_host: int = 0):
        """Bytes copied between host and devices (padding images included)."""
        self.bytes_to_device += to_device
        self.bytes_to_host += to_host

    def summary(self) -> dict:
        """Mean ms per image (per stage when timed) and FPS, also by number of people; compile
        seconds; host transfer bytes per image."""
        images = len(self.total_seconds)
        base = {"images": images, "compile_seconds": self.compile_seconds}
        if not images:
            return base
        base.update(
            bytes_to_device_per_image=self.bytes_to_device / images,
            bytes_to_host_per_image=self.bytes_to_host / images,
        )
        people = np.asarray(self.people)
        groups = {}
        for low, high in ((0, 0), (1, 1), (2, 5), (6, 10), (11, 30)):
            rows = (people >= low) & (people <= high)
            if rows.any():
                name = f"{low}" if low == high else f"{low}-{high}"
                groups[name] = self._means(rows)
        return {**base, **self._means(np.ones_like(people, bool)), "by_people": groups}

    def _means(self, rows) -> dict:
        total = float(np.mean(np.asarray(self.total_seconds)[rows]))
        means = {"images_in_group": int(rows.sum()), "ms_per_image": 1e3 * total, "fps": 1 / total}
        if self.stage_seconds:
            means["stage_ms"] = {
                s: 1e3 * float(np.mean(np.asarray(self.stage_seconds[s])[rows])) for s in STAGES
            }
        return means

    def table(self, device: str = None) -> str:
        """Markdown table: ms per image (per stage when timed), total and FPS, overall and by
        number of people."""
        summary = self.summary()
        if not summary["images"]:
            return "No timed images."
        stages = STAGES if self.stage_seconds else ()
        header = "| images | " + "".join(f"{s} | " for s in stages) + "total ms | FPS |"
        lines = [
            f"Device: {device or jax.devices()[0].device_kind}; "
            f"compilation (excluded): {summary['compile_seconds']:.1f} s",
            "",
            header,
            "|" + "---|" * (len(stages) + 3),
        ]
        rows = [("all", summary)] + [(f"{k} people", v) for k, v in summary["by_people"].items()]
        for name, row in rows:
            cells = "".join(f"{row['stage_ms'][s]:.1f} | " for s in stages)
            lines.append(
                f"| {name} ({row['images_in_group']}) | {cells}"
                f"{row['ms_per_image']:.1f} | {row['fps']:.2f} |"
            )
        return "\n".join(lines)


def run_timed(stage_fns: dict, variables, images):
    """Runs the four stages one after another, blocking after each.

    Returns:
      (PoseOutputs, {stage: seconds}).
    """
    times = {}

    def timed(stage, *args):
        start = time.perf_counter()
        result = jax.block_until_ready(stage_fns[stage](*args))
        times[stage] = time.perf_counter() - start
        return result

    network = timed("backbone", variables, images)
    candidates = timed("local_kems", network)
    kams = timed("local_kams", variables, network, candidates)
    return timed("global_kams", network, candidates, kams), times
