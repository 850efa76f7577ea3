"""Inference as a product: `predict(variables, image)`, the `Predictor` and the predict CLI.

Images are warped to the official test size (short side `input_size`, long side rounded up to a
multiple of 64) and grouped by that size into fixed-size batches (the last batch of a size is
padded by repeating an image), so XLA compiles once per distinct size and batching never changes
the results.

  python -m logocap_jax.predict --config configs/w32.py --checkpoint ckpt/w32 photos/ --output_dir out
"""

import argparse
import collections
import dataclasses
import json
import os
import time
from typing import Iterable, Iterator, NamedTuple

import jax
import numpy as np

from logocap_jax import config_utils, pipeline, postprocess, preprocess, speed


class People(NamedTuple):
    """One image's result.

    Attributes:
      keypoints: [P, K, 3] (x, y, score) in original-image pixels.
      scores: [P] pose scores.
      slots: [P] candidate slot of each person in `outputs`.
      outputs: this image's `pipeline.PoseOutputs` (network-input pixels), for inspection.
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

    Attributes:
      model, variables: the network and its variables.
      settings: static decode settings.
      input_size: test-time short side (512 for W32, 640 for W48).
      max_people, nms_distance_ratio, nms_min_joints: host-side post-processing.
      batch_size: images per device call.
      report: when set, the four stages run as separate programs and are timed into it.
    """

    model: object
    variables: object
    settings: pipeline.DecodeSettings
    input_size: int = 512
    max_people: int = 30
    nms_distance_ratio: float = 0.05
    nms_min_joints: int = 8
    batch_size: int = 1
    report: speed.SpeedReport | None = None

    def __post_init__(self):
        self._predict_fn = pipeline.make_predict_fn(self.model, self.settings)
        self._stage_fns = pipeline.make_stage_fns(self.model, self.settings)
        self._seen_shapes = set()

    @classmethod
    def from_config(cls, config, variables, **overrides):
        """A Predictor for `config` (configs/*.py); overrides replace config.decode fields."""
        test = config.test
        return cls(config_utils.build_model(config), variables,
                   config_utils.decode_settings(config, **overrides), input_size=test.input_size,
                   max_people=test.max_people, nms_distance_ratio=test.nms_distance_ratio,
                   nms_min_joints=test.nms_min_joints)

    def __call__(self, image_rgb: np.ndarray) -> People:
        """Poses of one uint8 RGB image [h, w, 3]."""
        return next(self.predict_many([(None, image_rgb)]))[1]

    def predict_many(self, items: Iterable) -> Iterator:
        """Runs (key, image or image path) items; yields (key, People) as batches complete.

        Results come grouped by network input size, not in input order.
        """
        queues = collections.defaultdict(list)
        for key, image in items:
            if isinstance(image, (str, os.PathLike)):
                image = preprocess.read_image(image)
            normalized, resize = preprocess.prepare_test_image(image, self.input_size)
            queue = queues[normalized.shape]
            queue.append((key, normalized, resize))
            if len(queue) == self.batch_size:
                yield from self._run_batch(queue)
                queue.clear()
        for queue in queues.values():
            if queue:
                yield from self._run_batch(queue)

    def _run_batch(self, entries):
        images = np.stack([e[1] for e in entries])
        if len(entries) < self.batch_size:
            padding = np.repeat(images[:1], self.batch_size - len(entries), axis=0)
            images = np.concatenate([images, padding])
        start = time.perf_counter()
        if self.report is None:
            outputs = self._predict_fn(self.variables, images)
        else:
            outputs, stage_times = speed.run_timed(self._stage_fns, self.variables, images)
        outputs = jax.device_get(outputs)
        results = []
        for index, (key, _, resize) in enumerate(entries):
            image_outputs = jax.tree_util.tree_map(lambda x: x[index], outputs)
            keypoints, scores, slots = postprocess.select_people(
                image_outputs.poses, image_outputs.scores, image_outputs.valid, resize,
                max_people=self.max_people, nms_distance_ratio=self.nms_distance_ratio,
                nms_min_joints=self.nms_min_joints)
            results.append((key, People(keypoints, scores, slots, image_outputs, resize)))
        if self.report is not None:
            compiled = images.shape not in self._seen_shapes
            self.report.add(stage_times, time.perf_counter() - start,
                            [len(p.scores) for _, p in results], compiled=compiled)
        self._seen_shapes.add(images.shape)
        return results


