"""The device mesh of the package's jitted programs: one axis, 'data', that batches are split
over (training over every device of every process, inference over a process's own devices)."""

import jax
import numpy as np
from jax.sharding import Mesh

DATA_AXIS = "data"


def make_mesh(devices=None) -> Mesh:
    """A one-axis (DATA_AXIS) mesh over `devices`; default all devices of all processes."""
    return Mesh(np.asarray(devices if devices is not None else jax.devices()), (DATA_AXIS,))
