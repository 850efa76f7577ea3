"""TensorFlow-free TFDS builders for COCO person keypoints, OCHuman and any COCO-format set.

Each example is one `coco_records.image_records` record: images stay as absolute file paths
(nothing is re-encoded) and the P persons of an image are ragged tensors. Splits are written
as ArrayRecord and read back with random access (`record_source.data_source`), ready for grain.

Every record is checked before anything is written (`coco_records.screen_records`: annotation
values, ignore region, image file fully decoded and of the annotated size). A bad record is
skipped, logged, and listed with its class of problem and reason in `build_report.json` next to
the data set's files; the counts go to the data set's metadata (`builder.info.metadata`,
metadata.json). With `strict=True` (`--strict`) any bad record is an error naming it; a split
whose records are all bad is an error either way.

Only `GeneratorBasedBuilder.download_and_prepare` and `as_data_source` / `tfds.data_source`
are used, and they run without TensorFlow (tests check it is never imported); `tfds.load`,
the `tfds` CLI, `tfds.testing` and `tfds.list_builders` need it.

Command line:

  python -m logocap_jax.commands.build_data --dataset coco --data_dir DIR --manual_dir COCO

A user error (missing file or folder, file not in COCO format, bad records under --strict,
unknown config) prints one line and exits with status 2; --verbose shows the traceback.
"""

import collections
import dataclasses
import json
import logging
import os
import shutil
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from logocap_jax import errors, resources
from logocap_jax.data import coco_records, record_checks
from logocap_jax.keypoints import NUM_JOINTS

_LOG = logging.getLogger(__name__)
FILE_FORMAT = "array_record"
# Written next to the data set's files: every skipped record with its problem and reason.
REPORT_FILE = "build_report.json"
# Bad records named one by one in the build log; the report lists all of them.
_LOGGED_BAD_RECORDS = 20
MINI_DATASETS = resources.BUNDLED_DATASETS

_COCO_CITATION = """@inproceedings{lin2014coco, title={Microsoft {COCO}: Common Objects in
  Context}, author={Lin, Tsung-Yi and others}, booktitle={ECCV}, year={2014}}"""
_OCHUMAN_CITATION = """@inproceedings{zhang2019pose2seg, title={Pose2Seg: Detection Free Human
  Instance Segmentation}, author={Zhang, Song-Hai and others}, booktitle={CVPR}, year={2019}}"""


class BuildError(errors.InputFormatError):
    """A data set cannot be built as asked: an unknown config, a bad record in a strict build,
    or a split whose records are all bad (a user error)."""


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

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {
        "1.0.0": "Image records with paths, ragged persons and ignore RLE.",
        "1.1.0": "Records checked at build time; bad ones skipped and listed in "
        "build_report.json, counted in metadata.json.",
    }
    HOMEPAGE = "https://cocodataset.org/#keypoints-2017"
    CITATION = _COCO_CITATION
    # Nothing is downloaded, so there are no URL checksums. Looking for the checksums file
    # imports importlib_resources, which tfds 4.9.10 uses but does not declare
    # (tensorflow/datasets#11212), and fails where it is not installed.
    url_infos = None

    def __init__(self, *, strict: bool = False, **kwargs):
        """See `tfds.core.GeneratorBasedBuilder`; strict makes any bad record an error."""
        super().__init__(**kwargs)
        self.strict = strict
        self._original_state["strict"] = strict  # Pickled builders keep it.

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.builder_config.description,
            features=_features(),
            homepage=self.HOMEPAGE,
            citation=self.CITATION,
            # Keys are positions in the annotation file, so splits keep the file order.
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(),
        )

    def download_and_prepare(self, **kwargs) -> None:
        """Builds the data set unless it exists; a strict call also fails on an existing one
        that was built with bad records skipped.

        Raises:
          BuildError: a strict build met a bad record, or all records of a split are bad.
        """
        # TFDS's bars redraw with carriage returns, which pile up as fragments in a log file.
        tfds.display_progress_bar(sys.stderr.isatty())
        super().download_and_prepare(**kwargs)
        metadata = self.info.metadata
        if self.strict and (
            sum(metadata.get("skipped_records", {}).values()) or metadata.get("ignored_annotations")
        ):
            report_file = os.path.join(self.data_dir, REPORT_FILE)
            with open(report_file) as f:
                report = json.load(f)
            entries = [e for s in report["splits"].values() for e in s["skipped_records"]]
            first = coco_records.BadEntry(**[*entries, *report["ignored_annotations"]][0])
            raise BuildError(
                f"{self.info.full_name} was built with bad records skipped ({report_file}), "
                f"e.g. {first.describe()}"
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
        splits = self.builder_config.splits
        # Every record is checked first, so a strict build fails before anything is written.
        screened = coco_records.screen_records(
            annotation_file, image_dir, keep_images_without_people=splits.values()
        )
        good, report = _build_report(self.info.full_name, screened, splits)
        problems = [*_bad_entries(screened, splits), *screened.ignored_annotations]
        if self.strict and problems:
            raise BuildError(
                f"{self.info.full_name}: {len(problems)} bad record(s) or annotation(s) in "
                f"{annotation_file}, e.g. {problems[0].describe()}; build without strict "
                "to skip them"
            )
        for split, entry in report["splits"].items():
            if entry["skipped"] and not entry["records"]:
                first = coco_records.BadEntry(**entry["skipped_records"][0])
                raise BuildError(
                    f"{self.info.full_name} {split}: all {entry['skipped']} records are bad, "
                    f"e.g. {first.describe()}"
                )
        with open(os.path.join(self.data_dir, REPORT_FILE), "w") as f:
            json.dump(report, f, indent=1)
        self.info.metadata.update(_report_counts(report))
        # Records hold absolute image paths: a build from another folder is stale.
        self.info.metadata["image_dir"] = os.path.abspath(image_dir)
        _log_problems(self.info.full_name, problems, report)
        return {split: self._generate_examples(screened.records(good[split])) for split in splits}

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
            name=name,
            description=description,
            annotation_file=f"annotations/{annotations}.json",
            image_dir=f"images/{images}",
            splits={name: keep_empty},
        )
        for name, description, annotations, images, keep_empty in (
            (
                "train2017",
                "train2017, images with any annotation",
                "person_keypoints_train2017",
                "train2017",
                False,
            ),
            ("val2017", "val2017, all 5000 images", "person_keypoints_val2017", "val2017", True),
            (
                "test_dev2017",
                "test-dev 2017 images, no annotations",
                "image_info_test-dev2017",
                "test2017",
                True,
            ),
        )
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


