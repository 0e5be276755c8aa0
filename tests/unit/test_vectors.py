"""Vectors in shards: the float32 wire form, shard names, create-only shard writes and the
rows that point into them (streaming/sinks/vectors.py)."""

from __future__ import annotations

import io
import json
import os
import time

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from streaming.records import ImageInfo, ImageRef, RecordFormatError
from streaming.sinks import files, vectors

MODEL = "resnet50-avgpool@0123456789abcdef+onnxruntime-1.32.0"


def item(i: int, model_id: str = MODEL) -> vectors.Embedded:
    ref = ImageRef("bkt", f"img-{i}.jpg", 1000 + i, size=1234, event_time="2026-12-03T00:00:00Z")
    vec = np.random.default_rng(i).standard_normal(2048).astype(np.float32)
    return vectors.Embedded(ImageInfo(ref, 640, 480, "JPEG"), vec, model_id)


def test_embedded_crosses_a_shuffle_as_float32_bytes():
    e = item(1)
    coder = beam.coders.registry.get_coder(vectors.Embedded)
    data = coder.encode(e)
    assert coder.decode(data) == e
    # 2048 float32 = 8192 bytes; the record and model id add a few hundred, not 30 KB of text.
    assert 8192 < len(data) < 8192 + 600
    assert e.vector.tobytes() in data


def test_embedded_of_another_format_fails_loudly():
    data = bytearray(vectors.encode_embedded(item(1)))
    data[0] = 9
    with pytest.raises(RecordFormatError, match="format 9"):
        vectors.decode_embedded(bytes(data))


def test_embedded_unpacks_like_a_keyed_prediction():
    e = item(2)
    info, result = e
    assert info is e.info and result.model_id == MODEL
    np.testing.assert_array_equal(result.inference, e.vector)


def test_shard_names_follow_rows_order_and_the_whole_model_id():
    keys = [item(i).info.ref.key for i in range(3)]
    a = vectors.shard_path("gs://b/v", MODEL, keys)
    assert a == vectors.shard_path("gs://b/v", MODEL, keys)  # a retried group: same object
    assert a.startswith("gs://b/v/shards/0123456789abcdef.onnxruntime-1.32.0/")
    assert a.endswith("-3.npy")
    assert a != vectors.shard_path("gs://b/v", MODEL, keys[::-1])
    assert a != vectors.shard_path("gs://b/v", MODEL, keys[:2])
    other_runtime = MODEL.replace("onnxruntime-1.32.0", "tensorflow-2.21.0")
    assert a != vectors.shard_path("gs://b/v", other_runtime, keys)


def test_row_floats_are_short_and_exact():
    vec = np.random.default_rng(0).standard_normal(2048).astype(np.float32)
    short = files.float32_list(vec)
    np.testing.assert_array_equal(np.float32(short), vec)
    assert len(json.dumps(short)) < 0.7 * len(json.dumps(vec.tolist()))


def test_a_group_becomes_one_shard_and_each_row_points_at_its_vector(tmp_path):
    root = str(tmp_path / "vectors")
    group = [item(i) for i in range(5)]
    with TestPipeline() as p:
        out = p | beam.Create([group], reshuffle=False) | vectors.WriteShards(root)
        assert_that(
            out.rows | beam.Map(lambda r: (r["name"], r["vector_index"])),
            equal_to([(f"img-{i}.jpg", i) for i in range(5)]),
            label="indexes",
        )
        assert_that(
            out.rows | beam.Map(lambda r: r["vector_uri"]) | beam.Distinct(),
            equal_to(
                [os.path.abspath(vectors.shard_path(root, MODEL, [e.info.ref.key for e in group]))]
            ),
            label="one shard",
        )
        assert_that(
            out.rows
            | beam.Map(
                lambda r: bool(
                    np.array_equal(
                        vectors.read_vectors(r["vector_uri"], [r["vector_index"]])[0],
                        np.float32(r["embedding"]),
                    )
                )
            ),
            equal_to([True] * 5),
            label="own vector",
        )
    written = [f for _, _, files in os.walk(root) for f in files]
    assert len(written) == 1


def test_groups_of_two_models_never_share_a_shard(tmp_path):
    root = str(tmp_path / "vectors")
    other = MODEL.replace("0123456789abcdef", "fedcba9876543210")
    with TestPipeline() as p:
        out = (
            p
            | beam.Create([[item(0), item(1, other), item(2)]], reshuffle=False)
            | vectors.WriteShards(root)
        )
        assert_that(
            out.rows | beam.Map(lambda r: (r["name"], r["model_fingerprint"], r["vector_index"])),
            equal_to(
                [
                    ("img-0.jpg", "0123456789abcdef", 0),
                    ("img-2.jpg", "0123456789abcdef", 1),
                    ("img-1.jpg", "fedcba9876543210", 0),
                ]
            ),
        )
    assert sorted(os.listdir(os.path.join(root, "shards"))) == [
        "0123456789abcdef.onnxruntime-1.32.0",
        "fedcba9876543210.onnxruntime-1.32.0",
    ]


