"""The whole job on TestPipeline / TestStream with the real ResNet50 (random:0)."""

import glob
import json
import os
import re
import time

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to

from streaming import main, pipeline
from streaming.config.options import EmbedOptions
from streaming.sinks import vectors
from streaming.sources.local_folder import local_ref
from streaming.stages.load import decode_image
from tests import fixtures

pytestmark = pytest.mark.slow  # the whole job, with the model

GOOD = {
    "a/cat.jpg": fixtures.jpeg(320, 240, seed=1),
    "b/cat.jpg": fixtures.jpeg(320, 240, seed=2),
    "rotated.jpg": fixtures.exif_rotated_jpeg(),
    "alpha.png": fixtures.encode(fixtures.halves().convert("RGBA"), "PNG"),
    "deep/er/grey.png": fixtures.encode(fixtures.halves().convert("L"), "PNG"),
}
BAD = {
    "corrupt.jpg": fixtures.truncated_jpeg(),
    "empty.jpg": b"",
    "notes.jpg": b"this is a text file, not a JPEG\n",
}


def make_folder(root, files):
    for name, data in files.items():
        path = os.path.join(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)


def read_rows(out):
    rows = []
    for path in glob.glob(os.path.join(out, "rows", "*", "*.json")):
        with open(path) as f:
            rows.append(json.loads(f.read()))
    return rows


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    src, out = str(root / "images"), str(root / "out")
    make_folder(src, {**GOOD, **BAD, "README.txt": b"skipped by extension"})
    totals = main.Run().execute(
        ["--input_dir", src, "--output_dir", out, "--weights", "random:0", "--max_batch_size", "4"]
    )
    return src, out, totals


def test_good_images_are_all_embedded_once(mixed_run):
    src, out, totals = mixed_run
    rows = read_rows(out)
    assert sorted(r["name"] for r in rows) == sorted(GOOD)
    assert totals["images_embedded"] == len(GOOD)
    for r in rows:
        assert r["bucket"] == os.path.abspath(src)
        assert r["generation"] == os.stat(os.path.join(src, r["name"])).st_mtime_ns
        assert len(r["embedding"]) == 2048 and r["model_name"] == "resnet50-avgpool"
        assert r["source"] == "local" and r["event_type"] == "OBJECT_FINALIZE"
        assert os.path.exists(r["vector_uri"]) and r["vector_index"] is not None
        np.testing.assert_array_equal(
            vectors.read_vectors(r["vector_uri"], [r["vector_index"]])[0],
            np.float32(r["embedding"]),
        )
    rotated = next(r for r in rows if r["name"] == "rotated.jpg")
    assert (rotated["width"], rotated["height"], rotated["format"]) == (200, 300, "JPEG")


def test_same_basename_in_two_folders_gets_two_vectors(mixed_run):
    _, out, _ = mixed_run
    rows = {r["name"]: r for r in read_rows(out)}
    a, b = rows["a/cat.jpg"], rows["b/cat.jpg"]
    assert (a["vector_uri"], a["vector_index"]) != (b["vector_uri"], b["vector_index"])
    assert a["row_key"] != b["row_key"]
    assert not np.allclose(
        *(vectors.read_vectors(r["vector_uri"], [r["vector_index"]]) for r in (a, b))
    )


def test_vectors_share_few_shards(mixed_run):
    _, out, _ = mixed_run
    rows = read_rows(out)
    shards = glob.glob(os.path.join(out, "vectors", "shards", "*", "*.npy"))
    assert {r["vector_uri"] for r in rows} == set(shards)
    assert len(shards) < len(rows)


def test_bad_files_land_in_dead_letters_with_reasons(mixed_run):
    _, out, totals = mixed_run
    dead = [json.load(open(p)) for p in glob.glob(os.path.join(out, "dead_letters", "*.json"))]
    reasons = {d["name"]: (d["stage"], d["reason"]) for d in dead}
    assert reasons == {
        "corrupt.jpg": ("decode", "truncated_image"),
        "empty.jpg": ("decode", "empty_object"),
        "notes.jpg": ("decode", "not_an_image"),
    }
    assert totals["dead_letter.truncated_image"] == 1
    assert totals["dead_letter.empty_object"] == 1
    assert totals["dead_letter.not_an_image"] == 1
    assert totals["skipped.type"] == 1  # README.txt
    assert all(d["error"] for d in dead)


