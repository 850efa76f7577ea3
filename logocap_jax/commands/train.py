"""Trains LOGO-CAP: python train.py --config configs/<name>.py --workdir DIR (or `logocap-train`).

Any config field can be overridden on the command line, e.g. --config.train.num_steps=1000.
Rerunning with the same --workdir resumes from the latest checkpoint (same next batch, same
parameters). On several hosts, pass --distributed on every host.

A user error (a missing file, an unknown config key, a checkpoint or data set that does not fit
the config) prints one line and exits with status 2; --verbose shows the traceback.
"""

import jax
from absl import flags, logging

from logocap_jax import config_utils
from logocap_jax.commands import cli
from logocap_jax.training import trainer
from logocap_jax.weights import checkpoints, convert


def define_flags(flag_values: flags.FlagValues) -> None:
    define = cli.definer(flag_values)
    define(
        flags.DEFINE_string,
        "workdir",
        None,
        "Directory for checkpoints and metrics.",
        required=True,
    )
    define(
        flags.DEFINE_bool,
        "distributed",
        False,
        "Call jax.distributed.initialize() (multi-host runs).",
    )
    define(
        flags.DEFINE_bool,
        "quiet",
        False,
        "No progress: neither the bar (on a terminal) nor the progress lines (in a log file).",
    )


def main(argv=None) -> None:
    """Trains (or resumes) the run of the command line.

    Raises:
      UserError: a bad command line, config, data set or work directory (`cli.run_main` prints
        it as one line).
    """
    args, _ = cli.parse(
        argv,
        define_flags,
        doc=__doc__ + "\n--verbose also keeps the libraries' INFO logs.",
        config=True,
    )
    if not args.verbose:
        logging.set_verbosity(logging.WARNING)
    if args.distributed:
        jax.distributed.initialize()
    config = args.config
    # A work directory of another config fails here in one line, not deep in the restore.
    template = convert.model_template(config_utils.build_model(config))
    checkpoints.check_fits(args.workdir, template, missing_ok=True)
    trainer.train_and_evaluate(config, args.workdir, progress=not args.quiet)


def entry_point():
    """The `logocap-train` command (and the repository's train.py)."""
    cli.run_main(main)


if __name__ == "__main__":
    entry_point()