class _Blob:
    def __init__(self, store, name):
        self.store, self.name = store, name

    def upload_from_string(self, data, content_type=None, if_generation_match=None, retry=None):
        from google.api_core import exceptions as gexc

        self.store.attempts.append(self.name)
        if self.store.fail:
            raise gexc.ServiceUnavailable("down")
        if if_generation_match == 0 and self.name in self.store.objects:
            raise gexc.PreconditionFailed("exists")
        self.store.objects[self.name] = data


class FakeStorage:
    """The part of a storage client that create-only writes use."""

    def __init__(self):
        self.objects, self.attempts, self.fail = {}, [], False

    def bucket(self, name):
        store = self
        return type("B", (), {"blob": lambda _self, n: _Blob(store, n)})()


def _run_fn(fn, batch):
    out = list(fn.process(batch))
    rows = [o for o in out if isinstance(o, dict)]
    dead = [o.value for o in out if not isinstance(o, dict)]
    return rows, dead


def test_a_retried_group_finds_its_shard_and_emits_the_same_rows():
    fn = vectors._WriteShardFn("gs://b/v")
    fn._gcs = store = FakeStorage()
    group = [item(i) for i in range(4)]
    first, _ = _run_fn(fn, group)
    again, dead = _run_fn(fn, group)  # the create-only write answers 412: kept, not lost
    assert len(store.objects) == 1 and len(store.attempts) == 2 and not dead
    strip = lambda rows: [(r["row_key"], r["vector_uri"], r["vector_index"]) for r in rows]
    assert strip(first) == strip(again)
    ((name, data),) = store.objects.items()
    matrix = np.load(io.BytesIO(data))
    for r in first:
        np.testing.assert_array_equal(matrix[r["vector_index"]], np.float32(r["embedding"]))


def test_a_shard_that_cannot_be_written_dead_letters_every_image_in_it(monkeypatch):
    fn = vectors._WriteShardFn("gs://b/v")
    fn._gcs = store = FakeStorage()
    store.fail = True
    monkeypatch.setattr("time.sleep", lambda s: None)
    rows, dead = _run_fn(fn, [item(0), item(1)])
    assert rows == [] and not store.objects
    assert [(d.ref.name, d.reason) for d in dead] == [
        ("img-0.jpg", "vector_write_error"),
        ("img-1.jpg", "vector_write_error"),
    ]


def test_streaming_groups_fill_shards_up_to_the_size():
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
    from apache_beam.testing.test_stream import TestStream

    opts = PipelineOptions()
    opts.view_as(StandardOptions).streaming = True
    items = [item(i) for i in range(7)]
    # Past the real-time flush: the lone seventh vector goes out then, in a shard of one.
    stream = (
        TestStream()
        .add_elements(items)
        .advance_processing_time(int(time.time()) + 3600)
        .advance_watermark_to_infinity()
    )
    with TestPipeline(options=opts) as p:
        groups = p | stream | vectors.GroupForShards(3, 60, 1, streaming=True)
        assert_that(groups | beam.Map(len), equal_to([3, 3, 1]))


def test_readers_take_a_row_without_its_embedding_from_the_shard(tmp_path):
    from analysis.rows import LocalRows

    out = tmp_path / "out"
    group = [item(i) for i in range(3)]
    root = str(out / "vectors")
    fn = vectors._WriteShardFn(root)
    fn._gcs = None
    rows, dead = _run_fn(fn, group)
    assert not dead
    os.makedirs(out / "rows" / "bkt")
    for r in rows:
        r = dict(r, embedding=[])  # a row that names its vector instead of carrying it
        with open(out / "rows" / "bkt" / f"{r['name']}.json", "wb") as f:
            f.write(files.ndjson_line(r))
    current = {r["name"]: r for r in LocalRows(str(out)).current()}
    for e in group:
        np.testing.assert_array_equal(np.float32(current[e.info.ref.name]["embedding"]), e.vector)


@pytest.mark.parametrize(
    "flag,value",
    [
        ("--vectors_per_shard", "0"),
        ("--shard_keys", "0"),
        ("--shard_wait_secs", "0"),
        ("--shard_idle_secs", "0"),
        ("--shard_idle_secs", "nan"),
    ],
)
def test_shard_options_out_of_range_are_refused_before_the_job_starts(flag, value):
    from streaming import main
    from streaming.config.cli import UsageError

    with pytest.raises(UsageError, match=flag):
        main.make_options(["--input_dir", ".", "--output_dir", "out", flag, value])


def test_a_partial_shard_closes_at_the_idle_gap_but_never_after_the_wait():
    assert vectors.flush_at(first=10.0, now=10.5, wait_secs=2.0, idle_secs=0.1) == 10.6
    assert vectors.flush_at(first=10.0, now=11.95, wait_secs=2.0, idle_secs=0.1) == 12.0


def test_a_busy_keys_partial_shard_waits_out_the_wait():
    assert vectors.flush_at(10.0, 10.5, wait_secs=2.0, idle_secs=0.1, busy=True) == 12.0


