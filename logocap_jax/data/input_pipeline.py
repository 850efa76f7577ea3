"""Training input pipeline: image records -> augmented, batched training examples (design §1.2).

    record --read_checked_image, joints_with_center, random affine + flip--> image, mask, joints
      --heatmap / offset targets, padded OKS ground truth, ImageNet normalisation--> example
    records --shuffle per epoch, repeat, map(example), take this process's 1/P, batch--> batches

`train_example` is a pure function of a record and an ``np.random.Generator``, so the same code
runs eagerly and inside grain workers. The pipeline seeds that generator from (seed, i), i being
the example's position in the global (shuffled, repeated) stream, so an example does not depend
on the worker count, the process count or on when the iterator was restored.

One bad record never stops training. When the image of the record at stream position i cannot
be used (missing, unreadable, undecodable, truncated, or of another size than the record says:
`record_checks.read_checked_image`), position i takes the record of the first position i + k
whose image can, still with the generator of position i, and its `replaced` is k. Being a
function of (seed, i) and the data alone, the replacement is the same on every rerun and for
any worker or process count. Each bad record is logged once per process as a warning naming
its image and the reason; MAX_CONSECUTIVE_BAD_RECORDS bad records in a row stop the pipeline
with an error, as the data set rather than a record is then broken.

Example keys are the names `forward.training_outputs` and `losses.training_losses` read,
so a batch feeds both directly. R = input_size, r = output_size, G = max_people below:

  images float32 [R, R, 3] ImageNet-normalised RGB;
  heatmaps float32 [r, r, 18], heatmap_weights float32 [r, r, 1];
  offsets float32 [r, r, 34], offset_weights float32 [r, r, 34];
  keypoints float32 [G, 17, 3] (original-image px), areas float32 [G], valid bool [G],
  transform float32 [3, 3] (original -> input), transform_inv float32 [3, 3], flip bool [];
  image_id int64 []; replaced int32 [] (records skipped for this example, set by the pipeline).

A batch has the same keys with a leading per-process batch axis.
"""

import dataclasses
import functools
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np
from absl import flags

from logocap_jax.data import augment as augment_lib
from logocap_jax.data import targets
from logocap_jax.data.coco_records import labelled_people, valid_mask
from logocap_jax.data.record_checks import BadImageError, read_checked_image
from logocap_jax.inference.preprocess import normalize
from logocap_jax.keypoints import NUM_JOINTS, STRIDE

_LOG = logging.getLogger(__name__)
# Set once this process has warned that an image has more GT persons than max_people.
_warned_truncation = False
# Image paths of the bad records this process has warned about.
_warned_records: set[str] = set()
# This many unusable records in a row stop the pipeline (fewer if the source is smaller).
MAX_CONSECUTIVE_BAD_RECORDS = 100


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """Ranges of the random affine augmentation; the defaults are the official ones.

    Attributes:
      max_rotation: rotation uniform in [-max_rotation, max_rotation) degrees.
      min_scale: lower bound of the uniform crop-scale factor.
      max_scale: upper (exclusive) bound of the crop-scale factor.
      max_translate: translation bound per 200-px scale unit; 0 disables translation.
      flip_prob: probability of the horizontal flip.
    """

    max_rotation: float = 30.0
    min_scale: float = 0.75
    max_scale: float = 1.5
    max_translate: float = 40.0
    flip_prob: float = 0.5


def example_rng(seed: int, index: int) -> np.random.Generator:
    """The generator the pipeline hands `train_example` for stream position `index`."""
    return np.random.default_rng((seed, index))


def train_example(
    record: Mapping[str, Any],
    rng: np.random.Generator,
    *,
    input_size: int,
    output_size: int,
    max_people: int,
    augmentation: Augmentation = Augmentation(),
) -> dict[str, np.ndarray]:
    """Turns one image record into one training example.

    Args:
      record: an `image_records` / `RecordSource` record.
      rng: source of all randomness of this example.
      input_size: side R of the square network input.
      output_size: side r of the target grid (R / 4 for the LOGO-CAP heads).
      max_people: G, static number of ground-truth rows for the OKS matching. Targets use
        every person; only the first G eligible persons enter the OKS ground truth.
      augmentation: ranges of the random affine augmentation.

    Returns:
      The example dict described in the module docstring, without `replaced`.

    Raises:
      record_checks.BadImageError: the image file cannot be used (the message names it and
        says why).
    """
    return _example_from_image(
        record,
        _read_image(record),
        rng,
        input_size=input_size,
        output_size=output_size,
        max_people=max_people,
        augmentation=augmentation,
    )


def _read_image(record: Mapping[str, Any]) -> np.ndarray:
    return read_checked_image(record["image_path"], int(record["height"]), int(record["width"]))


