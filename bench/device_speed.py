"""Throughput on whatever accelerator JAX finds: inference images/s and training steps.

  python bench/device_speed.py             # a few minutes on a GPU or TPU host
  python bench/device_speed.py --quick     # W32 at 512 only, batch 1 and 2 (a CPU smoke run)

Inference: W32 and W48 at 512 and 640 (square inputs, flip test, all 30 slots), float32 and
bfloat16, at batch 1 and at the best batch size found by doubling until throughput stops
growing or memory runs out. Training: W32 at its paper batch per device (12) on every device,
with all 30 instance slots and with max_instances 2, through the real input pipeline on the
bundled coco_mini images. Random weights: speed does not depend on them.

Output: one line per measurement,
  inference W32 512 float32 batch 1: 21.4 img/s (46.7 ms/img), compile 38.2 s
  training W32 batch 12x1 max_instances all: 0.412 s/step, 29.1 img/s, compile 95.3 s
"""

import argparse
import os
import time

import jax
import machine
import numpy as np

from logocap_jax import config_utils, device_mesh
from logocap_jax.data import input_pipeline, record_source, tfds_builders
from logocap_jax.inference import pipeline
from logocap_jax.training import trainer

MODELS = {"w32": "W32", "w48": "W48"}


def _median_seconds(fn, *args, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def inference(name: str, size: int, dtype: str, batch: int, repeats: int):
    """(images/s, compile seconds) of the fused program on `batch` images."""
    config = config_utils.load_config(config_utils.default_config_path(name))
    config.test.compute_dtype = dtype
    model = config_utils.build_model(config, dtype=config_utils.inference_dtype(config))
    settings = config_utils.decode_settings(config)
    images = jax.random.normal(jax.random.key(0), (batch, size, size, 3))
    init = jax.jit(lambda x: model.init(jax.random.key(1), x, method=model.initialize))
    variables = pipeline.inference_variables(init(images[:1, :64, :64]), model.dtype)
    fn = pipeline.make_predict_fn(model, settings, inspect=False)
    start = time.perf_counter()
    compiled = fn.lower(variables, images).compile()
    compile_seconds = time.perf_counter() - start
    jax.block_until_ready(compiled(variables, images))
    seconds = _median_seconds(compiled, variables, images, repeats=repeats)
    return batch / seconds, compile_seconds


def best_batch(name, size, dtype, repeats, largest: int):
    """The batch size with the most images/s (doubling from 2), its rate and compile time."""
    best = (1, *inference(name, size, dtype, 1, repeats))
    batch = 2
    while batch <= largest:
        try:
            rate, compile_seconds = inference(name, size, dtype, batch, repeats)
        except Exception as error:  # Out of device memory ends the search.
            if "RESOURCE_EXHAUSTED" not in str(error) and "out of memory" not in str(error):
                raise
            break
        if rate <= best[1] * 1.02:
            break
        best = (batch, rate, compile_seconds)
        batch *= 2
    return best


def training(max_instances: int, per_device: int, repeats: int):
    """(seconds per step, compile seconds, global batch) of W32 training."""
    config = config_utils.load_config(config_utils.default_config_path("w32"))
    config.train.max_instances = max_instances
    batch = per_device * jax.device_count()
    data_dir = os.path.expanduser(config.data.data_dir)
    tfds_builders.build_mini("coco_mini", data_dir)
    source = record_source.data_source("coco_format/coco_mini", "train", data_dir)
    dataset = input_pipeline.make_train_dataset(
        source, batch_size=batch, seed=0, input_size=512, output_size=128, max_people=30
    )
    local = next(iter(dataset))
    for key in ("image_id", "replaced"):
        local.pop(key, None)
    mesh = device_mesh.make_mesh()
    model = config_utils.build_train_model(config)
    tx = trainer.create_optimizer(config.train, steps_per_epoch=1000)
    state = trainer.create_train_state(model, tx, jax.random.key(0), 512, mesh)
    step = trainer.make_train_step(
        model,
        config_utils.train_settings(config),
        config_utils.loss_weights(config),
        mesh,
        state,
    )
    sharded = trainer.shard_batch(local, mesh)
    start = time.perf_counter()
    state, metrics = step(state, sharded)
    jax.block_until_ready(metrics)
    compile_seconds = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        state, metrics = step(state, sharded)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    return float(np.median(times)), compile_seconds, batch


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="W32 at 512, batch 1 and 2 only")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--largest_batch", type=int, default=64)
    parser.add_argument("--no_training", action="store_true")
    args = parser.parse_args()
    print(machine.describe(), flush=True)
    if args.quick:
        settings = [("w32", 512, "float32")]
    else:
        settings = [(m, s, d) for m in MODELS for s in (512, 640) for d in ("float32", "bfloat16")]
    for name, size, dtype in settings:
        label = f"inference {MODELS[name]} {size} {dtype}"
        rate, compile_seconds = inference(name, size, dtype, 1, args.repeats)
        print(
            f"{label} batch 1: {rate:.1f} img/s ({1e3 / rate:.1f} ms/img), "
            f"compile {compile_seconds:.1f} s",
            flush=True,
        )
        largest = 2 if args.quick else args.largest_batch
        batch, rate, compile_seconds = best_batch(name, size, dtype, args.repeats, largest)
        print(
            f"{label} best batch {batch}: {rate:.1f} img/s ({1e3 / rate:.1f} ms/img), "
            f"compile {compile_seconds:.1f} s",
            flush=True,
        )
    if args.no_training:
        return
    per_device = 1 if args.quick else 12
    for max_instances in (0, 2):
        seconds, compile_seconds, batch = training(max_instances, per_device, args.repeats)
        label = "all" if max_instances == 0 else max_instances
        print(
            f"training W32 batch {per_device}x{jax.device_count()} max_instances {label}: "
            f"{seconds:.3f} s/step, {batch / seconds:.1f} img/s, "
            f"compile {compile_seconds:.1f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
