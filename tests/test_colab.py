"""colab/demo.ipynb stays valid and runnable: its code cells run top to bottom in a subprocess,
twice: with the official weights from a local release server, and offline with the fallback.

Skipped: cells tagged "colab-only" (the GitHub install, the upload widget) and cells starting with
`!pip` or `%`. The cells run as one script from a temporary folder, with this checkout on
PYTHONPATH, so the photos come through `resources` as from an installed package. As papermill
does, values for the cell tagged "parameters" go in right after it: against the local server,
whose logocap.tar.gz holds the tiny weights in the W32 slot (tests/release_server.py), the
notebook loads `pretrained.load("w32", config="tiny")`; everything else is the notebook's own.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
import release_server

from logocap_jax.weights import pretrained

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "colab" / "demo.ipynb"
COLAB_ONLY = "colab-only"
PARAMETERS = "parameters"
# The tiny weights find five people on this photo (the parity tests' image).
FIRST_PHOTO_LINE = "000000197388.jpg: 5 people"
SHOWN = "IPython.core.display.Image object"
# The video section's clip (video/demo_clip.py) and its inline player.
VIDEO_LINE = "skiers: 16 frames (320x240)"
PLAYER = "IPython.core.display.HTML object"


@pytest.fixture(scope="module")
def notebook():
    with open(NOTEBOOK, encoding="utf-8") as f:
        return json.load(f)


def source(cell):
    return "".join(cell["source"])


def tags(cell):
    return cell["metadata"].get("tags", [])


def runnable(cell):
    """Whether the test runs `cell`: code, not colab-only, not an install or magic."""
    return (
        cell["cell_type"] == "code"
        and COLAB_ONLY not in tags(cell)
        and not source(cell).lstrip().startswith(("!pip", "%"))
    )


def test_notebook_is_nbformat4(notebook):
    assert notebook["nbformat"] == 4 and isinstance(notebook["nbformat_minor"], int)
    assert notebook["metadata"]["kernelspec"]["language"] == "python"
    for cell in notebook["cells"]:
        assert cell["cell_type"] in ("markdown", "code")
        assert isinstance(cell["metadata"], dict)
        assert isinstance(cell["source"], list) and all(isinstance(s, str) for s in cell["source"])
        if cell["cell_type"] == "code":
            # Committed without outputs, so the file stays small and diffs stay readable.
            assert cell["outputs"] == [] and cell["execution_count"] is None


def test_one_owner_variable_at_the_top(notebook):
    text = "\n".join(source(c) for c in notebook["cells"])
    assert "<owner>" not in text
    code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    assert tags(code[0]) == [PARAMETERS]
    assert source(code[0]).count("GITHUB_OWNER = ") == 1
    assert 'MODEL = "w32"' in source(code[0]) and "CONFIG = None" in source(code[0])
    uses = [c for c in code[1:] if "GITHUB_OWNER" in source(c)]
    assert len(uses) == 1 and COLAB_ONLY in tags(uses[0])
    assert source(uses[0]).startswith('!pip install -q "git+https://github.com/{GITHUB_OWNER}/')


def test_notebook_covers_weights_upload_runtime_and_commands(notebook):
    text = "\n".join(source(c) for c in notebook["cells"])
    colab_only = "\n".join(source(c) for c in notebook["cells"] if COLAB_ONLY in tags(c))
    assert "pretrained.load(MODEL, config=CONFIG)" in text
    assert colab_only.count("files.upload()") == 2  # a photo and a video
    assert "run.run_video(predictor, reader, tracker" in text
    for word in ("CPU", "GPU", "TPU", "jax.devices()"):
        assert word in text, word
    assert "logocap-predict --pretrained w32" in text and "logocap-eval --pretrained w32" in text


def test_runnable_cells_are_plain_python(notebook):
    """A shell or magic line would break the script: such cells must be tagged colab-only."""
    for cell in filter(runnable, notebook["cells"]):
        for line in source(cell).splitlines():
            assert not line.lstrip().startswith(("!", "%")), line


def script(notebook, parameters: str) -> str:
    """The runnable cells as one script, `parameters` after the parameters cell."""
    parts = []
    for cell in filter(runnable, notebook["cells"]):
        parts.append(source(cell))
        if PARAMETERS in tags(cell):
            parts.append(parameters)
    return "\n\n".join(parts) + "\n"


def run_notebook(notebook, tmp_path, release_url: str, parameters: str = "") -> str:
    """Runs the notebook's script with the cache in tmp_path; returns its stdout."""
    path = tmp_path / "demo.py"
    path.write_text(script(notebook, parameters))
    env = release_server.local_only_environment(dict(os.environ))
    env.update(
        PYTHONPATH=str(ROOT),
        JAX_PLATFORMS="cpu",
        **{pretrained.RELEASE_URL_ENV: release_url, pretrained.CACHE_DIR_ENV: str(tmp_path)},
    )
    proc = subprocess.run(
        [sys.executable, str(path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


def assert_drawn(stdout: str, tmp_path) -> None:
    assert FIRST_PHOTO_LINE in stdout, stdout
    assert "000000000785.jpg: " in stdout and "000817.jpg: " in stdout, stdout
    assert "ms per image at this size" in stdout, stdout
    # Two bundled photos, the instance panel, the own (here: stand-in) photo.
    assert stdout.count(SHOWN) == 4, stdout
    assert VIDEO_LINE in stdout and "track ids in the first frames: [[" in stdout, stdout
    assert stdout.count(PLAYER) == 1, stdout
    assert (tmp_path / "out" / "skiers.jsonl").read_text().count("\n") == 16
    video = cv2.VideoCapture(str(tmp_path / "out" / "skiers.mp4"))
    assert sum(1 for _ in iter(lambda: video.read()[0], False)) == 16


def test_notebook_runs_with_official_weights_from_the_release(notebook, tmp_path):
    server = release_server.Server()
    pth = release_server.tiny_pth(str(tmp_path / "tiny.pth.tar"))
    server.files["/release/logocap.tar.gz"] = release_server.logocap_archive(pth)
    try:
        stdout = run_notebook(notebook, tmp_path, f"{server.url}/release", 'CONFIG = "tiny"')
    finally:
        server.stop()
    assert server.requests == ["/release/logocap.tar.gz"]
    assert "Using the official W32 COCO weights" in stdout and "NOTE:" not in stdout, stdout
    assert (tmp_path / "w32" / "checkpoint").is_dir()
    assert_drawn(stdout, tmp_path)


def test_notebook_falls_back_to_tiny_weights_offline(notebook, tmp_path):
    stdout = run_notebook(notebook, tmp_path, release_server.closed_port_url("/release"))
    assert "NOTE: the official weights could not be downloaded" in stdout, stdout
    assert "Could not download http://127.0.0.1:" in stdout, stdout
    assert "Using the tiny untrained test weights (offline fallback)" in stdout, stdout
    assert not (tmp_path / "w32").exists()
    assert_drawn(stdout, tmp_path)