@pytest.mark.parametrize("rate", [1.0, 5.0, 20.0, 200.0])
def test_the_rate_estimate_settles_at_a_steady_rate(rate):
    estimate, step = 0.0, 1.0 / rate
    for _ in range(int(60 * rate)):  # a minute of arrivals
        estimate = vectors.decayed_rate(estimate, step)
    assert estimate == pytest.approx(rate, rel=0.15)


def test_a_burst_counts_as_its_size_over_the_meters_memory():
    assert vectors.decayed_rate(0.0, 0.0, arrivals=5) == 5 / vectors.RATE_SECS
    assert vectors.decayed_rate(10.0, 1e6) == pytest.approx(1 / vectors.RATE_SECS)


@pytest.mark.parametrize(
    "rate,keys", [(0.0, 1), (1.0, 1), (20.0, 1), (200.0, 1), (251.0, 2), (1000.0, 4), (1e5, 16)]
)
def test_keys_follow_the_rate_one_per_full_shard_a_wait(rate, keys):
    assert vectors.keys_for(rate, size=500, wait_secs=2.0, max_keys=16) == keys


def test_the_key_picker_uses_one_key_at_a_low_rate_and_more_as_it_rises():
    clock = iter(i / 1000.0 for i in range(100_000))  # 1,000 vectors a second
    vectors.RateKeys._rate, vectors.RateKeys._at = 0.0, None
    pick = vectors.RateKeys(500, 2.0, 16, clock=lambda: next(clock))
    early = {pick(i)[0] for i in range(5)}
    picks = [pick(i)[0] for i in range(20_000)]  # 20 s at 1,000 a second
    late = set(picks[-2000:])
    assert early == {0}
    assert late == {0, 1, 2, 3}


def _groups_over_processing_time(idle_secs, steps, expected=None):
    """Lengths of the shards `_ShardBufferFn` emits for `steps`: ("add", n) or
    ("advance", secs) on the test clock, which starts at 0 (the fn's clock reads 0)."""
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
    from apache_beam.testing.test_stream import TestStream

    opts = PipelineOptions()
    opts.view_as(StandardOptions).streaming = True
    stream, made = TestStream(), 0
    for kind, value in steps:
        if kind == "add":
            stream = stream.add_elements([item(made + i) for i in range(value)])
            made += value
        else:
            stream = stream.advance_processing_time(value)
    stream = stream.advance_watermark_to_infinity()
    with TestPipeline(options=opts) as p:
        groups = (
            p
            | stream
            | beam.Map(lambda e: (0, e))
            | beam.ParDo(vectors._ShardBufferFn(100, 60.0, idle_secs, clock=lambda: 0.0))
        )
        want = EXPECTED[idle_secs] if expected is None else expected
        assert_that(groups | beam.Map(len), equal_to(want))


EXPECTED = {0.1: [2, 1], 1.0: [3]}


def test_a_busy_keys_shard_does_not_close_at_the_idle_gap():
    # 30 vectors at once: the key's rate (30 / RATE_SECS = 6 a second) is busy, so the
    # 0.5 s gap does not close the shard; the lone one after it joins them.
    assert 30 / vectors.RATE_SECS >= vectors.BUSY_KEY_RATE
    steps = [("add", 30), ("advance", 0.5), ("add", 1), ("advance", 100.0)]
    _groups_over_processing_time(0.1, steps, expected=[31])


@pytest.mark.parametrize("idle_secs", sorted(EXPECTED))
def test_a_lone_vector_waits_only_the_idle_gap(idle_secs):
    # Two vectors, 0.5 s of nothing, one more: a 0.1 s gap closes the first shard at two.
    _groups_over_processing_time(
        idle_secs, [("add", 2), ("advance", 0.5), ("add", 1), ("advance", 5.0)]
    )


def test_rows_without_their_embedding_name_a_shard_that_holds_it(tmp_path):
    """--row_embedding none: the row's embedding is empty and its shard has the vector."""
    group = [item(i) for i in range(3)]
    fn = vectors._WriteShardFn(str(tmp_path / "vectors"), with_embedding=False)
    fn._gcs = None
    rows, dead = _run_fn(fn, group)
    assert not dead and all(r["embedding"] == [] for r in rows)
    for r, e in zip(rows, group):
        np.testing.assert_array_equal(
            vectors.read_vectors(r["vector_uri"], [r["vector_index"]])[0], e.vector
        )


def test_rows_without_their_embedding_need_somewhere_for_the_vectors():
    from streaming import main
    from streaming.config.cli import UsageError

    argv = ["--input_subscription", "projects/my-project/subscriptions/subs"]
    with pytest.raises(UsageError, match="--row_embedding none needs --output_gcs"):
        main.make_options(argv + ["--output_table", "my-project:ds.t", "--row_embedding", "none"])
    opts = main.make_options(argv + ["--output_dir", "out", "--row_embedding", "none"])
    assert opts.row_embedding == "none"
