"""Every CMP variant's training step sharded over 8 (fake) CPU devices equals it on one device.

The full sharded train step through `trainer` is covered by tests/test_train_sharding.py
(conv) and tests/test_ablate.py (two other variants through the runner on 8 devices).
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cmp_variant_cases import cases

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).parent / "cmp_step_main.py"
ROOT = SCRIPT.parent.parent


@pytest.fixture(scope="module")
def steps(tmp_path_factory):
    out = tmp_path_factory.mktemp("cmp_sharding") / "steps.npz"
    python_path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = dict(
        os.environ,
        PYTHONPATH=python_path,  # this checkout's package, not another installed copy
        XLA_FLAGS="--xla_force_host_platform_device_count=8",
        JAX_PLATFORMS="cpu",
    )
    subprocess.run(
        [sys.executable, str(SCRIPT), str(out)], check=True, env=env, cwd=SCRIPT.parent, timeout=900
    )
    with np.load(out) as data:
        return {k: data[k] for k in data.files}


def test_ran_on_eight_devices(steps):
    assert int(steps["device_count"]) == 8


@pytest.mark.parametrize("case", sorted(cases()))
def test_sharded_step_equals_one_device(steps, case):
    names = {key.split("|", 2)[2] for key in steps if key.startswith(f"{case}|all|")}
    assert "loss" in names
    assert case.startswith("fixed_kernel-") or any(n.startswith("grads/") for n in names)
    for name in sorted(names):
        sharded, single = steps[f"{case}|all|{name}"], steps[f"{case}|one|{name}"]
        assert np.all(np.isfinite(sharded)), name
        # Sums split over devices in float32: relative differences of a few ulps expected.
        error = np.linalg.norm(sharded - single) / max(np.linalg.norm(single), 1e-12)
        assert error < 1e-5, (name, error)
