"""Inference as a product: `predict(variables, image)` and the `Predictor`.

Images are warped to the official test size (short side `input_size`, long side rounded up to a
multiple of 64) and grouped by that size into fixed-size batches (the last batch of a size is
padded by repeating an image), so XLA compiles once per distinct size and batching never changes
the results.

An image file that cannot be read or decoded is skipped, and one that decodes only partially is
predicted on, both reported (`ImageProblem`); the predict command lists them in failures.json.
"""

import collections
import concurrent.futures
import copy
import dataclasses
import json
import operator
import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from logocap_jax import config_utils, device_mesh
from logocap_jax.inference import pipeline, postprocess, preprocess, speed, visualize


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


def warn_about(problem: ImageProblem, message: str | None = None) -> None:
    """The default problem report of `predict_many` (and of evaluation runs): a
    SkippedImageWarning or PartialImageWarning saying `message`, default `problem.describe()`."""
    category = SkippedImageWarning if problem.skipped else preprocess.PartialImageWarning
    # Attributed to the code that iterates over predict_many.
    warnings.warn(message or problem.describe(), category, stacklevel=3)


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
        return cls(
            config_utils.build_model(config, dtype=config_utils.inference_dtype(config)),
            variables,
            config_utils.decode_settings(config, **overrides),
            **config_utils.checked_section(config, "test", cls, ignore=("compute_dtype",)),
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