def _bad_entries(
    screened: coco_records.ScreenedRecords, splits: Mapping[str, bool]
) -> list[coco_records.BadEntry]:
    """The bad records any of `splits` would keep, each once, in file order."""
    kept = {i for keep in set(splits.values()) for i in screened.candidates(keep)}
    return [screened.bad[i] for i in sorted(kept & set(screened.bad))]


def _build_report(
    dataset: str, screened: coco_records.ScreenedRecords, splits: Mapping[str, bool]
) -> tuple[dict[str, list[int]], dict[str, Any]]:
    """(split -> images entries written, the JSON build report)."""
    good, per_split = {}, {}
    for split, keep in splits.items():
        candidates = screened.candidates(keep)
        good[split] = [i for i in candidates if i not in screened.bad]
        skipped = [screened.bad[i] for i in candidates if i in screened.bad]
        per_split[split] = {
            "records": len(good[split]),
            "skipped": len(skipped),
            "skipped_by_problem": dict(collections.Counter(e.problem for e in skipped)),
            "skipped_records": [dataclasses.asdict(e) for e in skipped],
        }
    report = {
        "dataset": dataset,
        "annotation_file": os.path.abspath(screened.annotation_file),
        "image_dir": screened.image_dir,
        "splits": per_split,
        "ignored_annotations": [dataclasses.asdict(e) for e in screened.ignored_annotations],
        "problems": record_checks.PROBLEMS,
    }
    return good, report


def _report_counts(report: Mapping[str, Any]) -> dict[str, Any]:
    """The counts of a build report, for the data set's metadata."""
    return {
        "build_report": REPORT_FILE,
        "records": {split: entry["records"] for split, entry in report["splits"].items()},
        "skipped_records": {split: entry["skipped"] for split, entry in report["splits"].items()},
        "skipped_by_problem": {
            split: entry["skipped_by_problem"] for split, entry in report["splits"].items()
        },
        "ignored_annotations": len(report["ignored_annotations"]),
    }


def _log_problems(
    dataset: str, problems: Sequence[coco_records.BadEntry], report: Mapping[str, Any]
) -> None:
    for entry in problems[:_LOGGED_BAD_RECORDS]:
        _LOG.warning("%s: skipped %s", dataset, entry.describe())
    if len(problems) > _LOGGED_BAD_RECORDS:
        _LOG.warning(
            "%s: %d more bad records or annotations, listed in %s",
            dataset,
            len(problems) - _LOGGED_BAD_RECORDS,
            REPORT_FILE,
        )
    for split, entry in report["splits"].items():
        if entry["skipped"]:
            _LOG.warning(
                "%s %s: %d of %d records skipped (%s), listed in %s",
                dataset,
                split,
                entry["skipped"],
                entry["skipped"] + entry["records"],
                ", ".join(f"{n} {p}" for p, n in entry["skipped_by_problem"].items()),
                REPORT_FILE,
            )


