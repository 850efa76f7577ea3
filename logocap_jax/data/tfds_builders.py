"""TensorFlow-free TFDS builders for COCO person keypoints, OCHuman and any COCO-format set.

Each example is one `coco_records.image_records` record: images stay as absolute file paths
(nothing is re-encoded) and the P persons of an image are ragged tensors. Splits are written
as ArrayRecord and read back with random access through `data_source`, ready for grain.

Only `GeneratorBasedBuilder.download_and_prepare` and `as_data_source` / `tfds.data_source`
are used, and they run without TensorFlow (tests check it is never imported); `tfds.load`,
the `tfds` CLI, `tfds.testing` and `tfds.list_builders` need it.

Command line:

  python -m logocap_jax.data.tfds_builders --dataset coco --data_dir DIR --manual_dir COCO
"""

import argparse
import dataclasses
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from logocap_jax import errors
from logocap_jax.data.coco_records import image_records
from logocap_jax.keypoints import NUM_JOINTS

FILE_FORMAT = "array_record"
MINI_DATASETS = ("coco_mini", "ochuman_mini")
# Where the bundled mini sets live in a source checkout.
_REPO_DATA_DIR = os.path.normpath(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir, "data")
)

_COCO_CITATION = """@inproceedings{lin2014coco, title={Microsoft {COCO}: Common Objects in
  Context}, author={Lin, Tsung-Yi and others}, booktitle={ECCV}, year={2014}}"""
_OCHUMAN_CITATION = """@inproceedings{zhang2019pose2seg, title={Pose2Seg: Detection Free Human
  Instance Segmentation}, author={Zhang, Song-Hai and others}, booktitle={CVPR}, year={2019}}"""


@dataclasses.dataclass(eq=False)
class CocoFormatConfig(tfds.core.BuilderConfig):
    """One COCO-format annotation file + image folder, written as one or more splits.

    Attributes:
      annotation_file: JSON path, relative to the manual dir for the named data sets.
      image_dir: image folder, relative to the manual dir for the named data sets.
      splits: split name -> keep_images_without_people (False for training splits).
    """

    annotation_file: str = ""
    image_dir: str = ""
    splits: Mapping[str, bool] = dataclasses.field(default_factory=dict)


def _ragged(*shape: int, dtype: type, doc: str) -> tfds.features.Tensor:
    """A per-person tensor, [P, *shape]."""
    return tfds.features.Tensor(shape=(None, *shape), dtype=dtype, doc=doc)


def _features() -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict(
        {
            "image_id": tfds.features.Scalar(np.int64, doc="COCO image id"),
            "file_name": tfds.features.Text(doc="image file name in the annotation file"),
            "image_path": tfds.features.Text(doc="absolute image path at build time"),
            "height": tfds.features.Scalar(np.int32, doc="image height, px"),
            "width": tfds.features.Scalar(np.int32, doc="image width, px"),
            "keypoints": _ragged(NUM_JOINTS, 3, dtype=np.float32, doc="[P, 17, (x, y, v)]"),
            "area": _ragged(dtype=np.float32, doc="[P] COCO segmentation area, px^2"),
            "bbox": _ragged(4, dtype=np.float32, doc="[P, (x, y, w, h)]"),
            "iscrowd": _ragged(dtype=np.int32, doc="[P]"),
            "num_keypoints": _ragged(dtype=np.int32, doc="[P] labelled keypoints"),
            "ignore_rle": tfds.features.Scalar(
                np.object_, doc="compressed RLE counts of the ignore region, [height, width]"
            ),
        }
    )


