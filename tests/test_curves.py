"""python -m logocap_jax.commands.curves: the losses and AP of two work directories (metrics.jsonl
written by hand) in one PNG, one line per run; the errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from logocap_jax import errors
from logocap_jax.training import curves

ROOT = Path(__file__).resolve().parents[1]


def _write_metrics(workdir: Path, scale: float, *, resumed_at=None):
    """Train rows at steps 1..8, eval rows at 0, 4, 8; with `resumed_at`, steps after it are
    logged a second time (a run resumed from an earlier checkpoint) with other values."""
    rows = [{"step": s, "split": "eval", "AP": 0.05 * s * scale, "AP50": 0.1} for s in (0, 4, 8)]
    for step in range(1, 9):
        losses = {term: scale / step for term in curves.LOSS_TERMS}
        rows.append({"step": step, "split": "train", **losses, "learning_rate": 1e-3})
    if resumed_at is not None:
        rows += [
            {"step": step, "split": "train", **{term: 100.0 for term in curves.LOSS_TERMS}}
            for step in range(resumed_at + 1, 9)
        ]
    workdir.mkdir(parents=True)
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


def _run(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, "-m", "logocap_jax.commands.curves", *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_two_runs_in_one_png(tmp_path):
    _write_metrics(tmp_path / "a", 1.0)
    _write_metrics(tmp_path / "b", 2.0, resumed_at=5)
    out = tmp_path / "curves.png"
    result = _run(tmp_path / "a", tmp_path / "b", "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Curves of 2 runs in {out}" in result.stdout
    image = cv2.imread(str(out))
    # Six panels (five loss terms and AP), three per row.
    assert image.shape == (800, 1650, 3)
    assert image.std() > 10
    panels = [
        image[r * 400 : (r + 1) * 400, c * 550 : (c + 1) * 550] for r in (0, 1) for c in (0, 1, 2)
    ]
    # Every panel holds lines of both runs' colours (matplotlib's first two: blue, orange).
    for panel in panels:
        blue, green, red = (panel[..., i].astype(int) for i in range(3))
        assert ((blue > 150) & (red < 80)).sum() > 50  # tab:blue
        assert ((red > 200) & (blue < 80) & (green > 100)).sum() > 50  # tab:orange


def test_a_step_logged_twice_keeps_the_resumed_row(tmp_path):
    _write_metrics(tmp_path / "b", 2.0, resumed_at=5)
    metrics = curves.read_metrics(str(tmp_path / "b"))
    assert sorted(metrics["train"]) == list(range(1, 9))
    assert [metrics["train"][s]["total"] for s in (5, 6)] == [2.0 / 5, 100.0]
    assert sorted(metrics["eval"]) == [0, 4, 8]
    assert curves.read_metrics(str(tmp_path / "missing")) == {"train": {}, "eval": {}}


def test_a_directory_without_metrics_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    result = _run(tmp_path / "empty", "--out", tmp_path / "x.png")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"curves.py: error: {tmp_path / 'empty' / 'metrics.jsonl'} does not exist: not a "
        "training work directory, or its run has not logged yet"
    ]


def test_missing_matplotlib_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(errors.MissingDependencyError, match=r"pip install 'logocap-jax\[ablate\]'"):
        curves.require_matplotlib()
