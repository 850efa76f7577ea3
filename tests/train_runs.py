"""The command line of a short training run of configs/mini.py, shared by the tests that run
train.py in a subprocess (resume, kill during a save, watching a run)."""

import sys

from golden_arrays import ROOT


def mini_command(workdir, data_dir, steps: int, *overrides: str) -> list:
    """train.py on configs/mini.py for `steps` steps, logging every step, with the data set
    built in `data_dir` and further `--config.<key>=<value>` overrides or flags."""
    return [
        sys.executable,
        str(ROOT / "train.py"),
        "--config",
        str(ROOT / "configs" / "mini.py"),
        "--workdir",
        str(workdir),
        f"--config.train.num_steps={steps}",
        "--config.train.log_every_steps=1",
        f"--config.data.data_dir={data_dir}",
        *overrides,
    ]