def _example_from_image(
    record: Mapping[str, Any],
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    input_size: int,
    output_size: int,
    max_people: int,
    augmentation: Augmentation,
) -> dict[str, np.ndarray]:
    params = augment_lib.sample_augmentation(
        rng, image_hw=image.shape[:2], **dataclasses.asdict(augmentation)
    )
    warped = augment_lib.augment(
        image,
        valid_mask(record),
        augment_lib.joints_with_center(record),
        record["area"],
        params,
        input_size=input_size,
        output_size=output_size,
    )
    heatmaps, heatmap_weights = targets.heatmap_targets(
        warped["joints"], output_size, valid_mask=warped["mask"]
    )
    offsets, offset_weights = targets.offset_targets(warped["joints"], warped["area"], output_size)
    ground_truth = targets.oks_ground_truth(
        _first_oks_people(record, max_people),
        params,
        warped["transform"],
        input_size=input_size,
        max_people=max_people,
    )
    return {
        "images": normalize(warped["image"]),
        "heatmaps": heatmaps,
        "heatmap_weights": heatmap_weights,
        "offsets": offsets,
        "offset_weights": offset_weights,
        **ground_truth,
        "flip": np.asarray(ground_truth["flip"]),
        "image_id": np.asarray(record["image_id"], np.int64),
    }


def _first_oks_people(record: Mapping[str, Any], max_people: int) -> Mapping[str, Any]:
    """The record's persons that enter the OKS ground truth, at most the first max_people.

    Crowded images must not stop training, so extra persons are dropped (and logged once
    per process) instead of `oks_ground_truth` raising.
    """
    eligible = np.flatnonzero(labelled_people(record))
    if len(eligible) <= max_people:
        return record
    global _warned_truncation
    if not _warned_truncation:
        _warned_truncation = True
        _LOG.warning(
            "image %s has %d ground-truth persons; the OKS ground truth keeps the "
            "first max_people=%d (targets use all). Further images are not reported.",
            record["image_id"],
            len(eligible),
            max_people,
        )
    kept = eligible[:max_people]
    return {
        **record,
        **{
            key: np.asarray(record[key])[kept]
            for key in ("keypoints", "area", "iscrowd", "num_keypoints")
        },
    }


def batch_spec(
    batch_size: int, *, input_size: int, output_size: int, max_people: int
) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """(shape, dtype) of each array a training batch sends to the device (every key but
    image_id and replaced), as the module docstring lists them: what a compiled train step
    takes, without reading any data."""
    grid = (output_size, output_size)
    per_example = {
        "images": ((input_size, input_size, 3), np.float32),
        "heatmaps": ((*grid, NUM_JOINTS + 1), np.float32),
        "heatmap_weights": ((*grid, 1), np.float32),
        "offsets": ((*grid, 2 * NUM_JOINTS), np.float32),
        "offset_weights": ((*grid, 2 * NUM_JOINTS), np.float32),
        "keypoints": ((max_people, NUM_JOINTS, 3), np.float32),
        "areas": ((max_people,), np.float32),
        "valid": ((max_people,), np.bool_),
        "transform": ((3, 3), np.float32),
        "transform_inv": ((3, 3), np.float32),
        "flip": ((), np.bool_),
    }
    return {
        key: ((batch_size, *shape), np.dtype(dtype)) for key, (shape, dtype) in per_example.items()
    }


