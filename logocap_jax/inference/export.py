"""Exported inference programs: the fused test-time pipeline as `jax.export` artifacts.

An export folder runs without this package, flax or any model code: JAX deserializes the program
and calls it on the weights and a batch of images (examples/run_exported.py does it with jax,
numpy and OpenCV alone). It holds

  program_<size>.jaxexport   the serialized program of `pipeline.predict_poses` (what the
                             Predictor runs), one per input size: `any` (batch, height and width
                             symbolic, height and width multiples of 32) or WxH (batch symbolic);
                             each holds the lowering for every platform asked for
  weights.npz                its first argument: the model variables, float32, keyed by their
                             path joined with '/' ("params/...", "batch_stats/...")
  model.json                 the inputs (size, layout, normalisation, the official test-time
                             warp), the outputs and the host-side post-processing settings

Weights are arguments, not constants, so a program stays small and one weights file serves every
size and platform. The program casts the parameters to the config's compute dtype itself.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jax import export as jax_export

from logocap_jax import config_utils, errors
from logocap_jax.inference import pipeline, preprocess
from logocap_jax.keypoints import IMAGENET_MEAN, IMAGENET_STD, JOINT_NAMES

ANY_SIZE = "any"
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
WEIGHTS_FILE = "weights.npz"
DESCRIPTION_FILE = "model.json"
FORMAT = "logocap-jax exported inference program"
FORMAT_VERSION = 1
# The network halves the resolution five times (stride 32).
SIZE_MULTIPLE = 32


def program_file(size: str) -> str:
    """The file name of the program for `size` ('any' or 'WxH')."""
    return f"program_{size}.jaxexport"


def parse_size(text: str) -> tuple[int, int] | None:
    """(width, height) of 'WxH', or None for 'any'.

    Raises:
      UsageError: not 'any' nor WxH with positive multiples of 32.
    """
    if text == ANY_SIZE:
        return None
    parts = text.lower().split("x")
    try:
        width, height = (int(part) for part in parts)
    except ValueError:
        width = height = -1
    if min(width, height) <= 0 or width % SIZE_MULTIPLE or height % SIZE_MULTIPLE:
        raise errors.UsageError(
            f"input size {text!r}: expected '{ANY_SIZE}' or WxH with positive multiples of "
            f"{SIZE_MULTIPLE}, e.g. 512x512"
        )
    return width, height


def check_platforms(platforms) -> tuple[str, ...]:
    """The platforms, checked against PLATFORMS.

    Raises:
      UsageError: none given, or one JAX cannot lower for.
    """
    platforms = tuple(platforms)
    unknown = [p for p in platforms if p not in PLATFORMS]
    if unknown or not platforms:
        raise errors.UsageError(
            f"platforms {list(platforms)}: expected some of {', '.join(PLATFORMS)}"
        )
    return platforms


def check_request(sizes, platforms) -> tuple[list[str], tuple[str, ...]]:
    """(sizes as 'any' or 'WxH', without repeats; platforms), both checked.

    Raises:
      UsageError: a size or platform that does not parse.
    """
    if not sizes:
        raise errors.UsageError("no input size given: 'any' or WxH, e.g. 512x512")
    shapes = [parse_size(size) for size in sizes]
    names = [ANY_SIZE if shape is None else f"{shape[0]}x{shape[1]}" for shape in shapes]
    return list(dict.fromkeys(names)), check_platforms(platforms)


def require_flatbuffers() -> None:
    """Raises MissingDependencyError unless `flatbuffers` (JAX's serialization) is installed."""
    try:
        import flatbuffers  # noqa: F401
    except ImportError:
        raise errors.MissingDependencyError(
            "exporting needs the flatbuffers package: pip install flatbuffers"
        ) from None


def flatten_variables(variables) -> dict[str, np.ndarray]:
    """The variables as one flat dict of float32 arrays keyed by their '/'-joined paths."""
    flat = traverse_util.flatten_dict(jax.device_get(variables), sep="/")
    return {key: np.asarray(value, np.float32) for key, value in flat.items()}


def predict_fn(model, settings: pipeline.DecodeSettings):
    """fn(flat weights, images [B, H, W, 3]) -> (poses [B, N, K, 3], scores [B, N], valid
    [B, N]): the Predictor's fused program, its variables taken as `flatten_variables` gives
    them."""

    def predict(weights, images):
        variables = traverse_util.unflatten_dict(weights, sep="/")
        variables = pipeline.inference_variables(variables, model.dtype)
        outputs = pipeline.predict_poses(model, variables, images, settings)
        return outputs.poses, outputs.scores, outputs.valid

    return predict


def export_program(model, settings, weights: dict, size: str, platforms) -> jax_export.Exported:
    """The pipeline exported for one input size ('any' or 'WxH') and the given platforms.

    Raises:
      UsageError: 'any' with several test scales (`settings.scales`).
    """
    shape = parse_size(size)
    if shape is None and tuple(settings.scales) != (1.0,):
        # The extra scales' input sizes are rounded from the image size, which a symbolic
        # size cannot be.
        raise errors.UsageError(
            f"decode.scales {list(settings.scales)}: several test scales need fixed input "
            "sizes (--sizes WxH), not 'any'"
        )
    if shape is None:
        batch, height, width = jax_export.symbolic_shape(f"b, {SIZE_MULTIPLE}*h, {SIZE_MULTIPLE}*w")
    else:
        (batch,), (width, height) = jax_export.symbolic_shape("b"), shape
    specs = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), weights)
    images = jax.ShapeDtypeStruct((batch, height, width, 3), jnp.float32)
    return jax_export.export(
        jax.jit(predict_fn(model, settings)), platforms=check_platforms(platforms)
    )(specs, images)


