"""The curves command: the loss terms and keypoint AP of training runs against the step, one line
per run, as a PNG (from the runs' metrics.jsonl; no TensorBoard needed).

  python -m logocap_jax.commands.curves workdir/a workdir/b --out curves.png

Needs matplotlib (`pip install 'logocap-jax[ablate]'`).
"""

import os

from absl import flags

from logocap_jax import errors
from logocap_jax.commands import cli
from logocap_jax.training import curves


def define_flags(flag_values: flags.FlagValues) -> None:
    cli.definer(flag_values)(flags.DEFINE_string, "out", "curves.png", "The image to write.")


def main(argv=None) -> None:
    """Plots the runs of the command line.

    Raises:
      UsageError: no work directory is given.
      InputNotFoundError: a work directory has no metrics.jsonl.
      MissingDependencyError: matplotlib is not installed.
    """
    args, workdirs = cli.parse(
        argv,
        define_flags,
        doc=__doc__ + "\nArguments: training work directories.",
        positional=True,
    )
    if not workdirs:
        raise errors.UsageError("give one or more training work directories")
    curves.require_matplotlib()
    runs = []
    for workdir in workdirs:
        path = os.path.join(workdir, curves.METRICS_FILE)
        if not os.path.exists(path):
            raise errors.InputNotFoundError(
                f"{path} does not exist: not a training work directory, or its run has not "
                "logged yet"
            )
        runs.append((os.path.normpath(workdir), curves.read_metrics(workdir)))
    curves.plot(runs, args.out)
    print(f"Curves of {len(runs)} runs in {args.out}")


if __name__ == "__main__":
    cli.run_main(main)
