"""The package as a user installs it: a wheel built from the repository, installed into a fresh
virtual environment outside it, runs predict with --pretrained and evaluation on a bundled set.

The wheel is built offline (`pip wheel --no-build-isolation --no-index`) from a copy of the files
it is made of. The environment reuses the already installed dependencies so that nothing is
downloaded: their site folders are listed in a plain `.pth` file, so the `.pth` files inside them
(where an editable install of this repository lives, as an import hook or as a path) never run.
Every command runs from a temporary folder, without PYTHONPATH, and names no path of the
repository: what it reads comes
from the installed package (configs by name, the bundled data through `resources`) and from the
local release server (tests/release_server.py), the tiny weights in the W32 slot of a
release-shaped logocap.tar.gz.
"""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import release_server

from logocap_jax.weights import pretrained

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
# What the wheel is built from (pyproject.toml maps configs/ and data/ in).
SOURCES = (
    "pyproject.toml",
    "README.md",
    "logocap_jax",
    "configs",
    "data",
    "tests/data/golden/tiny_state_dict.npz",
)
IMAGE = "000000197388.jpg"  # the tiny model finds people on it
TIMEOUT_S = 300
SITE_FOLDERS = ("site-packages", "dist-packages")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    source = tmp_path_factory.mktemp("source")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, source / name)
    dist = tmp_path_factory.mktemp("dist")
    command = ["wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", dist, source]
    run([sys.executable, "-m", "pip", *command, "-q"], cwd=dist)
    (built,) = dist.glob("logocap_jax-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh environment holding the wheel, over the installed dependencies."""
    venv = tmp_path_factory.mktemp("venv")
    run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=venv)
    python = venv / "bin" / "python"
    (purelib,) = run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=venv
    ).stdout.split()
    # This interpreter's site folders (a virtual environment's and, if it sees them, the
    # system's), not the other entries of its sys.path (a legacy editable install's path).
    dependencies = [entry for entry in sys.path if Path(entry).name in SITE_FOLDERS]
    Path(purelib, "installed_dependencies.pth").write_text("\n".join(dependencies) + "\n")
    run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel], cwd=venv)
    return venv


def environment(**variables) -> dict:
    """The subprocess environment: no PYTHONPATH, no proxies, CPU, plus `variables`."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env = release_server.local_only_environment(env)
    env.update(JAX_PLATFORMS="cpu", **variables)
    return env


def run(command, *, cwd, env=None) -> subprocess.CompletedProcess:
    """Runs `command` (which must name no path of the repository) and checks its status."""
    command = [str(arg) for arg in command]
    assert not any(str(ROOT) in arg for arg in command[1:]), command
    proc = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
    )
    assert proc.returncode == 0, (command, proc.stdout[-3000:], proc.stderr[-3000:])
    return proc


def test_wheel_holds_the_packages_configs_data_weights_and_commands(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = {
        path.parent.relative_to(ROOT).as_posix()
        for path in (ROOT / "logocap_jax").rglob("__init__.py")
    }
    for package in packages:
        assert f"{package}/__init__.py" in names, package
    for folder, shipped in (("configs", "configs"), ("data", "bundled_data")):
        for path in (ROOT / folder).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                relative = path.relative_to(ROOT / folder).as_posix()
                assert f"logocap_jax/{shipped}/{relative}" in names, path
    assert "logocap_jax/tiny_weights/tiny_state_dict.npz" in names
    entry_points = zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    )
    for command in ("logocap-predict", "logocap-eval", "logocap-convert", "logocap-train"):
        assert command.encode() in entry_points


def test_installed_wheel_predicts_with_pretrained_and_evaluates(venv, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    bin_dir, cache = venv / "bin", tmp_path / "cache"
    located = run(
        [
            bin_dir / "python",
            "-c",
            "import importlib.util, logocap_jax\n"
            "from logocap_jax import resources\n"
            "print(logocap_jax.__file__)\n"
            "print(resources.data_path('coco_mini'))\n"
            "print(resources.tiny_state_dict())\n"
            "print([importlib.util.find_spec(n) for n in ('train', 'eval', 'configs')])",
        ],
        cwd=work,
        env=environment(),
    ).stdout.splitlines()
    package_file, coco_mini, tiny = map(Path, located[:3])
    for path in (package_file, coco_mini, tiny):
        assert path.is_relative_to(venv) and path.exists(), located
    # The repository's own modules are out of reach (they would be found through a path to it).
    assert located[3] == "[None, None, None]", located

    server = release_server.Server()
    pth = release_server.tiny_pth(str(tmp_path / "tiny.pth.tar"))
    server.files["/release/logocap.tar.gz"] = release_server.logocap_archive(pth)
    env = environment(
        **{
            pretrained.RELEASE_URL_ENV: f"{server.url}/release",
            pretrained.CACHE_DIR_ENV: str(cache),
        }
    )
    try:
        # The tiny weights sit in the W32 slot of the archive: --config tiny fits them.
        predicted = run(
            [
                bin_dir / "logocap-predict",
                "--pretrained",
                "w32",
                "--config",
                "tiny",
                coco_mini / "images" / IMAGE,
                "--output_dir",
                "out",
            ],
            cwd=work,
            env=env,
        )
    finally:
        server.stop()
    assert server.requests == ["/release/logocap.tar.gz"], predicted.stderr[-2000:]
    results = json.loads((work / "out" / "results.json").read_text())
    assert isinstance(results, list) and results, results
    assert {entry["image_id"] for entry in results} == {197388}
    assert (work / "out" / IMAGE.replace(".jpg", ".png")).stat().st_size > 1000

    # From the cache, with the server gone.
    printed = run(
        [bin_dir / "python", "-m", "logocap_jax.commands.pretrained", "w32"], cwd=work, env=env
    )
    assert printed.stdout == str(cache / "w32" / "checkpoint") + "\n"
    evaluated = run(
        [
            bin_dir / "logocap-eval",
            "--pretrained",
            "w32",
            "--config",
            "tiny",
            "--annotations",
            coco_mini / "annotations" / "person_keypoints_mini.json",
            "--images",
            coco_mini / "images",
            "--max_images",
            "2",
            "--output_dir",
            "eval_out",
        ],
        cwd=work,
        env=env,
    )
    stats = json.loads((work / "eval_out" / "stats.json").read_text())
    assert 0.0 <= stats["AP"] <= 1.0, stats
    assert "Outputs in eval_out/" in evaluated.stdout