def describe(config, sizes, platforms) -> dict:
    """The contents of model.json: what the programs take and give, and how to use them."""
    settings = config_utils.decode_settings(config)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "jax_version": jax.__version__,
        "platforms": list(platforms),
        "programs": {size: program_file(size) for size in sizes},
        "weights": {
            "file": WEIGHTS_FILE,
            "argument": "first: a dict of all the file's arrays by key (float32)",
        },
        "input": {
            "argument": "second: images [batch, height, width, 3]",
            "layout": "NHWC",
            "channels": "RGB",
            "dtype": "float32",
            "sizes": "'any': height and width multiples of "
            f"{SIZE_MULTIPLE}; WxH: exactly that size",
            "normalization": "(pixel / 255 - mean) / std per channel",
            "mean": IMAGENET_MEAN.tolist(),
            "std": IMAGENET_STD.tolist(),
            "warp": {
                "short_side": int(config.test.input_size),
                "size_divisor": preprocess.SIZE_DIVISOR,
                "scale_unit_px": preprocess.SCALE_UNIT_PX,
                "method": "the official test-time warp: the short side becomes short_side, the "
                "long side keeps the aspect ratio rounded up to a multiple of size_divisor; "
                "cv2.warpAffine (bilinear, border 0) with the affine of three float32 point "
                "pairs about the image centre (examples/run_exported.py)",
            },
        },
        "outputs": [
            {
                "name": "poses",
                "shape": ["batch", settings.num_centers, len(JOINT_NAMES), 3],
                "dtype": "float32",
                "meaning": "(x, y, score) of each keypoint of each candidate slot, in "
                "network-input pixels",
            },
            {
                "name": "scores",
                "shape": ["batch", settings.num_centers],
                "dtype": "float32",
                "meaning": "pose score of each slot",
            },
            {
                "name": "valid",
                "shape": ["batch", settings.num_centers],
                "dtype": "bool",
                "meaning": "the slots kept by the official pipeline, before pose NMS",
            },
        ],
        "keypoints": list(JOINT_NAMES),
        "post_processing": {
            "method": "the valid slots, mapped back to photo pixels by the inverse warp, "
            "greedy pose NMS in slot order, at most max_people by score",
            "max_people": int(config.test.max_people),
            "nms_distance_ratio": float(config.test.nms_distance_ratio),
            "nms_min_joints": int(config.test.nms_min_joints),
        },
        "decode": {
            "flip_test": settings.flip_test,
            "num_centers": settings.num_centers,
            "center_threshold": settings.center_threshold,
            "adaptation": settings.adaptation,
            "compute_dtype": str(config.test.compute_dtype),
        },
    }


def export_model(
    config, variables, out_dir: str, *, sizes=(ANY_SIZE,), platforms=("cpu",)
) -> list[str]:
    """Writes the programs of `sizes`, the weights and model.json into `out_dir`.

    Args:
      config: the model's config (its model, decode, logo_ca and test sections are used).
      variables: the model variables ({"params", "batch_stats"}, float32).
      out_dir: the export folder (created if needed).
      sizes: 'any' and/or 'WxH' sizes, one program each.
      platforms: the platforms every program is lowered for (PLATFORMS); lowering needs none of
        them to be present.

    Returns:
      The paths written.

    Raises:
      MissingDependencyError: flatbuffers is not installed.
      UsageError: a size or platform that does not parse.
    """
    require_flatbuffers()
    sizes, platforms = check_request(sizes, platforms)
    model = config_utils.build_model(config, dtype=config_utils.inference_dtype(config))
    settings = config_utils.decode_settings(config)
    weights = flatten_variables(variables)
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for size in sizes:
        exported = export_program(model, settings, weights, size, platforms)
        path = os.path.join(out_dir, program_file(size))
        with open(path, "wb") as f:
            f.write(exported.serialize())
        written.append(path)
    path = os.path.join(out_dir, WEIGHTS_FILE)
    np.savez(path, **weights)
    written.append(path)
    path = os.path.join(out_dir, DESCRIPTION_FILE)
    with open(path, "w") as f:
        json.dump(describe(config, sizes, platforms), f, indent=2)
        f.write("\n")
    written.append(path)
    return written


def load_program(path: str) -> jax_export.Exported:
    """A program written by `export_model`, deserialized."""
    require_flatbuffers()
    with open(path, "rb") as f:
        return jax_export.deserialize(bytearray(f.read()))