class _CocoFormatBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Writes the splits of a `CocoFormatConfig`, one example per image in file order."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Image records with paths, ragged persons and ignore RLE."}
    HOMEPAGE = "https://cocodataset.org/#keypoints-2017"
    CITATION = _COCO_CITATION
    # Nothing is downloaded, so there are no URL checksums. Looking for the checksums file
    # imports importlib_resources, which tfds 4.9.10 uses but does not declare
    # (tensorflow/datasets#11212), and fails where it is not installed.
    url_infos = None

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.builder_config.description,
            features=_features(),
            homepage=self.HOMEPAGE,
            citation=self.CITATION,
            # Keys are positions in the annotation file, so splits keep the file order.
            disable_shuffling=True,
        )

    def _source_paths(self, dl_manager: tfds.download.DownloadManager) -> tuple[str, str]:
        """(annotation file, image folder) of the config, under the manual dir."""
        config = self.builder_config
        return (
            os.path.join(dl_manager.manual_dir, config.annotation_file),
            os.path.join(dl_manager.manual_dir, config.image_dir),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        annotation_file, image_dir = self._source_paths(dl_manager)
        # image_records validates eagerly, so bad input fails before anything is written.
        return {
            split: self._generate_examples(
                image_records(annotation_file, image_dir, keep_images_without_people=keep)
            )
            for split, keep in self.builder_config.splits.items()
        }

    def _generate_examples(self, records: Iterator[dict[str, Any]]):
        yield from enumerate(records)


class CocoPersonKeypoints(_CocoFormatBuilder):
    """COCO 2017 person keypoints; one config (and split of the same name) per file."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Download from https://cocodataset.org/#download and lay out `manual_dir` as
      annotations/person_keypoints_train2017.json   images/train2017/*.jpg
      annotations/person_keypoints_val2017.json     images/val2017/*.jpg
      annotations/image_info_test-dev2017.json      images/test2017/*.jpg
    Only the files of the configs being built are needed.
    """
    BUILDER_CONFIGS = [
        CocoFormatConfig(
            name="train2017",
            description="train2017, images with any annotation",
            annotation_file="annotations/person_keypoints_train2017.json",
            image_dir="images/train2017",
            splits={"train2017": False},
        ),
        CocoFormatConfig(
            name="val2017",
            description="val2017, all 5000 images",
            annotation_file="annotations/person_keypoints_val2017.json",
            image_dir="images/val2017",
            splits={"val2017": True},
        ),
        CocoFormatConfig(
            name="test_dev2017",
            description="test-dev 2017 images, no annotations",
            annotation_file="annotations/image_info_test-dev2017.json",
            image_dir="images/test2017",
            splits={"test_dev2017": True},
        ),
    ]


class OCHuman(_CocoFormatBuilder):
    """OCHuman val / test in the authors' COCO format; config and split named alike."""

    name = "ochuman"
    HOMEPAGE = "https://github.com/liruilong940607/OCHumanApi"
    CITATION = _OCHUMAN_CITATION
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Download OCHuman (https://github.com/liruilong940607/OCHumanApi) and lay out
    `manual_dir` as
      annotations/ochuman_coco_format_val_range_0.00_1.00.json
      annotations/ochuman_coco_format_test_range_0.00_1.00.json
      images/*.jpg
    """
    BUILDER_CONFIGS = [
        CocoFormatConfig(
            name=split,
            description=f"OCHuman {split}, all images",
            annotation_file=f"annotations/ochuman_coco_format_{split}_range_0.00_1.00.json",
            image_dir="images",
            splits={split: True},
        )
        for split in ("val", "test")
    ]


class CocoFormat(_CocoFormatBuilder):
    """Any COCO-format person-keypoint file + image folder, passed as a `CocoFormatConfig`
    with absolute paths; the config name names the data set (`coco_format/<name>`)."""

    HOMEPAGE = ""
    CITATION = ""

    def _source_paths(self, dl_manager: tfds.download.DownloadManager) -> tuple[str, str]:
        del dl_manager  # The config holds absolute paths; there is no manual dir.
        return self.builder_config.annotation_file, self.builder_config.image_dir


def build_coco_format(
    name: str, annotation_file: str, image_dir: str, data_dir: str, *, splits: Mapping[str, bool]
) -> tfds.core.DatasetBuilder:
    """Builds `coco_format/<name>` from any COCO-format file; a no-op if already built.

    Args:
      name: data set (config) name, e.g. "coco_mini".
      annotation_file: COCO person-keypoint JSON.
      image_dir: folder holding the images.
      data_dir: TFDS data dir to write into.
      splits: split name -> keep_images_without_people.

    Returns:
      The prepared builder; `builder.as_data_source(split)` reads a split back.
    """
    config = CocoFormatConfig(
        name=name,
        description=f"{name}: {os.path.basename(annotation_file)}",
        annotation_file=os.path.abspath(annotation_file),
        image_dir=os.path.abspath(image_dir),
        splits=dict(splits),
    )
    builder = CocoFormat(config=config, data_dir=data_dir, file_format=FILE_FORMAT)
    builder.download_and_prepare()
    return builder


def build_mini(name: str, data_dir: str, source_dir: str | None = None) -> tfds.core.DatasetBuilder:
    """Builds a bundled mini set with a "train" and a "val" split.

    Args:
      name: "coco_mini" or "ochuman_mini".
      data_dir: TFDS data dir to write into.
      source_dir: the mini set's folder (annotations/, images/); default: the checkout's
        data/<name>.

    Returns:
      The prepared `coco_format/<name>` builder.
    """
    if name not in MINI_DATASETS:
        raise ValueError(f"unknown mini data set {name!r}; expected one of {MINI_DATASETS}")
    source_dir = source_dir or os.path.join(_REPO_DATA_DIR, name)
    return build_coco_format(
        name,
        os.path.join(source_dir, "annotations", "person_keypoints_mini.json"),
        os.path.join(source_dir, "images"),
        data_dir,
        splits={"train": False, "val": True},
    )


def build_named(
    builder_cls: type[_CocoFormatBuilder],
    data_dir: str,
    manual_dir: str,
    configs: Sequence[str] | None = None,
) -> list[tfds.core.DatasetBuilder]:
    """Builds configs of `CocoPersonKeypoints` or `OCHuman` from a manual dir.

    Args:
      builder_cls: the builder class.
      data_dir: TFDS data dir to write into.
      manual_dir: folder laid out as the class's MANUAL_DOWNLOAD_INSTRUCTIONS say.
      configs: config names to build; default all.

    Returns:
      The prepared builders, one per config.
    """
    names = configs or [config.name for config in builder_cls.BUILDER_CONFIGS]
    download_config = tfds.download.DownloadConfig(manual_dir=manual_dir)
    builders = []
    for config in names:
        builder = builder_cls(config=config, data_dir=data_dir, file_format=FILE_FORMAT)
        builder.download_and_prepare(download_config=download_config)
        builders.append(builder)
    return builders


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
            f"{', '.join(MINI_DATASETS)} (bundled), coco_person_keypoints/<train2017|val2017> "
            "(built from data.manual_dir), or a set built there with "
            "python -m logocap_jax.data.tfds_builders"
        )
    return RecordSource(tfds.data_source(name, split=split, data_dir=data_dir, download=False))


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point: builds one data set into --data_dir."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, choices=("coco", "ochuman") + MINI_DATASETS)
    parser.add_argument("--data_dir", required=True, help="TFDS data dir to write into")
    parser.add_argument(
        "--manual_dir",
        help="source files of coco / ochuman (for a mini "
        "set: its folder, default the checkout's data/<name>)",
    )
    parser.add_argument("--configs", help="comma-separated configs (default: all)")
    args = parser.parse_args(argv)
    if args.dataset in MINI_DATASETS:
        build_mini(args.dataset, args.data_dir, source_dir=args.manual_dir)
        return
    if not args.manual_dir:
        parser.error(f"--manual_dir is required for --dataset {args.dataset}")
    builder_cls = CocoPersonKeypoints if args.dataset == "coco" else OCHuman
    configs = args.configs.split(",") if args.configs else None
    build_named(builder_cls, args.data_dir, args.manual_dir, configs)


if __name__ == "__main__":
    main()