def build_coco_format(
    name: str,
    annotation_file: str,
    image_dir: str,
    data_dir: str,
    *,
    splits: Mapping[str, bool],
    strict: bool = False,
) -> tfds.core.DatasetBuilder:
    """Builds `coco_format/<name>` from any COCO-format file; a no-op if already built.

    Args:
      name: data set (config) name, e.g. "coco_mini".
      annotation_file: COCO person-keypoint JSON.
      image_dir: folder holding the images.
      data_dir: TFDS data dir to write into.
      splits: split name -> keep_images_without_people.
      strict: make a bad record an error instead of skipping it.

    Returns:
      The prepared builder; `builder.as_data_source(split)` reads a split back, and
      `builder.info.metadata` holds the counts of skipped records.

    Raises:
      FileNotFoundError: the annotation file is missing.
      coco_records.CocoFormatError: it is not a COCO annotation file.
      BuildError: strict and a record is bad, or all records of a split are bad.
    """
    config = CocoFormatConfig(
        name=name,
        description=f"{name}: {os.path.basename(annotation_file)}",
        annotation_file=os.path.abspath(annotation_file),
        image_dir=os.path.abspath(image_dir),
        splits=dict(splits),
    )
    make = lambda: CocoFormat(
        config=config, data_dir=data_dir, file_format=FILE_FORMAT, strict=strict
    )
    builder = _fresh(make, config.image_dir)
    builder.download_and_prepare()
    return builder


def build_mini(
    name: str, data_dir: str, source_dir: str | None = None, *, strict: bool = False
) -> tfds.core.DatasetBuilder:
    """Builds a bundled mini set with a "train" and a "val" split.

    Args:
      name: "coco_mini" or "ochuman_mini".
      data_dir: TFDS data dir to write into.
      source_dir: the mini set's folder (annotations/, images/); default: the bundled copy
        (`resources.data_path(name)`).
      strict: make a bad record an error instead of skipping it.

    Returns:
      The prepared `coco_format/<name>` builder.
    """
    if name not in MINI_DATASETS:
        raise errors.UnknownDatasetError(
            f"unknown mini data set {name!r}; expected one of {MINI_DATASETS}"
        )
    source_dir = source_dir or resources.data_path(name)
    return build_coco_format(
        name,
        os.path.join(source_dir, "annotations", "person_keypoints_mini.json"),
        os.path.join(source_dir, "images"),
        data_dir,
        splits={"train": False, "val": True},
        strict=strict,
    )


def build_named(
    builder_cls: type[_CocoFormatBuilder],
    data_dir: str,
    manual_dir: str,
    configs: Sequence[str] | None = None,
    *,
    strict: bool = False,
) -> list[tfds.core.DatasetBuilder]:
    """Builds configs of `CocoPersonKeypoints` or `OCHuman` from a manual dir.

    Args:
      builder_cls: the builder class.
      data_dir: TFDS data dir to write into.
      manual_dir: folder laid out as the class's MANUAL_DOWNLOAD_INSTRUCTIONS say.
      configs: config names to build; default all.
      strict: make a bad record an error instead of skipping it.

    Returns:
      The prepared builders, one per config.

    Raises:
      FileNotFoundError: manual_dir or a file of a config is missing.
      coco_records.CocoFormatError: an annotation file is not in COCO format.
      BuildError: a config name the class does not have, or strict and a record is bad, or
        all records of a split are bad.
    """
    known = [config.name for config in builder_cls.BUILDER_CONFIGS]
    names = configs or known
    unknown = [name for name in names if name not in known]
    if unknown:
        raise BuildError(
            f"unknown {builder_cls.name} config(s) {unknown}; expected some of {known}"
        )
    if not os.path.isdir(manual_dir):
        raise errors.InputNotFoundError(f"manual dir not found: {manual_dir}")
    download_config = tfds.download.DownloadConfig(manual_dir=manual_dir)
    builders = []
    for config in names:
        make = lambda config=config: builder_cls(
            config=config, data_dir=data_dir, file_format=FILE_FORMAT, strict=strict
        )
        image_dir = os.path.join(manual_dir, make().builder_config.image_dir)
        builder = _fresh(make, image_dir)
        builder.download_and_prepare(download_config=download_config)
        builders.append(builder)
    return builders


def _fresh(make, image_dir: str) -> tfds.core.DatasetBuilder:
    """make(), with its prepared data removed first when it was built from images elsewhere
    (its records would point there): a moved checkout or data folder rebuilds once."""
    builder = make()
    built_from = builder.info.metadata.get("image_dir")
    if builder.is_prepared() and built_from != os.path.abspath(image_dir):
        _LOG.warning(
            "%s was built from images in %s; rebuilding it from %s",
            builder.info.full_name,
            built_from,
            os.path.abspath(image_dir),
        )
        shutil.rmtree(builder.data_dir)
        builder = make()
    return builder
