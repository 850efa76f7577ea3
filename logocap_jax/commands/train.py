"""Trains LOGO-CAP: python train.py --config configs/<name>.py --workdir DIR (or `logocap-train`).

Any config field can be overridden on the command line, e.g. --config.train.num_steps=1000.
Rerunning with the same --workdir resumes from the latest checkpoint (same next batch, same
parameters). On several hosts, pass --distributed on every host.

A user error (a missing file, an unknown config key, a checkpoint or data set that does not fit
the config) prints one line and exits with status 2; --verbose shows the traceback.
"""

import jax
from absl import flags, logging

from logocap_jax import config_utils, errors
from logocap_jax.commands import cli
from logocap_jax.training import trainer
from logocap_jax.weights import checkpoints, convert

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "config",
    None,
    "Training config file; override any of its fields with --config.<key>=<value>.",
)
flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host runs).")
flags.DEFINE_bool(
    "verbose",
    False,
    "Keep the libraries' INFO logs (orbax logs every save) and show the traceback of an error.",
)
flags.DEFINE_bool(
    "quiet",
    False,
    "No progress: neither the bar (on a terminal) nor the progress lines (in a log file).",
)
flags.DEFINE_string(
    "compilation_cache",
    None,
    "Keep compiled XLA programs in this directory (JAX's persistent compilation cache).",
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv, config):
    if len(argv) > 1:
        raise errors.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.verbose:
        logging.set_verbosity(logging.WARNING)
    if FLAGS.compilation_cache:
        cli.use_compilation_cache(FLAGS.compilation_cache)
    if FLAGS.distributed:
        jax.distributed.initialize()
    # A work directory of another config fails here in one line, not deep in the restore.
    template = convert.model_template(config_utils.build_model(config))
    checkpoints.check_fits(FLAGS.workdir, template, missing_ok=True)
    trainer.train_and_evaluate(config, FLAGS.workdir, progress=not FLAGS.quiet)


def entry_point():
    """The `logocap-train` command (and the repository's train.py)."""
    cli.run_absl(main)


if __name__ == "__main__":
    entry_point()
