"""Inference time of LOGO-CAP per stage (the paper's Table 4 columns) and end to end, with
ratios against the official PyTorch implementation timed in the same run on the same machine.

  python bench/inference_speed.py --official official.jsonl          # W32, 512x512, flip test
  python bench/inference_speed.py --official official.jsonl --dtype bfloat16
  python bench/inference_speed.py --config configs/w48.py --height 640 --width 640

--official is the JSON-lines file the official timing harness wrote in this run (one record per
setting: cfg, input, flip_test, instances, model_wall_median_s, stage_median_s); docs/benchmarks.md
says how to produce it. Without it only this project's times are printed.

Random weights: speed does not depend on them, since every image gets all 30 candidate slots
(static shapes). Times are medians over --repeats runs after a compiling call; the per-stage
programs run one after another with a sync after each, the end-to-end time is the one fused
program that predict and eval run.
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import machine
from jax import lax

from logocap_jax import compile_options, config_utils, logo_ca
from logocap_jax.inference import pipeline, speed

OFFICIAL_STAGES = dict(
    zip(pipeline.STAGES, ("backbone", "local-kem", "local-kam", "global-kam"), strict=True)
)


def timed(fn, *args, repeats):
    """(median, min) seconds of fn(*args) after one warm-up call."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def conv_kinds(model_width: int, height: int, width: int, dtype, repeats: int) -> list:
    """GFLOP/s of the layer kinds that dominate: HRNet 3x3 convolutions per branch (flip batch),
    1x1 products, the CMP's first convolution and the KAM convolution, compiled as the
    pipeline is."""
    key = jax.random.key(0)
    rows = []

    def conv3x3(shape, out):
        x = jax.random.normal(key, shape, dtype)
        w = jax.random.normal(key, (3, 3, shape[-1], out), dtype)
        fn = compile_options.jit(
            lambda x, w: lax.conv_general_dilated(
                x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
            )
        )
        flops = 2 * x.size * 9 * out
        return fn, (x, w), flops

    def pointwise(shape, out):
        x = jax.random.normal(key, shape, dtype)
        w = jax.random.normal(key, (shape[-1], out), dtype)
        return compile_options.jit(lambda x, w: x @ w), (x, w), 2 * x.size * out

    kinds = []
    for level in range(4):
        h, w, c = height // 4 // 2**level, width // 4 // 2**level, model_width * 2**level
        kinds.append(
            (f"3x3 conv 2x{h}x{w}x{c} (HRNet branch {level + 1})", conv3x3((2, h, w, c), c))
        )
    h, w = height // 4, width // 4
    kinds += [
        (f"1x1 product 2x{h}x{w}x{model_width} to 256", pointwise((2, h, w, model_width), 256)),
        ("CMP 3x3 conv 30x11x11x1088 to 512", conv3x3((30, 11, 11, 1088), 512)),
    ]
    maps = jax.random.uniform(key, (30, 17, 97, 97), dtype)
    kams = jax.random.uniform(key, (30, 17, 11, 11), dtype)
    kam_fn = compile_options.jit(logo_ca.kam_convolution_instances)
    kam = (kam_fn, (maps, kams), 2 * maps.size * 121)
    kinds.append(("KAM convolution 30x17 maps 97x97, 11x11", kam))
    for name, (fn, args, flops) in kinds:
        median, _ = timed(fn, *args, repeats=repeats)
        rows.append((name, flops / median / 1e9))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=config_utils.default_config_path("w32"))
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--no_flip", action="store_true")
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--official", help="JSON lines of the official harness, same run")
    parser.add_argument("--no_kinds", action="store_true", help="skip the per-layer-kind rates")
    args = parser.parse_args()

    config = config_utils.load_config(args.config)
    config.test.compute_dtype = args.dtype
    model = config_utils.build_model(config, dtype=config_utils.inference_dtype(config))
    settings = config_utils.decode_settings(config, flip_test=not args.no_flip)
    images = jax.random.normal(jax.random.key(0), (args.batch_size, args.height, args.width, 3))
    init = jax.jit(lambda x: model.init(jax.random.key(1), x, method=model.initialize))
    variables = pipeline.inference_variables(init(images[:1]), model.dtype)

    fused = pipeline.make_predict_fn(model, settings)
    start = time.perf_counter()
    jax.block_until_ready(fused(variables, images))
    compile_seconds = time.perf_counter() - start
    fused_median, fused_min = timed(fused, variables, images, repeats=args.repeats)

    stage_fns = pipeline.make_stage_fns(model, settings)
    speed.run_timed(stage_fns, variables, images)
    stage_times = {stage: [] for stage in pipeline.STAGES}
    for _ in range(args.repeats):
        _, times = speed.run_timed(stage_fns, variables, images)
        for stage, seconds in times.items():
            stage_times[stage].append(seconds)
    stage_ms = {s: 1e3 * statistics.median(t) / args.batch_size for s, t in stage_times.items()}
    backbone = stage_fns["backbone"].lower(variables, images).compile().cost_analysis()
    backbone_flops = (backbone[0] if isinstance(backbone, list) else backbone)["flops"]

    width = config.model.stage_widths[0]
    print(machine.describe())
    print(
        f"Model W{width}, input {args.height}x{args.width}, batch {args.batch_size}, flip test "
        f"{not args.no_flip}, {args.dtype}; median of {args.repeats}; compile + first run "
        f"{compile_seconds:.1f} s"
    )
    official = {}
    if args.official:
        for row in machine.read_official(
            args.official, cfg=f"w{width}", flip_test=not args.no_flip
        ):
            if row["input"][2:] == [args.height, args.width]:
                official[row["instances"]] = row
        if 30 not in official:
            raise SystemExit(f"{args.official} has no record for W{width} at this size and flip")
    print("\n| stage | ms per image | official, 30 centres | ratio |\n|---|---|---|---|")
    for stage in pipeline.STAGES:
        cells = ["", ""]
        if 30 in official:
            theirs = 1e3 * official[30]["stage_median_s"][OFFICIAL_STAGES[stage]]
            cells = [f"{theirs:.1f}", f"{stage_ms[stage] / theirs:.2f}"]
        print(f"| {stage} | {stage_ms[stage]:.1f} | {' | '.join(cells)} |")
    per_image = fused_median / args.batch_size
    cells = ["", ""]
    if 30 in official:
        theirs = official[30]["model_wall_median_s"]
        cells = [f"{1e3 * theirs:.1f}", f"{per_image / theirs:.2f}"]
    print(f"| end to end (fused program) | {1e3 * per_image:.1f} | {' | '.join(cells)} |")
    print(f"\nEnd to end: min {1e3 * fused_min / args.batch_size:.1f} ms per image")
    if 2 in official:
        theirs = official[2]["model_wall_median_s"]
        print(
            f"Official with 2 centres (its cost grows with people, ours does not): "
            f"{1e3 * theirs:.1f} ms, ratio {per_image / theirs:.2f}"
        )
    print(
        f"Backbone stage: {backbone_flops / 1e9:.1f} GFLOP (XLA cost analysis), "
        f"{backbone_flops / (stage_ms['backbone'] * args.batch_size / 1e3) / 1e9:.0f} GFLOP/s"
    )
    if not args.no_kinds:
        dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
        print(f"\n| layer kind ({args.dtype}) | GFLOP/s |\n|---|---|")
        for name, rate in conv_kinds(width, args.height, args.width, dtype, args.repeats):
            print(f"| {name} | {rate:.0f} |")


if __name__ == "__main__":
    main()
