"""End-to-end and per-stage inference time of LOGO-CAP (the paper's Table 4 columns).

  python bench/inference_speed.py                       # W32, 512x512, flip test, CPU
  python bench/inference_speed.py --config configs/w48.py --height 640 --width 640

Random weights: speed does not depend on them, since every image gets all 30 candidate slots
(static shapes). Prints the median over --repeats runs after one compiling call.
"""

import argparse
import statistics
import time

import jax

from logocap_jax import config_utils, pipeline, speed


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=config_utils.default_config_path("w32"))
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--no_flip", action="store_true")
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    config = config_utils.load_config(args.config)
    model = config_utils.build_model(config)
    settings = config_utils.decode_settings(config, flip_test=not args.no_flip)
    images = jax.random.normal(jax.random.key(0), (args.batch_size, args.height, args.width, 3))
    start = time.perf_counter()
    variables = jax.jit(lambda x: model.init(jax.random.key(1), x, method=model.initialize))(
        images[:1]
    )
    print(f"init: {time.perf_counter() - start:.1f} s")

    fused = pipeline.make_predict_fn(model, settings)
    start = time.perf_counter()
    jax.block_until_ready(fused(variables, images))
    print(f"compile + first run (fused program): {time.perf_counter() - start:.1f} s")
    fused_times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        jax.block_until_ready(fused(variables, images))
        fused_times.append(time.perf_counter() - start)

    stage_fns = pipeline.make_stage_fns(model, settings)
    speed.run_timed(stage_fns, variables, images)
    stage_times = {stage: [] for stage in pipeline.STAGES}
    for _ in range(args.repeats):
        _, times = speed.run_timed(stage_fns, variables, images)
        for stage, seconds in times.items():
            stage_times[stage].append(seconds)

    device = jax.devices()[0].device_kind
    name = config.model.stage_widths[0]
    print(
        f"\nDevice: {device} ({jax.device_count()} device(s)), model width {name}, input "
        f"{args.height}x{args.width}, batch {args.batch_size}, flip test {not args.no_flip}, "
        f"median of {args.repeats}"
    )
    print("| stage | ms per image |\n|---|---|")
    for stage in pipeline.STAGES:
        print(f"| {stage} | {1e3 * statistics.median(stage_times[stage]) / args.batch_size:.1f} |")
    per_image = statistics.median(fused_times) / args.batch_size
    print(f"| end-to-end (one fused program) | {1e3 * per_image:.1f} |")


if __name__ == "__main__":
    main()
