"""Where the files shipped with the package are: the bundled configs and mini data sets.

The repository keeps one copy of each: `configs/` (w32, w48, tiny, mini) and `data/` (the
coco_mini and ochuman_mini sets with their licences) at its root, and the tiny model's test
weights in `tests/data/golden/`. A wheel ships them inside the package, mapped in by
pyproject.toml's `package-dir`:

  configs/                                  ->  logocap_jax/configs/
  data/                                     ->  logocap_jax/bundled_data/
  tests/data/golden/tiny_state_dict.npz     ->  logocap_jax/tiny_weights/tiny_state_dict.npz

So an installed package finds them next to its modules, and a source checkout (run in place or
installed in editable mode) finds them next to the `logocap_jax` folder. Nothing here depends on
the working directory. This module imports nothing heavy: config files use it.
"""

import os

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))

# The data sets of data/ (each an annotations/person_keypoints_mini.json and an images/ folder).
BUNDLED_DATASETS = ("coco_mini", "ochuman_mini")


_GOLDEN = os.path.join("tests", "data", "golden")


def _shipped(in_package: str, in_checkout: str) -> str:
    """The folder `in_package` of an installed package, else `in_checkout` of a checkout."""
    candidates = (
        os.path.join(_PACKAGE_DIR, in_package),
        os.path.join(os.path.dirname(_PACKAGE_DIR), in_checkout),
    )
    for candidate in candidates:
        if os.path.isdir(candidate):
            return candidate
    raise FileNotFoundError(
        f"The bundled {in_checkout}/ folder is missing: looked for {' and '.join(candidates)}. "
        "Reinstall logocap-jax (a wheel ships it as logocap_jax/"
        f"{in_package}) or run from a complete source checkout."
    )


def configs_dir() -> str:
    """The folder of the bundled config files (w32.py, w48.py, tiny.py, mini.py)."""
    return _shipped("configs", "configs")


def config_names() -> list[str]:
    """Names of the bundled configs, sorted: the `<name>` of each `<name>.py`."""
    return sorted(
        name[: -len(".py")]
        for name in os.listdir(configs_dir())
        if name.endswith(".py") and not name.startswith("_")
    )


def data_dir() -> str:
    """The folder of the bundled data sets (the repository's data/)."""
    return _shipped("bundled_data", "data")


def data_path(*parts: str) -> str:
    """A path inside the bundled data, e.g. data_path("coco_mini", "images")."""
    return os.path.join(data_dir(), *parts)


def tiny_state_dict() -> str:
    """The tiny model's official state dict (`.npz`, for the tiny config): the deterministic,
    untrained test weights of the parity tests, so its poses are not meaningful. The demo uses
    them when the official weights cannot be downloaded."""
    return os.path.join(_shipped("tiny_weights", _GOLDEN), "tiny_state_dict.npz")
