"""Per-stage timing of the test-time pipeline, reported as in the paper's Table 4."""

import collections
import dataclasses
import time

import jax
import numpy as np

from logocap_jax.pipeline import STAGES


@dataclasses.dataclass
class SpeedReport:
    """Accumulates per-image stage times (seconds) and people counts of timed batches.

    The first batch of every input shape includes XLA compilation: its wall time is kept apart
    in `compile_seconds` and left out of the averages.
    """

    stage_seconds: dict = dataclasses.field(default_factory=lambda: collections.defaultdict(list))
    total_seconds: list = dataclasses.field(default_factory=list)
    people: list = dataclasses.field(default_factory=list)
    compile_seconds: float = 0.0

    def add(self, stage_times: dict, total: float, people_per_image, *, compiled: bool):
        """Records one batch: stage_times {stage: s}, total s, people found in each image."""
        count = len(people_per_image)
        if compiled:
            self.compile_seconds += total
            return
        for stage in STAGES:
            self.stage_seconds[stage].extend([stage_times[stage] / count] * count)
        self.total_seconds.extend([total / count] * count)
        self.people.extend(people_per_image)

    def summary(self) -> dict:
        """Mean ms per image per stage and in total, FPS, and the same by number of people."""
        if not self.total_seconds:
            return {"images": 0, "compile_seconds": self.compile_seconds}
        people = np.asarray(self.people)
        groups = {}
        for low, high in ((0, 0), (1, 1), (2, 5), (6, 10), (11, 30)):
            rows = (people >= low) & (people <= high)
            if rows.any():
                name = f"{low}" if low == high else f"{low}-{high}"
                groups[name] = self._means(rows)
        return {
            "images": len(people),
            "compile_seconds": self.compile_seconds,
            **self._means(np.ones_like(people, bool)),
            "by_people": groups,
        }

    def _means(self, rows) -> dict:
        total = float(np.mean(np.asarray(self.total_seconds)[rows]))
        stages = {s: 1e3 * float(np.mean(np.asarray(self.stage_seconds[s])[rows])) for s in STAGES}
        return {
            "images_in_group": int(rows.sum()),
            "ms_per_image": 1e3 * total,
            "fps": 1.0 / total,
            "stage_ms": stages,
        }

    def table(self, device: str = None) -> str:
        """Markdown table: ms per image for each stage, total and FPS, overall and by people."""
        summary = self.summary()
        if not summary["images"]:
            return "No timed images (every batch was a first, compiling call)."
        header = "| images | " + " | ".join(STAGES) + " | total ms | FPS |"
        lines = [
            f"Device: {device or jax.devices()[0].device_kind}; "
            f"compilation (excluded): {summary['compile_seconds']:.1f} s",
            "",
            header,
            "|" + "---|" * (len(STAGES) + 3),
        ]
        rows = [("all", summary)] + [(f"{k} people", v) for k, v in summary["by_people"].items()]
        for name, row in rows:
            cells = " | ".join(f"{row['stage_ms'][s]:.1f}" for s in STAGES)
            lines.append(
                f"| {name} ({row['images_in_group']}) | {cells} | "
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
