"""Optional Weights & Biases logging of a training run (`train.wandb_project`).

wandb is an optional extra (`pip install 'logocap-jax[wandb]'`), imported only when a project
is set. The W&B run id is kept in <workdir>/wandb_run_id, so a resumed training continues the
same W&B run. Values are logged against the training step as a W&B metric named `step` rather
than W&B's own step counter, which drops whatever is logged at a step below the last one it got:
after a crash between two checkpoints, the resumed run logs those steps again. W&B keeps what it
received before the crash, so such steps show twice there (the TensorBoard files do not,
`logocap_jax.training.event_files`).
"""

import os
import secrets

import numpy as np

from logocap_jax import errors

RUN_ID_FILE = "wandb_run_id"
STEP_METRIC = "step"


def import_wandb(project: str):
    """The wandb module.

    Raises:
      MissingDependencyError: wandb is not installed.
    """
    try:
        import wandb
    except ImportError:
        raise errors.MissingDependencyError(
            f"train.wandb_project={project!r} needs wandb, which is not installed: "
            "pip install 'logocap-jax[wandb]' (or leave train.wandb_project empty)"
        ) from None
    return wandb


def run_id(workdir: str) -> str:
    """The W&B run id of a work directory, created and recorded on first use."""
    path = os.path.join(workdir, RUN_ID_FILE)
    if os.path.exists(path):
        with open(path) as f:
            return f.read().strip()
    new = secrets.token_hex(4)
    os.makedirs(workdir, exist_ok=True)
    with open(path, "w") as f:
        f.write(new + "\n")
    return new


class WandbRun:
    """The W&B run of a work directory: scalars and images against the training step."""

    def __init__(self, project: str, workdir: str, config: dict):
        """Starts or resumes the run (named after the work directory).

        Args:
          project: the W&B project.
          workdir: the training work directory (W&B's files go to its wandb/ folder).
          config: the training config as plain data, shown with the run.

        Raises:
          MissingDependencyError: wandb is not installed.
        """
        self._wandb = import_wandb(project)
        self._run = self._wandb.init(
            project=project,
            id=run_id(workdir),
            resume="allow",
            dir=workdir,
            name=os.path.basename(os.path.abspath(workdir)),
            config=config,
        )
        self._run.define_metric(STEP_METRIC)
        self._run.define_metric("*", step_metric=STEP_METRIC)

    def log(self, step: int, scalars: dict[str, float], images: dict[str, np.ndarray]) -> None:
        """Scalars and RGB uint8 images, by tag, at training step `step`."""
        values = {STEP_METRIC: int(step), **scalars}
        values.update({tag: self._wandb.Image(image) for tag, image in images.items()})
        self._run.log(values)

    def finish(self) -> None:
        self._run.finish()
