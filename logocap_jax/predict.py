"""Inference as a product: `predict(variables, image)`, the `Predictor` and the predict CLI.

Images are warped to the official test size (short side `input_size`, long side rounded up to a
multiple of 64) and grouped by that size into fixed-size batches (the last batch of a size is
padded by repeating an image), so XLA compiles once per distinct size and batching never changes
the results.

An image file that cannot be read or decoded is skipped, and one that decodes only partially is
predicted on, both reported (`ImageProblem`); the CLI lists them in failures.json.

  python -m logocap_jax.predict --pretrained w32 photo.jpg --output_dir out  # official weights
  python -m logocap_jax.predict --config configs/w32.py --checkpoint ckpt/w32 \
      photos/ --output_dir out
  python -m logocap_jax.predict ... --panel_joint left_wrist   # also one instance panel per image
  python -m logocap_jax.predict ... --config.logo_ca.reweigh=false   # any config field
"""

import argparse
import collections
import concurrent.futures
import copy
import dataclasses
import json
import operator
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from logocap_jax import (
    cli,
    config_utils,
    device_mesh,
    errors,
    pipeline,
    postprocess,
    preprocess,
    pretrained,
    speed,
    visualize,
    weights,
)
from logocap_jax.keypoints import JOINT_NAMES

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


class SkippedImageWarning(UserWarning):
    """An image that `Predictor.predict_many` skipped because it cannot be read or decoded."""


class ImageProblem(NamedTuple):
    """An input image that could not be read, or only partially (see `Predictor.predict_many`).

    Attributes:
      key: the item's key.
      path: the image file.
      problem: its class of problem, a key of `preprocess.IMAGE_PROBLEMS`.
      reason: what is wrong, without the file name.
      skipped: True when the image was skipped (no result); False when it decoded partially
        and was predicted on.
    """

    key: Any
    path: str
    problem: str
    reason: str
    skipped: bool

    def describe(self) -> str:
        """One line naming the file, what is wrong and what was done."""
        action = "skipped" if self.skipped else "predicted on"
        return f"{self.path}: {self.reason}; {action}"


def warn_about(problem: ImageProblem) -> None:
    """The default problem report of `predict_many`: a warning through the warnings module."""
    category = SkippedImageWarning if problem.skipped else preprocess.PartialImageWarning
    # Attributed to the code that iterates over predict_many.
    warnings.warn(problem.describe(), category, stacklevel=3)


class People(NamedTuple):
    """One image's result.

    Attributes:
      keypoints: [P, K, 3] (x, y, score) in original-image pixels.
      scores: [P] pose scores.
      slots: [P] candidate slot of each person in `outputs`.
      outputs: this image's `pipeline.PoseOutputs` (network-input pixels): poses, scores and
        valid, plus the inspection fields (mesh, KAMs, refined maps, ...) when the Predictor
        keeps them (`keep_outputs`), else None.
      resize: the `preprocess.ResizeInfo` of the network input.
    """

    keypoints: np.ndarray
    scores: np.ndarray
    slots: np.ndarray
    outputs: pipeline.PoseOutputs
    resize: preprocess.ResizeInfo


class _Prepared(NamedTuple):
    """A network input: the normalised image, its ResizeInfo, the file it was read from (or
    None) and the damage of a partial decode (or None)."""

    normalized: np.ndarray
    resize: preprocess.ResizeInfo
    path: str | None
    damage: str | None


