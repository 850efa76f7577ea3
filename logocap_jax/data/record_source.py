"""Reading a built data set: random access to the image records of one split, without
TensorFlow (tfds.data_source over ArrayRecord files), as `coco_records.image_records` types."""

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from logocap_jax import errors, resources
from logocap_jax.keypoints import NUM_JOINTS


def example_to_record(example: Mapping[str, Any]) -> dict[str, Any]:
    """Turns a decoded TFDS example back into the exact `image_records` record types."""
    return {
        "image_id": int(example["image_id"]),
        "file_name": example["file_name"].decode("utf-8"),
        "image_path": example["image_path"].decode("utf-8"),
        "height": int(example["height"]),
        "width": int(example["width"]),
        "keypoints": np.asarray(example["keypoints"], np.float32).reshape(-1, NUM_JOINTS, 3),
        "area": np.asarray(example["area"], np.float32).reshape(-1),
        "bbox": np.asarray(example["bbox"], np.float32).reshape(-1, 4),
        "iscrowd": np.asarray(example["iscrowd"], np.int32).reshape(-1),
        "num_keypoints": np.asarray(example["num_keypoints"], np.int32).reshape(-1),
        "ignore_rle": bytes(example["ignore_rle"]),
    }


class RecordSource:
    """Random access to the image records of one split (a grain RandomAccessDataSource).

    Wraps a TFDS ArrayRecord data source and returns `image_records`-typed dicts.
    """

    def __init__(self, source: Sequence[Mapping[str, Any]]):
        self._source = source

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return example_to_record(self._source[index])

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        return [example_to_record(e) for e in self._source.__getitems__(indices)]


def data_source(name: str, split: str, data_dir: str) -> RecordSource:
    """Opens a built split for random access, without TensorFlow.

    Args:
      name: TFDS name, e.g. "coco_person_keypoints/val2017", "ochuman/test",
        "coco_format/coco_mini".
      split: split name, e.g. "val2017", "test", "train".
      data_dir: the TFDS data dir it was built into.

    Returns:
      The split's records.

    Raises:
      UnknownDatasetError: `name` is not built in a local `data_dir` (a user error).
    """
    built = os.path.join(data_dir, name.split(":")[0])  # Without a version suffix.
    if "://" not in data_dir and not os.path.isdir(built):
        raise errors.UnknownDatasetError(
            f"data set {name!r} is not built in {data_dir}: expected one of "
            f"{', '.join(resources.BUNDLED_DATASETS)} (bundled), "
            "coco_person_keypoints/<train2017|val2017> "
            "(built from data.manual_dir), or a set built there with "
            "python -m logocap_jax.commands.build_data"
        )
    return RecordSource(tfds.data_source(name, split=split, data_dir=data_dir, download=False))
