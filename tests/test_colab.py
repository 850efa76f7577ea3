"""colab/demo.ipynb stays valid and runnable: its code cells run top to bottom in a subprocess.

Skipped: cells tagged "colab-only" (clone, GitHub install, official-weight conversion) and cells
starting with `!pip` or `%` (installs and magics; the repository is already installed here).
The cells run as one script from the notebook's folder, as Jupyter would start there.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "colab" / "demo.ipynb"
COLAB_ONLY = "colab-only"


@pytest.fixture(scope="module")
def notebook():
    with open(NOTEBOOK, encoding="utf-8") as f:
        return json.load(f)


def source(cell):
    return "".join(cell["source"])


def runnable(cell):
    """Whether the test runs `cell`: code, not colab-only, not an install or magic."""
    return (
        cell["cell_type"] == "code"
        and COLAB_ONLY not in cell["metadata"].get("tags", [])
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


def test_notebook_covers_install_and_official_weights(notebook):
    code = [source(c) for c in notebook["cells"] if c["cell_type"] == "code"]
    text = "\n".join(source(c) for c in notebook["cells"])
    assert any(c.startswith("!pip install") and "git+" in c for c in code)
    assert any(c.startswith("!pip install") and "-e ." in c for c in code)
    assert "python -m logocap_jax.convert" in text and ".pth.tar" in text
    assert "configs/w32.py" in text and "configs/w48.py" in text


def test_runnable_cells_are_plain_python(notebook):
    """A shell or magic line would break the script: such cells must be tagged colab-only."""
    for cell in filter(runnable, notebook["cells"]):
        for line in source(cell).splitlines():
            assert not line.lstrip().startswith(("!", "%")), line


def test_notebook_runs(notebook, tmp_path):
    script = tmp_path / "demo.py"
    script.write_text("\n\n".join(source(c) for c in notebook["cells"] if runnable(c)) + "\n")
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=NOTEBOOK.parent,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "5 people" in proc.stdout
    # The skeleton overlay and the instance panel were displayed.
    assert proc.stdout.count("IPython.core.display.Image object") == 2, proc.stdout