@dataclasses.dataclass
class Predictor:
    """Runs the whole test-time pipeline on RGB images of any size.

    The variables are placed on the devices once (replicated), each batch is sharded over the
    `data` axis of a mesh of this process's devices, and one fused program runs it; only poses,
    scores and validity flags come back to the host unless `keep_outputs`. Images are read and
    warped by background threads, and a batch's results are fetched while the next one runs.

    Attributes:
      model, variables: the network and its variables (float32, as checkpoints hold them;
        parameters are cast once to the model's dtype).
      settings: static decode settings.
      input_size: test-time short side (512 for W32, 640 for W48).
      max_people, nms_distance_ratio, nms_min_joints: host-side post-processing.
      batch_size: images per device call (>= 1), rounded up to a multiple of the device count.
      keep_outputs: also bring back the inspection outputs (meshes, KAMs, refined maps: about
        20 MB per image for W32) into `People.outputs`.
      time_stages: run the four stages of the paper's Table 4 as separate, synchronised programs
        and time each (slower; the first batch of each shape runs once more, untimed).
      devices: the devices to shard batches over; default all of this process's devices.
      read_threads: threads reading and warping images ahead of the device.
      report: timings, compilation and host transfers of the batches run so far.
    """

    model: object
    variables: object
    settings: pipeline.DecodeSettings
    input_size: int = 512
    max_people: int = 30
    nms_distance_ratio: float = 0.05
    nms_min_joints: int = 8
    batch_size: int = 1
    keep_outputs: bool = False
    time_stages: bool = False
    devices: Sequence | None = None
    read_threads: int = 2
    report: speed.SpeedReport = dataclasses.field(default_factory=speed.SpeedReport)

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        mesh = device_mesh.make_mesh(self.devices or jax.local_devices())
        self._batch_sharding = NamedSharding(mesh, PartitionSpec("data"))
        self._replicated = NamedSharding(mesh, PartitionSpec())
        per_device = -(-self.batch_size // mesh.size)
        self._call_batch = per_device * mesh.size
        self._programs = {}  # (keep_outputs, images shape) -> compiled program
        self._stage_fns = None
        self._device_variables = self._place(self.variables)

    @classmethod
    def from_config(
        cls,
        config,
        variables,
        *,
        batch_size: int = 1,
        keep_outputs: bool = False,
        time_stages: bool = False,
        **overrides,
    ):
        """A Predictor for `config` (configs/*.py), computing in config.test.compute_dtype;
        overrides replace config.decode fields."""
        test = config.test
        return cls(
            config_utils.build_model(config, dtype=config_utils.inference_dtype(config)),
            variables,
            config_utils.decode_settings(config, **overrides),
            input_size=test.input_size,
            max_people=test.max_people,
            nms_distance_ratio=test.nms_distance_ratio,
            nms_min_joints=test.nms_min_joints,
            batch_size=batch_size,
            keep_outputs=keep_outputs,
            time_stages=time_stages,
        )

    def _place(self, variables):
        if variables is None:
            return None
        cast = pipeline.inference_variables(variables, self.model.dtype)
        return jax.device_put(cast, self._replicated)

    def with_variables(self, variables) -> "Predictor":
        """A copy that runs `variables` (same shapes) and shares this one's compiled programs.

        The copy has its own, empty `report`.
        """
        other = copy.copy(self)
        other.variables = variables
        other.report = speed.SpeedReport()
        other._device_variables = self._place(variables)
        return other

    def __call__(self, image_rgb: np.ndarray) -> People:
        """Poses of one uint8 RGB image [h, w, 3]."""
        return next(self.predict_many([(None, image_rgb)]))[1]

    def predict_many(
        self,
        items: Iterable,
        *,
        on_problem: Callable[[ImageProblem], None] | None = None,
        fail_fast: bool = False,
    ) -> Iterator:
        """Runs (key, image or image path) items; yields (key, People) as batches complete.

        Results come grouped by network input size, not in input order. An image file that
        cannot be read or decoded (missing, not a file, unreadable, empty, not an image,
        corrupt) is skipped: nothing is yielded for its key. One that decodes only partially
        (truncated or corrupt data filled in by the decoder) is predicted on. Both are reported,
        as they are met, as an `ImageProblem` to `on_problem`; collect them with
        `on_problem=problems.append`.

        Args:
          items: (key, image) pairs; an image is a uint8 RGB array [h, w, 3] or a file path.
          on_problem: called with each problem; default `warn_about` (a SkippedImageWarning or
            PartialImageWarning through the warnings module).
          fail_fast: raise the first image file that cannot be read instead of skipping it.

        Raises:
          preprocess.ImageReadError: with fail_fast, the first image that cannot be read.
        """
        report = warn_about if on_problem is None else on_problem
        queues = collections.defaultdict(list)
        pending = None
        for key, prepared in self._prepared(items):
            if isinstance(prepared, preprocess.ImageReadError):
                if fail_fast:
                    if pending is not None:  # What was read before the failure is complete.
                        yield from self._finish(*pending)
                    raise prepared
                report(ImageProblem(key, prepared.path, prepared.problem, prepared.reason, True))
                continue
            normalized, resize, path, damage = prepared
            if damage is not None:
                report(ImageProblem(key, path, preprocess.PARTIALLY_DECODED, damage, False))
            queue = queues[normalized.shape]
            queue.append((key, normalized, resize))
            if len(queue) == self._call_batch:
                running = self._dispatch(queue)
                queues[normalized.shape] = []
                if pending is not None:
                    yield from self._finish(*pending)
                pending = running
        for queue in queues.values():
            if queue:
                running = self._dispatch(queue)
                if pending is not None:
                    yield from self._finish(*pending)
                pending = running
        if pending is not None:
            yield from self._finish(*pending)

    def _prepared(self, items: Iterable) -> Iterator:
        """(key, `_Prepared` or the ImageReadError of an unreadable file) of each item, in
        order, read and warped ahead by threads.

        At most a few batches are in flight, so memory stays flat over long runs.
        """
        ahead = 2 * self._call_batch + self.read_threads
        with concurrent.futures.ThreadPoolExecutor(self.read_threads) as pool:
            queue = collections.deque()
            for key, image in items:
                queue.append((key, pool.submit(self._prepare_one, image)))
                if len(queue) > ahead:
                    key, future = queue.popleft()
                    yield key, future.result()
            while queue:
                key, future = queue.popleft()
                yield key, future.result()

    def _prepare_one(self, image):
        path, damage = None, None
        if isinstance(image, (str, os.PathLike)):
            path = os.fspath(image)
            try:
                image, damage = preprocess.decode_image_file(path)
            except preprocess.ImageReadError as error:
                return error
        return _Prepared(*preprocess.prepare_test_image(image, self.input_size), path, damage)

    def _dispatch(self, entries):
        """Starts one size bucket of (key, normalised image, ResizeInfo), padded to the call
        batch; returns what `_finish` needs. The device works on it asynchronously."""
        images = np.stack([e[1] for e in entries])
        if len(entries) < self._call_batch:
            padding = np.repeat(images[:1], self._call_batch - len(entries), axis=0)
            images = np.concatenate([images, padding])
        device_images = jax.device_put(images, self._batch_sharding)
        self.report.add_transfer(to_device=images.nbytes)
        if self.time_stages:
            start = time.perf_counter()
            outputs, stage_times = self._run_stages(device_images)
        else:
            program = self._program(device_images)
            start = time.perf_counter()
            outputs, stage_times = program(self._device_variables, device_images), None
        return entries, outputs, stage_times, start

    def _program(self, images):
        """The fused program for this input shape, compiled on first use (timed apart)."""
        key = (self.keep_outputs, images.shape)
        if key not in self._programs:
            start = time.perf_counter()
            jitted = pipeline.make_predict_fn(self.model, self.settings, inspect=self.keep_outputs)
            self._programs[key] = jitted.lower(self._device_variables, images).compile()
            self.report.add_compile(time.perf_counter() - start)
        return self._programs[key]

    def _run_stages(self, images):
        """The four stage programs, each timed; a shape's first run is compilation (timed
        apart, so the batch runs twice)."""
        if self._stage_fns is None:
            self._stage_fns = pipeline.make_stage_fns(self.model, self.settings)
        key = ("stages", images.shape)
        if key not in self._programs:
            start = time.perf_counter()
            speed.run_timed(self._stage_fns, self._device_variables, images)
            self._programs[key] = None
            self.report.add_compile(time.perf_counter() - start)
        outputs, stage_times = speed.run_timed(self._stage_fns, self._device_variables, images)
        if not self.keep_outputs:
            outputs = outputs._replace(**dict.fromkeys(pipeline.INSPECTION_FIELDS))
        return outputs, stage_times

    def _finish(self, entries, outputs, stage_times, start):
        """Fetches a dispatched batch (the only device-to-host copy) and post-processes it."""
        outputs = jax.device_get(outputs)
        ready = time.perf_counter()
        self.report.add_transfer(to_host=sum(x.nbytes for x in jax.tree_util.tree_leaves(outputs)))
        results = []
        for index, (key, _, resize) in enumerate(entries):
            image_outputs = jax.tree_util.tree_map(operator.itemgetter(index), outputs)
            keypoints, scores, slots = postprocess.select_people(
                image_outputs.poses,
                image_outputs.scores,
                image_outputs.valid,
                resize,
                max_people=self.max_people,
                nms_distance_ratio=self.nms_distance_ratio,
                nms_min_joints=self.nms_min_joints,
            )
            results.append((key, People(keypoints, scores, slots, image_outputs, resize)))
        self.report.add(ready - start, [len(p.scores) for _, p in results], stage_times)
        return results


# Predictors without variables, most recently used last, so that repeated predict() calls reuse
# their compiled programs (seconds to minutes each) instead of compiling anew.
_SHARED_PREDICTORS: collections.OrderedDict = collections.OrderedDict()
SHARED_PREDICTORS_KEPT = 4


def _shared_predictor(config, overrides: dict) -> Predictor:
    """The cached Predictor of (config, overrides); the least recently used beyond
    SHARED_PREDICTORS_KEPT are dropped with their programs."""
    key = (config.to_json(), json.dumps(overrides, sort_keys=True))
    if key in _SHARED_PREDICTORS:
        _SHARED_PREDICTORS.move_to_end(key)
    else:
        _SHARED_PREDICTORS[key] = Predictor.from_config(config, None, **overrides)
        while len(_SHARED_PREDICTORS) > SHARED_PREDICTORS_KEPT:
            _SHARED_PREDICTORS.popitem(last=False)
    return _SHARED_PREDICTORS[key]


def predict(variables, image, *, config=None, **overrides) -> tuple[np.ndarray, np.ndarray]:
    """Poses of one image in original-image coordinates.

    Calls with the same config and overrides share one compiled program per input size.

    Args:
      variables: model variables ({'params', 'batch_stats'}), e.g. converted official weights.
      image: uint8 RGB array [h, w, 3] or an image file path.
      config: the model's config (a ConfigDict, a bundled config's name or a config file
        path); default the bundled w32.
      **overrides: config.decode fields to change, e.g. flip_test=False.

    Returns:
      (keypoints [P, 17, 3] as (x, y, score), scores [P]).
    """
    if config is None or isinstance(config, (str, os.PathLike)):
        config = config_utils.load_config(config or "w32")
    if isinstance(image, (str, os.PathLike)):
        image = preprocess.read_image(image)
    people = _shared_predictor(config, overrides).with_variables(variables)(image)
    return people.keypoints, people.scores


def overlay(
    image_rgb: np.ndarray,
    people: People,
    *,
    keypoint_threshold: float = visualize.DEFAULT_KEYPOINT_THRESHOLD,
    min_score: float = 0.0,
) -> np.ndarray:
    """The image with the skeletons of the people scoring at least `min_score`."""
    shown = people.scores >= min_score
    return visualize.draw_poses(
        image_rgb,
        people.keypoints[shown],
        scores=people.scores[shown],
        keypoint_threshold=keypoint_threshold,
    )


def best_person_panel(image_rgb: np.ndarray, people: People, joint: int) -> np.ndarray | None:
    """`visualize.instance_panel` of the highest-scoring person's `joint`, or None without people.

    The panel is drawn on the network input (`image_rgb` warped by `people.resize`), whose
    pixels are the coordinates of the mesh, so the window shows exactly what the network saw.

    Args:
      image_rgb: the original uint8 RGB image [h, w, 3] that `people` was predicted from.
      people: its result; needs adaptation 'full' (the refined heatmaps).
      joint: 0 <= joint < 17.

    Returns:
      uint8 [tile, 3 * tile + 2 * gap, 3] RGB panel, see `visualize.instance_panel`.
    """
    if not len(people.scores):
        return None
    slot = people.slots[np.argmax(people.scores)]
    outputs = people.outputs
    network_input = preprocess.warp_test_image(image_rgb, people.resize)
    return visualize.instance_panel(
        network_input, outputs.mesh[slot], outputs.kams[slot], outputs.refined[slot], joint
    )


def image_files(inputs) -> list:
    """Image paths from files and folders (folders: their IMAGE_EXTENSIONS files, sorted).

    An input that does not exist is kept as a file, to be skipped and reported when it is read,
    unless no input exists at all.

    Raises:
      InputNotFoundError: no input exists.
      InputFormatError: a folder holds no image file, or there are no inputs.
    """
    if not inputs:
        raise errors.InputFormatError("No input images or folders given")
    paths = []
    for entry in inputs:
        if os.path.isdir(entry):
            found = sorted(
                os.path.join(entry, name)
                for name in os.listdir(entry)
                if name.lower().endswith(IMAGE_EXTENSIONS)
            )
            if not found:
                raise errors.InputFormatError(
                    f"No image files ({', '.join(IMAGE_EXTENSIONS)}) in folder {entry}"
                )
            paths += found
        else:
            paths.append(entry)
    if not any(os.path.lexists(entry) for entry in inputs):
        raise errors.InputNotFoundError(f"No such image or folder: {', '.join(inputs)}")
    return paths


def image_ids(paths) -> list:
    """COCO ids from numeric file names (000000197388.jpg -> 197388) when every name is a
    distinct number, else the input positions 0, 1, ... (never a mix, which could collide)."""
    stems = [os.path.splitext(os.path.basename(path))[0] for path in paths]
    numbers = [int(stem) for stem in stems if stem.isdigit()]
    if len(numbers) == len(paths) and len(set(numbers)) == len(numbers):
        return numbers
    return list(range(len(paths)))


def weights_source(args) -> str:
    """The weights a command line names: its one --checkpoint, --state_dict or --pretrained,
    for `weights.load`.

    Raises:
      UsageError: not exactly one of them is given.
    """
    given = [args.checkpoint, args.state_dict, args.pretrained]
    if sum(source is not None for source in given) != 1:
        raise errors.UsageError(
            "give exactly one of --checkpoint (orbax directory), --state_dict and --pretrained"
        )
    checkpoint, state_dict, name = given
    if name is not None:
        return name
    source = checkpoint or state_dict
    # A path that looks like a pretrained name is read as the path it is.
    return os.path.join(".", source) if source in pretrained.MODELS else source


def add_weights_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds --config and the weights: --checkpoint, --state_dict or --pretrained, whose
    release's config is the default --config (see `parse_args_with_weights`)."""
    cli.add_config_arguments(parser, required=False)
    parser.add_argument("--checkpoint", help="orbax checkpoint directory (from convert or train)")
    parser.add_argument("--state_dict", help="official .pth/.pth.tar or .npz state dict")
    parser.add_argument(
        "--pretrained",
        choices=sorted(pretrained.MODELS),
        help="the official COCO-trained weights of this model, downloaded and converted on "
        f"first use (cached in ${pretrained.CACHE_DIR_ENV} or ~/.cache/logocap_jax; a mirror "
        f"or local copy of the release folder: ${pretrained.RELEASE_URL_ENV}); the config "
        "defaults to the model's bundled config, and --config replaces it (its model must fit "
        "the weights)",
    )


def parse_args_with_weights(parser: argparse.ArgumentParser, argv=None):
    """`cli.parse_args` for a parser with `add_weights_arguments`: without --config, the
    config is --pretrained's (w32 -> the bundled w32), and its overrides apply to it.

    Raises:
      SystemExit: neither --config nor --pretrained is given (one line, status 2).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    release = pretrained.MODELS.get(cli.option_value(argv, "--pretrained"))
    args = cli.parse_args(parser, argv, default_config=release.config if release else None)
    if args.config is None:
        parser.error("the following arguments are required: --config (or --pretrained)")
    return args


def _joint_arg(value: str) -> int:
    """A joint given by COCO name (left_wrist) or index (9), for --panel_joint."""
    if value in JOINT_NAMES:
        return JOINT_NAMES.index(value)
    if value.isdigit() and int(value) < len(JOINT_NAMES):
        return int(value)
    raise argparse.ArgumentTypeError(
        f"{value!r} is neither a joint index 0-{len(JOINT_NAMES) - 1} nor one of "
        f"{', '.join(JOINT_NAMES)}"
    )


def positive_int(value: str) -> int:
    """An argparse type for counts such as --batch_size: an integer >= 1."""
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return int(value)


def parse_args(argv=None):
    """The CLI's arguments; `paths` holds the input images, `config` the loaded config with its
    `--config.<key>=<value>` overrides (an input error exits with one line, status 2)."""
    parser = cli.ArgumentParser(
        description="LOGO-CAP poses for images: COCO JSON and overlays.",
        epilog="Exit status: 0 every image predicted; 3 some images skipped (named on stderr "
        "and in failures.json, results.json holds the others); 2 a user error (one line; "
        "--verbose for the traceback), or with --fail_fast the first image that cannot be "
        "read; 1 an internal error.",
    )
    parser.add_argument("inputs", nargs="+", help="image files or folders")
    add_weights_arguments(parser)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument(
        "--no_flip",
        action="store_true",
        help="disable flip test (on unless the config turns it off)",
    )
    parser.add_argument("--batch_size", type=positive_int, default=1)
    parser.add_argument("--no_draw", action="store_true", help="skip the overlay PNGs")
    parser.add_argument(
        "--threshold",
        type=float,
        default=visualize.DEFAULT_KEYPOINT_THRESHOLD,
        help="min keypoint score drawn",
    )
    parser.add_argument(
        "--min_score",
        type=float,
        default=0.0,
        help="min pose score drawn (default 0: every person found); results.json "
        "keeps every person",
    )
    parser.add_argument(
        "--panel_joint",
        type=_joint_arg,
        help="also write <name>_panel.png: local window, KAM and refined heatmap "
        "of this joint (name or index) of the best-scoring person",
    )
    parser.add_argument(
        "--fail_fast",
        action="store_true",
        help="stop at the first image that cannot be read (exit status 2, no results.json) "
        "instead of skipping it",
    )
    args = parse_args_with_weights(parser, argv)
    try:
        args.paths = image_files(args.inputs)
    except errors.UserError as err:
        parser.error(str(err))
    # Outputs are named after the file (and numeric names give the COCO id): no silent overwrite.
    stems = collections.Counter(os.path.splitext(os.path.basename(p))[0] for p in args.paths)
    shared = sorted(stem for stem, count in stems.items() if count > 1)
    if shared:
        parser.error(
            f"several input images share the file name(s) {shared}; their outputs "
            "would overwrite each other"
        )
    return args


def _write_images(args, path: str, people: People) -> None:
    """The overlay and instance panel PNGs of one image, as the CLI options ask."""
    if args.no_draw and args.panel_joint is None:
        return
    image = preprocess.decode_image_file(path).image
    stem = os.path.join(args.output_dir, os.path.splitext(os.path.basename(path))[0])
    if not args.no_draw:
        visualize.save_png(
            f"{stem}.png",
            overlay(image, people, keypoint_threshold=args.threshold, min_score=args.min_score),
        )
    if args.panel_joint is not None:
        panel = best_person_panel(image, people, args.panel_joint)
        if panel is not None:
            visualize.save_png(f"{stem}_panel.png", panel)


class ResultsFile:
    """A COCO results JSON list written entry by entry, so that a long run keeps no results in
    memory. It appears under its name only when complete: an exception inside the `with` block
    leaves no file."""

    def __init__(self, path: str):
        self.path, self._partial = path, f"{path}.partial"
        self.count = 0

    def __enter__(self):
        self._file = open(self._partial, "w")
        self._file.write("[")
        return self

    def write(self, entries: Iterable[dict]) -> None:
        for entry in entries:
            self._file.write((", " if self.count else "") + json.dumps(entry))
            self.count += 1

    def __exit__(self, kind, value, trace):
        self._file.write("]")
        self._file.close()
        if kind is None:
            os.replace(self._partial, self.path)
        else:
            os.remove(self._partial)


def failures_report(paths, ids: dict, problems: list, predicted: int) -> dict:
    """failures.json: counts and one entry per image that was skipped or partially decoded."""
    return {
        "images": len(paths),
        "predicted": predicted,
        "skipped": sum(p.skipped for p in problems),
        "partially_decoded": sum(not p.skipped for p in problems),
        "failures": [
            {
                "path": p.path,
                "image_id": ids[paths[p.key]],
                "problem": p.problem,
                "reason": p.reason,
                "skipped": p.skipped,
            }
            for p in problems
        ],
    }


def main(argv=None) -> int:
    """Predicts every input image; writes results.json, failures.json, image_ids.json and the
    PNGs asked for.

    Returns:
      The exit status: cli.EXIT_OK, or cli.EXIT_SKIPPED when an image was skipped.

    Raises:
      UserError: a bad input (`cli.run_main` prints it as one line), and with fail_fast the
        first image that cannot be read.
    """
    args = parse_args(argv)
    config = args.config
    variables = weights.load(config, weights_source(args))
    predictor = Predictor.from_config(
        config,
        variables,
        batch_size=args.batch_size,
        keep_outputs=args.panel_joint is not None,
        flip_test=config.decode.flip_test and not args.no_flip,
    )
    os.makedirs(args.output_dir, exist_ok=True)
    paths, problems, predicted = args.paths, [], 0
    ids = dict(zip(paths, image_ids(paths)))

    def report(problem: ImageProblem) -> None:
        problems.append(problem)
        print(f"warning: {problem.describe()}", file=sys.stderr, flush=True)

    results_path = os.path.join(args.output_dir, "results.json")
    with ResultsFile(results_path) as results:
        items = predictor.predict_many(
            enumerate(paths), on_problem=report, fail_fast=args.fail_fast
        )
        for index, people in items:
            path = paths[index]
            results.write(postprocess.coco_results(ids[path], people.keypoints, people.scores))
            _write_images(args, path, people)
            predicted += 1
            print(f"{path}: {len(people.scores)} people", flush=True)
    with open(os.path.join(args.output_dir, "image_ids.json"), "w") as f:
        json.dump(ids, f, indent=1)
    failures_path = os.path.join(args.output_dir, "failures.json")
    report_json = failures_report(paths, ids, problems, predicted)
    with open(failures_path, "w") as f:
        json.dump(report_json, f, indent=1)
    summary = (
        f"Predicted {predicted} of {len(paths)} images: {results.count} poses in {results_path}"
    )
    if problems:
        summary += (
            f"; {report_json['skipped']} skipped, {report_json['partially_decoded']} partially "
            f"decoded (see {failures_path})"
        )
    print(summary)
    return cli.EXIT_SKIPPED if report_json["skipped"] else cli.EXIT_OK


def entry_point():
    """The `logocap-predict` command: `main` with one-line user errors and its exit status."""
    cli.run_main(main)


if __name__ == "__main__":
    entry_point()
