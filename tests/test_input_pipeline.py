"""Tests for logocap_jax.data.input_pipeline on the bundled coco_mini training split."""

import json
import logging

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from logocap_jax.data import input_pipeline, record_checks, record_source, tfds_builders

INPUT, OUTPUT, PEOPLE = 128, 32, 4
SIZES = dict(input_size=INPUT, output_size=OUTPUT, max_people=PEOPLE)
SINGLE = grain.sharding.NoSharding()


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    tfds_builders.build_mini("coco_mini", data_dir)
    return record_source.data_source("coco_format/coco_mini", "train", data_dir)


@pytest.fixture(scope="module")
def by_id(source):
    return {source[i]["image_id"]: source[i] for i in range(len(source))}


def _iterator(source, *, batch_size=4, seed=0, shard_options=SINGLE, read_threads=0, **kwargs):
    # No reading threads by default: an iterator left open would go on preparing examples (and
    # logging) during the tests that follow. Threads and worker processes are tested in
    # test_workers_match_in_process_and_restore.
    dataset = input_pipeline.make_train_dataset(
        source,
        batch_size=batch_size,
        seed=seed,
        shard_options=shard_options,
        read_threads=read_threads,
        **{**SIZES, **kwargs},
    )
    return iter(dataset)


def _take(iterator, count):
    # Copies, because batches from workers are views of shared memory.
    return [{key: np.array(value) for key, value in next(iterator).items()} for _ in range(count)]


def _assert_batches_equal(actual, expected):
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected):
        assert sorted(got) == sorted(want)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def _crowded_record(by_id):
    return max(by_id.values(), key=lambda record: int(np.sum(record["num_keypoints"] > 0)))


def test_batch_shapes_and_dtypes(source):
    batch = next(_iterator(source, batch_size=3))
    expected = {
        "images": ((3, INPUT, INPUT, 3), np.float32),
        "heatmaps": ((3, OUTPUT, OUTPUT, 18), np.float32),
        "heatmap_weights": ((3, OUTPUT, OUTPUT, 1), np.float32),
        "offsets": ((3, OUTPUT, OUTPUT, 34), np.float32),
        "offset_weights": ((3, OUTPUT, OUTPUT, 34), np.float32),
        "keypoints": ((3, PEOPLE, 17, 3), np.float32),
        "areas": ((3, PEOPLE), np.float32),
        "valid": ((3, PEOPLE), np.bool_),
        "transform": ((3, 3, 3), np.float32),
        "transform_inv": ((3, 3, 3), np.float32),
        "flip": ((3,), np.bool_),
        "image_id": ((3,), np.int64),
        "replaced": ((3,), np.int32),
    }
    assert {key: (value.shape, value.dtype) for key, value in batch.items()} == expected
    device_keys = {k: v for k, v in expected.items() if k not in ("image_id", "replaced")}
    spec = input_pipeline.batch_spec(3, input_size=INPUT, output_size=OUTPUT, max_people=PEOPLE)
    assert spec == device_keys
    assert not batch["replaced"].any()
    np.testing.assert_allclose(
        batch["transform"] @ batch["transform_inv"],
        np.broadcast_to(np.eye(3), (3, 3, 3)),
        atol=1e-4,
    )


def test_same_seed_same_batches_other_seed_differs(source):
    first = _take(_iterator(source, seed=3), 3)
    _assert_batches_equal(_take(_iterator(source, seed=3), 3), first)
    other = _take(_iterator(source, seed=4), 3)
    assert not all(np.array_equal(a["images"], b["images"]) for a, b in zip(first, other))


def test_each_epoch_is_a_new_permutation(source):
    # 38 records in batches of 2: every epoch is exactly 19 batches.
    steps = len(source) // 2
    ids = np.concatenate([b["image_id"] for b in _take(_iterator(source, batch_size=2), 2 * steps)])
    first, second = ids[: len(source)], ids[len(source) :]
    assert sorted(first) == sorted(second) and len(set(first)) == len(source)
    assert not np.array_equal(first, second)


def test_pipeline_equals_eager_transform(source, by_id):
    seed, batch_size, step = 5, 3, 2
    batch = _take(_iterator(source, batch_size=batch_size, seed=seed), step + 1)[step]
    for j, image_id in enumerate(batch["image_id"]):
        index = step * batch_size + j
        eager = input_pipeline.train_example(
            by_id[int(image_id)], input_pipeline.example_rng(seed, index), **SIZES
        )
        eager["replaced"] = np.int32(0)
        _assert_batches_equal([{k: v[j] for k, v in batch.items()}], [eager])


