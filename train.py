"""Trains LOGO-CAP: python train.py --config configs/<name>.py --workdir DIR.

Any config field can be overridden on the command line, e.g. --config.train.num_steps=1000.
Rerunning with the same --workdir resumes from the latest checkpoint (same next batch, same
parameters). On several hosts, pass --distributed on every host.
"""

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from logocap_jax import train_lib

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host runs).")
flags.DEFINE_bool("verbose", False, "Keep the libraries' INFO logs (orbax logs every save).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not FLAGS.verbose:
        logging.set_verbosity(logging.WARNING)
    if FLAGS.distributed:
        jax.distributed.initialize()
    train_lib.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    app.run(main)
