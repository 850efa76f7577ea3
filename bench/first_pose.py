"""Time from the start of a process to the first pose: the predict CLI on one photo with a
W32 checkpoint, as a user runs it.

  python bench/first_pose.py                      # W32, CPU, data/coco_mini photo
  python bench/first_pose.py --config configs/w48.py

A W32-shaped checkpoint of random weights is written once to --workdir (not timed; the time does
not depend on the values). Then the predict command line runs in a fresh process, three times:
without a compilation cache, and twice with a persistent one (`--compilation_cache`): the first
of those fills it, the second reads it.
"""

import argparse
import os
import subprocess
import sys
import time

import jax
import machine
import numpy as np

from logocap_jax import config_utils
from logocap_jax.weights import checkpoints, convert

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHOTO = os.path.join(ROOT, "data", "coco_mini", "images", "000000000785.jpg")


def write_checkpoint(config, directory: str) -> None:
    """Random variables of the config's model, float32, as a checkpoint (once)."""
    if os.path.isdir(directory):
        return
    template = convert.model_template(config_utils.build_model(config))
    rng = np.random.default_rng(0)
    variables = jax.tree_util.tree_map(
        lambda x: rng.normal(0, 0.01, x.shape).astype(np.float32), template
    )
    variables["batch_stats"] = jax.tree_util.tree_map(np.abs, variables["batch_stats"])
    checkpoints.save_variables(directory, variables)


def run_predict(config_path: str, checkpoint: str, output_dir: str, extra=()) -> float:
    command = [
        sys.executable,
        "-m",
        "logocap_jax.commands.predict",
        "--config",
        config_path,
        "--checkpoint",
        checkpoint,
        PHOTO,
        "--output_dir",
        output_dir,
        "--no_draw",
        *extra,
    ]
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=config_utils.default_config_path("w32"))
    parser.add_argument("--workdir", default=os.path.expanduser("~/.cache/logocap_jax_bench"))
    args = parser.parse_args()
    config = config_utils.load_config(args.config)
    name = os.path.splitext(os.path.basename(args.config))[0]
    checkpoint = os.path.join(args.workdir, f"random_{name}")
    write_checkpoint(config, checkpoint)
    cache = os.path.join(args.workdir, f"xla_cache_{time.time_ns()}")
    output = os.path.join(args.workdir, "out")
    cold = run_predict(args.config, checkpoint, output)
    filling = run_predict(args.config, checkpoint, output, ("--compilation_cache", cache))
    warm = run_predict(args.config, checkpoint, output, ("--compilation_cache", cache))
    print(machine.describe())
    print(f"Process start to first pose, {name}, {PHOTO} (results.json written):")
    print(f"  no compilation cache:          {cold:.1f} s")
    print(f"  filling a compilation cache:   {filling:.1f} s")
    print(f"  with the filled cache:         {warm:.1f} s")


if __name__ == "__main__":
    main()