def test_state_save_and_restore(source):
    iterator = _iterator(source)
    _take(iterator, 3)
    state = json.loads(json.dumps(iterator.get_state()))
    expected = _take(iterator, 2)
    restored = _iterator(source)
    restored.set_state(state)
    _assert_batches_equal(_take(restored, 2), expected)


def test_state_round_trips_through_orbax(source, tmp_path):
    iterator = _iterator(source)
    _take(iterator, 3)
    with ocp.CheckpointManager(tmp_path / "checkpoints") as manager:
        manager.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(iterator)))
        manager.wait_until_finished()
        restored = manager.restore(
            3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(_iterator(source)))
        )["data"]
    _assert_batches_equal(_take(restored, 2), _take(iterator, 2))


def test_process_shards_partition_the_global_batch(source):
    single = _take(_iterator(source, batch_size=4), 3)
    shards = [
        _take(
            _iterator(source, batch_size=4, shard_options=grain.sharding.ShardOptions(index, 2)), 3
        )
        for index in range(2)
    ]
    for index, shard in enumerate(shards):
        _assert_batches_equal(
            shard, [{k: v[index::2] for k, v in batch.items()} for batch in single]
        )


@pytest.mark.slow
def test_workers_match_in_process_and_restore(source):
    expected = _take(_iterator(source), 5)
    iterator = _iterator(source, worker_count=2, read_threads=2)
    _assert_batches_equal(_take(iterator, 3), expected[:3])
    state = iterator.get_state()
    iterator.close()
    restored = _iterator(source, worker_count=2)
    restored.set_state(json.loads(json.dumps(state)))
    _assert_batches_equal(_take(restored, 2), expected[3:])
    restored.close()


def test_crowded_image_keeps_first_people_and_logs_once(by_id, monkeypatch, caplog):
    monkeypatch.setattr(input_pipeline, "_warned_truncation", False)
    record = _crowded_record(by_id)
    num_people = int(np.sum((record["num_keypoints"] > 0) & (record["iscrowd"] == 0)))
    assert num_people > PEOPLE
    with caplog.at_level(logging.WARNING, logger=input_pipeline.__name__):
        for index in range(2):
            example = input_pipeline.train_example(
                record, input_pipeline.example_rng(0, index), **SIZES
            )
    assert len(caplog.records) == 1 and str(record["image_id"]) in caplog.text
    everyone = input_pipeline.train_example(
        record, input_pipeline.example_rng(0, 1), **{**SIZES, "max_people": num_people}
    )
    assert example["valid"].all() and everyone["valid"].all()
    for key in ("keypoints", "areas"):
        np.testing.assert_array_equal(example[key], everyone[key][:PEOPLE], err_msg=key)
    for key in ("images", "heatmaps", "heatmap_weights", "offsets", "offset_weights"):
        np.testing.assert_array_equal(example[key], everyone[key], err_msg=key)


@pytest.mark.parametrize("contents, message", [(None, "not found"), (b"not a jpeg", "decode")])
def test_unreadable_image_names_the_file(source, tmp_path, contents, message):
    path = tmp_path / "broken.jpg"
    if contents is not None:
        path.write_bytes(contents)
    record = {**source[0], "image_path": str(path)}
    with pytest.raises(record_checks.BadImageError, match=f"{message}.*: {path}$"):
        input_pipeline.train_example(record, input_pipeline.example_rng(0, 0), **SIZES)
    # With no usable record to take its place, the pipeline fails naming it.
    with pytest.raises(ValueError, match=f"1 training records in a row.*{message}.*{path}"):
        next(_iterator([record], batch_size=1))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(batch_size=3, shard_options=grain.sharding.ShardOptions(0, 2)), "multiple"),
        (dict(output_size=64), "stride"),
    ],
)
def test_rejects_inconsistent_sizes(source, kwargs, message):
    with pytest.raises(ValueError, match=message):
        _iterator(source, **kwargs)


def test_start_index_resumes_at_a_global_batch_for_any_shard_count(source):
    batch_size, skipped = 4, 3
    expected = _take(_iterator(source, batch_size=batch_size), skipped + 2)[skipped:]
    resumed = _take(_iterator(source, batch_size=batch_size, start_index=skipped * batch_size), 2)
    _assert_batches_equal(resumed, expected)
    for index in range(2):
        shard = _take(
            _iterator(
                source,
                batch_size=batch_size,
                shard_options=grain.sharding.ShardOptions(index, 2),
                start_index=skipped * batch_size,
            ),
            2,
        )
        _assert_batches_equal(
            shard, [{k: v[index::2] for k, v in batch.items()} for batch in expected]
        )
