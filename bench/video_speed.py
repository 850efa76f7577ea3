"""Frames per second of the video mode: decoding, the model, tracking, drawing and encoding, as
`run.run_video` (the predict command's --source) does them, for three settings in one run.

  python bench/video_speed.py                        # W32, 640 x 480 frames, 24 frames each
  python bench/video_speed.py --codec mp4v --frames 48
  python bench/video_speed.py --config configs/tiny.py --frame_size 320x240

The settings: the config's (W32: flip test, short side 512, so 640 x 480 frames become a
704 x 512 network input), the same without the flip test (--no_flip), and the predict command's
--fast (no flip test, short side at most 384). The clip is `video/demo_clip.py`'s pan and zoom
over a bundled photo, at --frame_size. Random weights, unless --checkpoint: the speed does not
depend on them, since every frame gets all candidate slots (static shapes). The model compiles on
a first frame before the clock starts, so the figures are the steady rate. The machine's load
average is printed before and after each setting, since other work on the CPU lowers them all.
"""

import argparse
import os
import tempfile

import jax
import machine

from logocap_jax import config_utils, weights
from logocap_jax.inference import preprocess
from logocap_jax.inference.predict import Predictor
from logocap_jax.video import demo_clip, frames, run, tracking, writers

# The predict command's --fast: no flip test, network short side at most this.
FAST_INPUT_SIZE = 384


def random_variables(config):
    """Freshly initialised variables of the config's model (for speed only)."""
    model = config_utils.build_model(config)
    image = jax.numpy.zeros((1, 64, 64, 3))
    init = jax.jit(lambda x: model.init(jax.random.key(1), x, method=model.initialize))
    return init(image)


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=config_utils.default_config_path("w32"))
    parser.add_argument("--checkpoint", help="weights to run (default: random)")
    parser.add_argument("--frame_size", default="640x480", help="WIDTHxHEIGHT of the clip")
    parser.add_argument("--frames", type=int, default=24, help="frames timed per setting")
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument(
        "--codec",
        choices=(*writers.CODECS, "none"),
        default=writers.DEFAULT_CODEC,
        help="the drawn video's codec; none: the log alone (the command's --no_draw)",
    )
    args = parser.parse_args()
    size = tuple(int(n) for n in args.frame_size.split("x"))

    base = config_utils.load_config(args.config)
    variables = weights.load(base, args.checkpoint) if args.checkpoint else random_variables(base)
    settings = [
        ("the config's", base.test.input_size, base.decode.flip_test),
        ("--no_flip", base.test.input_size, False),
        ("--fast", min(base.test.input_size, FAST_INPUT_SIZE), False),
    ]
    print(machine.describe())
    print(
        f"{os.path.basename(args.config)}, {args.frames} frames of {size[0]}x{size[1]}, batch "
        f"{args.batch_size}, codec {args.codec}, "
        f"{'weights ' + args.checkpoint if args.checkpoint else 'random weights'}"
    )
    print(
        "\n| setting | flip test | network input | fps | model fps | decode fps | tracking fps "
        "| drawing and encoding fps | load average before / after |\n" + "|---" * 9 + "|"
    )
    with tempfile.TemporaryDirectory() as folder:
        images = demo_clip.demo_frames(args.frames, size)
        clip = demo_clip.write_clip(os.path.join(folder, "clip.mp4"), images)
        for name, input_size, flip in settings:
            config = base.copy_and_resolve_references()
            config.test.input_size = input_size
            config.decode.flip_test = flip
            predictor = Predictor.from_config(
                config, variables, batch_size=args.batch_size, flip_test=flip
            )
            predictor(images[0])  # compiles for this frame size
            before = load_average()
            with frames.open_source(clip) as reader:
                summary = run.run_video(
                    predictor,
                    reader,
                    tracking.Tracker(tracking.TrackerSettings(frame_rate=reader.fps)),
                    folder,
                    codec="mp4v" if args.codec == "none" else args.codec,
                    write_video=args.codec != "none",
                    show_progress=False,
                )
            network = preprocess.inference_resize(size[1], size[0], input_size).size_wh
            print(
                f"| {name} | {'on' if flip else 'off'} | {network[0]}x{network[1]} | "
                f"{summary.fps:.2f} | "
                f"{summary.model_fps:.2f} | {summary.decode_fps:.0f} | "
                f"{summary.tracking_fps:.0f} | {summary.output_fps:.1f} | "
                f"{before} / {load_average()} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