def make_train_dataset(
    source: Sequence[Mapping[str, Any]],
    *,
    batch_size: int,
    seed: int,
    input_size: int = 512,
    output_size: int = 128,
    max_people: int = 30,
    augmentation: Augmentation = Augmentation(),
    worker_count: int = 0,
    shard_options: grain.sharding.ShardOptions | None = None,
    read_threads: int = 1,
    prefetch_batches: int = 2,
    start_index: int = 0,
) -> grain.IterDataset:
    """The infinite, sharded, batched training stream.

    The global stream is the records shuffled anew each epoch (grain's index shuffle, seeded
    with seed + epoch) and repeated forever; example i of it is
    `train_example(record, example_rng(seed, i), ...)`, plus `replaced` = 0, or, if that
    record's image cannot be used, the same for the next usable record of the stream with
    `replaced` counting the records skipped (module docstring). Global batch t is stream positions
    [t * batch_size, (t + 1) * batch_size); shard p of P keeps positions i = p (mod P) of it,
    so every process gets batch_size / P examples of every global batch and the shards'
    union is the single-process batch. Batches are formed before the worker split, so the
    output does not depend on worker_count.

    start_index = t * batch_size starts the stream at global batch t: a resumed run only needs
    the number of examples consumed, whatever its process and worker counts (this is how the
    training loop resumes).

    `iter()` of the result is a `grain.DatasetIterator`: `get_state()` returns a small
    JSON-serialisable dict and `set_state(state)` on a fresh iterator of an identically
    configured dataset resumes at the next batch. For orbax, save the iterator with
    `grain.checkpoint.CheckpointSave(iterator)` (one file per process) or the state dict
    with `ocp.args.JsonSave`. A state is only valid for the same worker_count.

    Args:
      source: random-access records, e.g. `record_source.data_source(...)` or a list of
        `image_records` records.
      batch_size: global batch size, divisible by the shard count.
      seed: seed of the shuffle and of the augmentation, in [0, 2**32).
      input_size: side of the network input.
      output_size: side of the target grid, input_size / 4.
      max_people: static number of OKS ground-truth rows per image.
      augmentation: ranges of the random augmentation.
      worker_count: grain worker processes; 0 processes in this process.
      shard_options: this process's shard; default `grain.sharding.ShardByJaxProcess()`.
      read_threads: threads preparing batches (in each worker when worker_count > 0).
      prefetch_batches: batches prepared ahead (by each worker when worker_count > 0).
      start_index: stream position of the first example of the first batch.

    Returns:
      An infinite `grain.IterDataset` of batches with leading axis batch_size / shard_count.

    Raises:
      ValueError: inconsistent sizes, or an empty source. When a batch is read: the images
        of MAX_CONSECUTIVE_BAD_RECORDS (or all, if fewer) records in a row cannot be used.
    """
    shard = shard_options or grain.sharding.ShardByJaxProcess()
    _check_sizes(len(source), batch_size, shard.shard_count, input_size, output_size)
    if start_index < 0:
        raise ValueError(f"start_index={start_index} must not be negative")
    # The shuffled, repeated source indices: position i of the stream reads order[i].
    order = grain.MapDataset.range(len(source)).shuffle(seed=seed).repeat()
    transform = functools.partial(
        _indexed_example,
        order=order,
        source=source,
        seed=seed,
        input_size=input_size,
        output_size=output_size,
        max_people=max_people,
        augmentation=augmentation,
    )
    positions = order.map_with_index(transform)[
        start_index + shard.shard_index :: shard.shard_count
    ]
    dataset = positions.batch(batch_size // shard.shard_count, drop_remainder=True)
    dataset = dataset.to_iter_dataset(
        grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch_batches)
    )
    if worker_count > 0:
        _allow_unparsed_absl_flags()
        dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    return dataset


def _indexed_example(
    index: int,
    record_index: int,
    *,
    order: grain.MapDataset,
    source: Sequence[Mapping[str, Any]],
    seed: int,
    **kwargs,
) -> dict[str, np.ndarray]:
    """Example `index` of the stream, from the first usable record at or after it."""
    tries = min(len(source), MAX_CONSECUTIVE_BAD_RECORDS)
    last_error = None
    for skipped in range(tries):
        if skipped:
            record_index = order[index + skipped]
        record = source[record_index]
        try:
            image = _read_image(record)
        except BadImageError as error:
            _warn_bad_record(record, error)
            last_error = error
            continue
        example = _example_from_image(record, image, example_rng(seed, index), **kwargs)
        example["replaced"] = np.asarray(skipped, np.int32)
        return example
    raise ValueError(
        f"the images of {tries} training records in a row, from stream position {index}, "
        f"cannot be used; the last: {last_error}"
    )


def _warn_bad_record(record: Mapping[str, Any], error: BadImageError) -> None:
    if record["image_path"] in _warned_records:
        return
    _warned_records.add(record["image_path"])
    _LOG.warning(
        "training image id %s is replaced by the next usable record: %s", record["image_id"], error
    )


def _allow_unparsed_absl_flags() -> None:
    """Lets grain 0.2.18 start workers from scripts that do not use absl.app.

    With JAX installed, grain reads an absl flag when it starts worker processes, which
    raises UnparsedFlagAccessError unless the flags were parsed (google/grain#1355, fixed
    upstream in #1362). Marking them parsed keeps every default; a later absl.app.run
    still parses the command line.
    """
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _check_sizes(
    num_records: int, batch_size: int, shard_count: int, input_size: int, output_size: int
) -> None:
    if num_records == 0:
        raise ValueError("the training source has no records")
    if batch_size <= 0 or batch_size % shard_count:
        raise ValueError(
            f"global batch_size={batch_size} must be a positive multiple of "
            f"the shard count {shard_count}"
        )
    if input_size != STRIDE * output_size:
        raise ValueError(
            f"input_size={input_size} must be {STRIDE} x output_size="
            f"{output_size}: the heads predict at stride {STRIDE}"
        )
