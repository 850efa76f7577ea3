"""Training step and compile time, against the official step timed in the same run, and
training throughput with the real input pipeline.

  python bench/train_speed.py                                   # tiny model, batch 4 at 256
  python bench/train_speed.py --config configs/w32.py --batch_size 2 --input_size 512 \
      --max_instances 2 --official official_train.jsonl

--official is the JSON line the official training timing harness printed in this run (W32 or
W48, batch 2 at 512; docs/benchmarks.md says how to produce it): the bench prints the ratio of
the two median step times and names the CPU, since a ratio only holds for the machine and the
run it was measured in.

Random weights and a synthetic batch with ground-truth people near the predicted centers
cannot be made without a trained model, so the step runs on coco_mini images through the real
input pipeline (first global batch), which is what a training run computes.

Then --stream_steps steps take their batches from the pipeline as training does (the config's
augmentation, --workers worker processes), without waiting for the device in between: prints
examples/s and the share of the wall time the loop spent waiting for the next batch (0% when
the input keeps up with the device).
"""

import argparse
import os
import statistics
import time

import jax
import machine
import numpy as np

from logocap_jax import config_utils, device_mesh
from logocap_jax.data import input_pipeline, record_source, tfds_builders
from logocap_jax.training import trainer


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=config_utils.default_config_path("mini"))
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--input_size", type=int, default=256)
    parser.add_argument("--max_instances", type=int, default=None)
    parser.add_argument("--instance_budget", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--data_dir", help="TFDS data dir (default: the config's data.data_dir)")
    parser.add_argument("--stream_steps", type=int, default=10)
    parser.add_argument("--workers", type=int, default=0, help="input worker processes")
    parser.add_argument("--official", help="JSON lines of the official training harness, same run")
    args = parser.parse_args()

    config = config_utils.load_config(args.config)
    if args.max_instances is not None:
        config.train.max_instances = args.max_instances
    if args.instance_budget is not None:
        config.train.instance_budget = args.instance_budget
    width = config.model.stage_widths[0]
    official = []
    if args.official:
        official = machine.read_official(args.official, cfg=f"w{width}")
        if not official:
            raise SystemExit(f"{args.official} has no record for W{width}")
    data_dir = os.path.expanduser(args.data_dir or config.data.data_dir)
    tfds_builders.build_mini("coco_mini", data_dir)
    source = record_source.data_source("coco_format/coco_mini", "train", data_dir)
    dataset = input_pipeline.make_train_dataset(
        source,
        batch_size=args.batch_size,
        seed=0,
        input_size=args.input_size,
        output_size=args.input_size // 4,
        max_people=config.data.max_people,
    )
    batch = next(iter(dataset))
    batch.pop("image_id")

    mesh = device_mesh.make_mesh()
    model = config_utils.build_train_model(config)
    tx = trainer.create_optimizer(config.train, steps_per_epoch=1000)
    start = time.perf_counter()
    state = trainer.create_train_state(model, tx, jax.random.key(0), args.input_size, mesh)
    jax.block_until_ready(state)
    init_seconds = time.perf_counter() - start
    step = trainer.make_train_step(
        model,
        config_utils.train_settings(config),
        config_utils.loss_weights(config),
        mesh,
        state,
    )
    sharded = trainer.shard_batch(batch, mesh)
    start = time.perf_counter()
    state, metrics = step(state, sharded)
    jax.block_until_ready(metrics)
    first_seconds = time.perf_counter() - start
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        state, metrics = step(state, sharded)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)

    print(machine.describe())
    print(
        f"model widths {tuple(config.model.stage_widths)}; "
        f"batch {args.batch_size} at {args.input_size}; "
        f"max_instances {config.train.max_instances or config.decode.num_centers}; "
        f"instance_budget {config.train.instance_budget or 'off'}; "
        f"compute {config.train.compute_dtype}"
    )
    print(f"init (compile + run): {init_seconds:.1f} s")
    print(f"first step (compile + run): {first_seconds:.1f} s")
    print(
        f"step: median {statistics.median(times):.2f} s over {args.repeats} "
        f"(min {min(times):.2f}, max {max(times):.2f}); "
        f"{args.batch_size / statistics.median(times):.2f} examples/s; "
        f"loss {float(np.asarray(metrics['total'])):.4f}"
    )
    for row in official:
        same = (row["batch"], row["input"]) == (args.batch_size, args.input_size)
        print(
            f"official (PyTorch, {row['threads']} threads, "
            f"batch {row['batch']} at {row['input']}): "
            f"median {row['step_median_s']:.2f} s, {row['batch'] / row['step_median_s']:.2f} "
            f"examples/s; ours / official = "
            f"{statistics.median(times) / row['step_median_s']:.2f}x"
            + ("" if same else " (different batch or input size: not comparable)")
        )
    if args.stream_steps > 0:
        _stream(args, config, source, mesh, step, state)


def _stream(args, config, source, mesh, step, state):
    """Steps fed by the input pipeline; the host waits for the device only at the end."""
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.train.global_batch_size = args.batch_size
        config.train.seed = 1
        config.data.input_size = args.input_size
        config.data.output_size = args.input_size // 4
        config.data.worker_count = args.workers
    iterator = iter(trainer.make_dataset(config, source))
    next(iterator)  # starts the workers and fills the prefetch buffers
    waiting = 0.0
    start = time.perf_counter()
    for _ in range(args.stream_steps):
        before = time.perf_counter()
        batch = next(iterator)
        waiting += time.perf_counter() - before
        batch.pop("image_id")
        batch.pop("replaced", None)
        state, metrics = step(state, trainer.shard_batch(batch, mesh))
    jax.block_until_ready(metrics)
    seconds = time.perf_counter() - start
    print(
        f"stream of {args.stream_steps} steps ({args.workers} input workers): "
        f"{args.stream_steps * args.batch_size / seconds:.2f} examples/s; "
        f"waiting for input {100 * waiting / seconds:.0f}% of the time"
    )


if __name__ == "__main__":
    main()
