"""Training curves without TensorBoard: the loss terms and keypoint AP against the step, one
line per run, from the runs' metrics.jsonl (the curves command, and the ablation runner's plot).

Needs matplotlib (`pip install 'logocap-jax[ablate]'`).
"""

import json
import math
import os

from logocap_jax import errors

LOSS_TERMS = ("total", "heatmaps", "offsets", "oks", "refined_heatmaps")
PANELS = (*LOSS_TERMS, "AP")
METRICS_FILE = "metrics.jsonl"
# Inches per panel, and at most this many panels side by side.
PANEL_SIZE = (5.5, 4.0)
COLUMNS = 3


def read_metrics(workdir: str) -> dict[str, dict[int, dict]]:
    """{'train': {step: row}, 'eval': {step: row}} of a work directory's metrics.jsonl (empty
    if there is none). A step logged twice (by a run that died after logging it and was
    resumed from an earlier checkpoint) keeps its last row, the one the resumed run wrote."""
    rows = {"train": {}, "eval": {}}
    path = os.path.join(workdir, METRICS_FILE)
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                row = json.loads(line)
                rows[row["split"]][row["step"]] = row
    return rows


def require_matplotlib():
    """matplotlib.pyplot, drawing into files (the Agg backend).

    Raises:
      MissingDependencyError: matplotlib is not installed.
    """
    try:
        import matplotlib
    except ImportError:
        raise errors.MissingDependencyError(
            "the curves need matplotlib, which is not installed: pip install 'logocap-jax[ablate]'"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _series(metrics: dict, panel: str) -> tuple[list, list]:
    """(steps, values) of one panel: a loss term of the train rows, or AP (%) of the eval rows."""
    if panel == "AP":
        rows = sorted(metrics["eval"].items())
        return [step for step, _ in rows], [100 * row["AP"] for _, row in rows]
    rows = sorted((step, row) for step, row in metrics["train"].items() if panel in row)
    return [step for step, _ in rows], [row[panel] for _, row in rows]


def plot(runs, path: str, panels=PANELS) -> None:
    """Draws the panels, one line per run, into an image file.

    Args:
      runs: (label, metrics) pairs; metrics as `read_metrics` returns them.
      path: the image file (PNG by its extension).
      panels: loss terms of the train rows (log scale), or 'AP' (of the eval rows, in %).

    Raises:
      MissingDependencyError: matplotlib is not installed.
    """
    plt = require_matplotlib()
    columns = min(COLUMNS, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure, axes = plt.subplots(
        rows, columns, figsize=(PANEL_SIZE[0] * columns, PANEL_SIZE[1] * rows), squeeze=False
    )
    for axis, panel in zip(axes.flat, panels):
        for label, metrics in runs:
            steps, values = _series(metrics, panel)
            if steps:
                axis.plot(steps, values, "o-" if panel == "AP" else "-", label=label)
        if panel == "AP":
            axis.set(xlabel="step", ylabel="AP (%)", title="keypoint AP")
        else:
            axis.set(xlabel="step", ylabel="loss", yscale="log", title=f"{panel} loss")
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend()
    for axis in axes.flat[len(panels) :]:
        axis.set_visible(False)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
