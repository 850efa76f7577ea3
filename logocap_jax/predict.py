"""Inference as a product: `predict(variables, image)`, the `Predictor` and the predict CLI.

Images are warped to the official test size (short side `input_size`, long side rounded up to a
multiple of 64) and grouped by that size into fixed-size batches (the last batch of a size is
padded by repeating an image), so XLA compiles once per distinct size and batching never changes
the results.

  python -m logocap_jax.predict --config configs/w32.py --checkpoint ckpt/w32 \
      photos/ --output_dir out
  python -m logocap_jax.predict ... --panel_joint left_wrist   # also one instance panel per image
"""

import argparse
import collections
import concurrent.futures
import copy
import dataclasses
import json
import operator
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from logocap_jax import config_utils, pipeline, postprocess, preprocess, speed, visualize
from logocap_jax.keypoints import JOINT_NAMES

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


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
        mesh = Mesh(np.asarray(self.devices or jax.local_devices()), ("data",))
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

    def predict_many(self, items: Iterable) -> Iterator:
        """Runs (key, image or image path) items; yields (key, People) as batches complete.

        Results come grouped by network input size, not in input order.
        """
        queues = collections.defaultdict(list)
        pending = None
        for key, (normalized, resize) in self._prepared(items):
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
        """(key, (normalised image, ResizeInfo)) of each item, read and warped ahead by threads.

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
        if isinstance(image, (str, os.PathLike)):
            image = preprocess.read_image(image)
        return preprocess.prepare_test_image(image, self.input_size)

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
      config: the model's config (a ConfigDict or a configs/*.py path); default configs/w32.py.
      **overrides: config.decode fields to change, e.g. flip_test=False.

    Returns:
      (keypoints [P, 17, 3] as (x, y, score), scores [P]).
    """
    if config is None or isinstance(config, (str, os.PathLike)):
        config = config_utils.load_config(config or config_utils.default_config_path("w32"))
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

    Raises:
      FileNotFoundError: an input does not exist.
      ValueError: a folder holds no image file, or there are no inputs.
    """
    if not inputs:
        raise ValueError("No input images or folders given")
    paths = []
    for entry in inputs:
        if os.path.isdir(entry):
            found = sorted(
                os.path.join(entry, name)
                for name in os.listdir(entry)
                if name.lower().endswith(IMAGE_EXTENSIONS)
            )
            if not found:
                raise ValueError(
                    f"No image files ({', '.join(IMAGE_EXTENSIONS)}) in folder {entry}"
                )
            paths += found
        elif os.path.exists(entry):
            paths.append(entry)
        else:
            raise FileNotFoundError(f"No such image or folder: {entry}")
    return paths


def image_ids(paths) -> list:
    """COCO ids from numeric file names (000000197388.jpg -> 197388) when every name is a
    distinct number, else the input positions 0, 1, ... (never a mix, which could collide)."""
    stems = [os.path.splitext(os.path.basename(path))[0] for path in paths]
    numbers = [int(stem) for stem in stems if stem.isdigit()]
    if len(numbers) == len(paths) and len(set(numbers)) == len(numbers):
        return numbers
    return list(range(len(paths)))


def load_variables(config, checkpoint: str = None, state_dict: str = None):
    """Model variables from an orbax checkpoint directory or an official state dict."""
    from logocap_jax import checkpoints, convert

    if (checkpoint is None) == (state_dict is None):
        raise ValueError("Give exactly one of --checkpoint (orbax directory) and --state_dict")
    template = convert.model_template(config_utils.build_model(config))
    if checkpoint is not None:
        return checkpoints.restore_variables(checkpoint, template)
    return convert.variables_from_state_dict(convert.load_state_dict(state_dict), template)


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
    """The CLI's arguments; `paths` holds the input images (an input error exits with usage)."""
    parser = argparse.ArgumentParser(
        description="LOGO-CAP poses for images: COCO JSON and overlays."
    )
    parser.add_argument("inputs", nargs="+", help="image files or folders")
    parser.add_argument("--config", required=True)
    parser.add_argument("--checkpoint", help="orbax checkpoint directory (from convert or train)")
    parser.add_argument("--state_dict", help="official .pth/.pth.tar or .npz state dict")
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
    args = parser.parse_args(argv)
    try:
        args.paths = image_files(args.inputs)
    except (FileNotFoundError, ValueError) as err:
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
    image = preprocess.read_image(path)
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


def main(argv=None):
    """Predicts every input image; writes results.json, image_ids.json and the PNGs asked for."""
    args = parse_args(argv)
    config = config_utils.load_config(args.config)
    variables = load_variables(config, args.checkpoint, args.state_dict)
    predictor = Predictor.from_config(
        config,
        variables,
        batch_size=args.batch_size,
        keep_outputs=args.panel_joint is not None,
        flip_test=config.decode.flip_test and not args.no_flip,
    )
    os.makedirs(args.output_dir, exist_ok=True)
    paths, results = args.paths, []
    ids = dict(zip(paths, image_ids(paths)))
    for index, people in predictor.predict_many(enumerate(paths)):
        path = paths[index]
        results += postprocess.coco_results(ids[path], people.keypoints, people.scores)
        _write_images(args, path, people)
        print(f"{path}: {len(people.scores)} people")
    with open(os.path.join(args.output_dir, "results.json"), "w") as f:
        json.dump(results, f)
    with open(os.path.join(args.output_dir, "image_ids.json"), "w") as f:
        json.dump(ids, f, indent=1)
    print(f"Wrote {len(results)} poses of {len(paths)} images to {args.output_dir}/results.json")


if __name__ == "__main__":
    main()