def predict(variables, image, *, config=None, **overrides) -> tuple[np.ndarray, np.ndarray]:
    """Poses of one image in original-image coordinates.

    Args:
      variables: model variables ({'params', 'batch_stats'}), e.g. converted official weights.
      image: uint8 RGB array [h, w, 3] or an image file path.
      config: the model's config (a ConfigDict or a configs/*.py path); default configs/w32.py.
      **overrides: config.decode fields to change, e.g. flip_test=False.

    Returns:
      (keypoints [P, 17, 3] as (x, y, score), scores [P]).
    """
    if config is None or isinstance(config, str):
        config = config_utils.load_config(config or config_utils.default_config_path("w32"))
    if isinstance(image, (str, os.PathLike)):
        image = preprocess.read_image(image)
    people = Predictor.from_config(config, variables, **overrides)(image)
    return people.keypoints, people.scores


def image_files(inputs) -> list:
    """Image paths from files and folders (folders: their .jpg/.jpeg/.png/.bmp files, sorted)."""
    paths = []
    for entry in inputs:
        if os.path.isdir(entry):
            paths += sorted(os.path.join(entry, name) for name in os.listdir(entry)
                            if name.lower().endswith((".jpg", ".jpeg", ".png", ".bmp")))
        elif os.path.exists(entry):
            paths.append(entry)
        else:
            raise FileNotFoundError(f"No such image or folder: {entry}")
    return paths


def image_id_for(path: str, index: int) -> int:
    """COCO ids from numeric file names (000000197388.jpg -> 197388), else the input index."""
    stem = os.path.splitext(os.path.basename(path))[0]
    return int(stem) if stem.isdigit() else index


def load_variables(config, checkpoint: str = None, state_dict: str = None):
    """Model variables from an orbax checkpoint directory or an official state dict."""
    from logocap_jax import checkpoints, convert

    template = convert.model_template(config_utils.build_model(config))
    if (checkpoint is None) == (state_dict is None):
        raise ValueError("Give exactly one of --checkpoint (orbax directory) and --state_dict")
    if checkpoint is not None:
        return checkpoints.restore_variables(checkpoint, template)
    return convert.variables_from_state_dict(convert.load_state_dict(state_dict), template)


def main(argv=None):
    from logocap_jax import visualize

    parser = argparse.ArgumentParser(description="LOGO-CAP poses for images: COCO JSON and overlays.")
    parser.add_argument("inputs", nargs="+", help="image files or folders")
    parser.add_argument("--config", required=True)
    parser.add_argument("--checkpoint", help="orbax checkpoint directory (from convert or train)")
    parser.add_argument("--state_dict", help="official .pth/.pth.tar or .npz state dict")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--no_flip", action="store_true", help="disable flip test")
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--no_draw", action="store_true", help="skip the overlay PNGs")
    parser.add_argument("--threshold", type=float, default=0.1, help="min keypoint score drawn")
    args = parser.parse_args(argv)

    config = config_utils.load_config(args.config)
    paths = image_files(args.inputs)
    variables = load_variables(config, args.checkpoint, args.state_dict)
    predictor = Predictor.from_config(config, variables, flip_test=not args.no_flip)
    predictor.batch_size = args.batch_size
    os.makedirs(args.output_dir, exist_ok=True)
    results, ids = [], {}
    items = ((index, path) for index, path in enumerate(paths))
    for index, people in predictor.predict_many(items):
        path = paths[index]
        ids[path] = image_id_for(path, index)
        results += postprocess.coco_results(ids[path], people.keypoints, people.scores)
        if not args.no_draw:
            overlay = visualize.draw_poses(preprocess.read_image(path), people.keypoints,
                                           scores=people.scores, keypoint_threshold=args.threshold)
            stem = os.path.splitext(os.path.basename(path))[0]
            visualize.save_png(os.path.join(args.output_dir, f"{stem}.png"), overlay)
        print(f"{path}: {len(people.scores)} people")
    with open(os.path.join(args.output_dir, "results.json"), "w") as f:
        json.dump(results, f)
    with open(os.path.join(args.output_dir, "image_ids.json"), "w") as f:
        json.dump(ids, f, indent=1)
    print(f"Wrote {len(results)} poses of {len(paths)} images to {args.output_dir}/results.json")


if __name__ == "__main__":
    main()