def test_pipeline_vectors_equal_a_direct_keras_call(mixed_run, direct_embed):
    src, out, _ = mixed_run
    for r in read_rows(out):
        with open(os.path.join(src, r["name"]), "rb") as f:
            pixels = decode_image(f.read()).pixels
        got, want = np.asarray(r["embedding"]), direct_embed(pixels)
        # The default runtime (ONNX Runtime) runs the same weights in another order of
        # float operations: equal to a cosine of 0.99999, not to the last bit.
        assert got @ want / (np.linalg.norm(got) * np.linalg.norm(want)) >= 0.99999
        assert r["model_runtime"].startswith("onnxruntime-")


def test_rerun_is_idempotent(mixed_run):
    src, out, _ = mixed_run
    before = sorted(glob.glob(os.path.join(out, "**", "*.*"), recursive=True))
    keys = sorted(r["row_key"] for r in read_rows(out))
    main.Run().execute(["--input_dir", src, "--output_dir", out, "--weights", "random:0"])
    after = sorted(glob.glob(os.path.join(out, "**", "*.*"), recursive=True))
    assert after == before
    assert sorted(r["row_key"] for r in read_rows(out)) == keys


def test_output_folder_inside_input_folder_is_never_embedded(tmp_path):
    src = tmp_path / "images"
    make_folder(str(src), {"x.jpg": fixtures.jpeg(64, 64)})
    out = str(src / "embeddings")
    for _ in range(2):  # the second run sees the first run's outputs
        totals = main.Run().execute(
            ["--input_dir", str(src), "--output_dir", out, "--weights", "random:0"]
        )
    assert totals["images_embedded"] == 1
    assert [r["name"] for r in read_rows(out)] == ["x.jpg"]


def test_streaming_with_test_stream(tmp_path):
    """Refs arrive over time on an unbounded source; every good one is embedded and
    the bad one is dead-lettered, with windows firing as the watermark advances."""
    src = str(tmp_path / "images")
    make_folder(
        src,
        {
            "one.jpg": fixtures.jpeg(seed=5),
            "two.png": fixtures.png(seed=6),
            "bad.jpg": b"\x00" * 10,
        },
    )
    refs = [local_ref(src, os.path.join(src, n)) for n in ("one.jpg", "two.png", "bad.jpg")]
    stream = (
        TestStream()
        .advance_watermark_to(0)
        .add_elements([refs[0]])
        .advance_processing_time(2)
        .add_elements([refs[1], refs[2]])
        # Past the batching's real-time flush (--max_batch_duration_secs): what
        # is left flushes then, as in a live stream, not at the window's end.
        .advance_processing_time(int(time.time()) + 60)
        .advance_watermark_to_infinity()
    )
    opts = EmbedOptions(
        ["--input_dir", src, "--weights", "random:0", "--output_dir", str(tmp_path / "out")]
    )
    opts.view_as(StandardOptions).streaming = True
    with TestPipeline(options=opts) as p:
        out = pipeline.embed_refs(p | stream, opts)
        assert_that(
            out["rows"] | beam.Map(lambda r: (r["name"], len(r["embedding"]))),
            equal_to([("one.jpg", 2048), ("two.png", 2048)]),
            label="rows",
        )
        assert_that(
            out["dead_letters"] | beam.Map(lambda d: (d.ref.name, d.reason)),
            equal_to([("bad.jpg", "not_an_image")]),
            label="dead",
        )
    # Shards under the model id's weights and runtime, holding both vectors.
    written = glob.glob(os.path.join(tmp_path, "out", "vectors", "shards", "*", "*.npy"))
    assert all(
        re.fullmatch(r"[0-9a-f]{16}\.onnxruntime-[\d.]+", os.path.basename(os.path.dirname(w)))
        for w in written
    ), written
    assert sum(len(vectors.read_vectors(w)) for w in written) == 2


@pytest.mark.parametrize(
    "extra, seconds",
    [
        ([], 0),
        (
            [
                "--runner",
                "DataflowRunner",
                "--project",
                "my-project",
                "--region",
                "us-central1",
                "--temp_location",
                "gs://b/tmp",
            ],
            1,
        ),
        (["--max_batch_duration_secs", "3"], 3),
    ],
)
def test_refs_are_batched_across_bundles_on_dataflow_and_within_them_locally(extra, seconds):
    """The local runner runs each step on one thread: a stateful batching step is one
    more pass that every image in flight waits for, and its bundles already hold a pull."""
    from streaming import pipeline
    from streaming.main import make_options

    opts = make_options(
        [
            "--input_subscription",
            "projects/my-project/subscriptions/subs",
            "--output_dir",
            "o",
            *extra,
        ]
    )
    assert pipeline.batch_duration_secs(opts) == seconds
    assert pipeline.batches_refs(opts) is bool(seconds)
