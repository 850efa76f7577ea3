"""What a training run reports, from process 0: metrics.jsonl, TensorBoard event files in
<workdir>/tensorboard/ and, with train.wandb_project set, Weights & Biases.

The three get the same values: a train row's or an evaluation's values become the scalars
`train/<name>` and `eval/<name>` at the row's step; an evaluation's drawings become the images
`eval_images/<image id>`. The config goes to TensorBoard as the text `config` when a run starts
from scratch (a resumed run is the same run).
"""

import json
import os

import jax
import numpy as np

from logocap_jax.training import event_files, run_io, wandb_log

TENSORBOARD_DIR = "tensorboard"


def config_markdown(config) -> str:
    """The config as a Markdown code block (JSON), for TensorBoard's text dashboard."""
    return "\n".join("    " + line for line in config.to_json_best_effort(indent=2).splitlines())


class TrainingLog:
    """Writes a run's rows, scalars and images; every process may create one, only process 0
    writes."""

    def __init__(self, workdir: str, config, *, last_step: int | None):
        """Opens the outputs; the TensorBoard files are trimmed to `last_step` first
        (`event_files.trim`), so a resumed run shows no step twice.

        Args:
          workdir: the training work directory.
          config: the training config.
          last_step: the step the run resumes after (its restored checkpoint's); None for a run
            that starts from scratch.

        Raises:
          MissingDependencyError: train.wandb_project is set and wandb is not installed.
        """
        self.rows = run_io.MetricsWriter(workdir)
        self.events = self.wandb = None
        if jax.process_index() != 0:
            return
        project = config.train.wandb_project
        if project:
            plain = json.loads(config.to_json_best_effort())
            self.wandb = wandb_log.WandbRun(project, workdir, plain)
        self.events = event_files.EventWriter(
            os.path.join(workdir, TENSORBOARD_DIR), last_step=last_step
        )
        if last_step is None:
            self.events.text(0, "config", config_markdown(config))

    def write(self, step: int, split: str, values: dict, images: dict | None = None) -> None:
        """Writes a row of `split` ('train' or 'eval') at `step`.

        Args:
          step: the training step.
          split: 'train' or 'eval'.
          values: {name: number}.
          images: {image id: RGB uint8 [h, w, 3]} (evaluation drawings).
        """
        self.rows.write(step, split, values)
        if self.events is None:
            return
        scalars = {f"{split}/{name}": float(value) for name, value in values.items()}
        tagged = {
            f"{split}_images/{key}": np.asarray(image) for key, image in (images or {}).items()
        }
        self.events.scalars(step, scalars)
        if tagged:
            self.events.images(step, tagged)
        if self.wandb is not None:
            self.wandb.log(step, scalars, tagged)

    def close(self) -> None:
        if self.events is not None:
            self.events.close()
        if self.wandb is not None:
            self.wandb.finish()
        self.events = self.wandb = None
