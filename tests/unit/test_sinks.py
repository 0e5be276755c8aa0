import json
import os

import numpy as np

import schemas
from streaming.records import DeadLetter, ImageInfo, ImageRef, row_key
from streaming.sinks import bigquery, files
from streaming.support import storage

REF = ImageRef(
    "b",
    "a/x.jpg",
    9,
    content_type="image/jpeg",
    size=10,
    metadata=(("k", "v"),),
    event_time="2026-11-27T00:00:00Z",
)


def test_rows_have_exactly_the_bigquery_schema():
    row = files.embedding_row(
        ImageInfo(REF, 4, 3, "JPEG"),
        np.arange(2048, dtype=np.float32),
        "resnet50-avgpool@0123456789abcdef+onnxruntime-1.32.0",
        "gs://o/v.npy",
    )
    assert list(row) == schemas.field_names()
    assert row["model_fingerprint"] == "0123456789abcdef" and len(row["embedding"]) == 2048
    assert (row["model_name"], row["model_runtime"]) == ("resnet50-avgpool", "onnxruntime-1.32.0")
    assert json.loads(row["metadata"]) == {"k": "v"}
    tomb = files.tombstone_row(ImageRef("b", "a/x.jpg", 9, event_type="OBJECT_DELETE"))
    assert list(tomb) == schemas.field_names()
    assert tomb["embedding"] == [] and tomb["row_key"] != row["row_key"]
    assert tomb["row_key"] == row_key("b", "a/x.jpg", 9, "OBJECT_DELETE")
    dead = DeadLetter("decode", "not_an_image", "x", ref=REF).to_row()
    assert list(dead) == schemas.field_names(schemas.DEAD_LETTERS)


def test_rows_bigquery_rejects_become_dead_letters_with_identity():
    row = files.embedding_row(ImageInfo(REF, 4, 3, "JPEG"), np.zeros(2048), "m@f", None)
    dead = bigquery.rejected_row_to_dead_letter(
        ("p:d.t", row, [{"reason": "invalid", "message": "no such field: x"}])
    )
    assert (dead.stage, dead.reason, dead.ref.name, dead.ref.generation) == (
        "write",
        "bigquery_rejected",
        "a/x.jpg",
        9,
    )
    assert "no such field" in dead.to_row()["error"]


def test_local_writes_are_atomic_and_idempotent(tmp_path):
    path = str(tmp_path / "v" / "x.npy")
    storage.write_atomically(path, files.npy_bytes(np.ones(3)))
    storage.write_atomically(path, files.npy_bytes(np.ones(3)))
    assert os.listdir(tmp_path / "v") == ["x.npy"]  # no temporary files left behind
    np.testing.assert_array_equal(np.load(path), np.ones(3, np.float32))


def test_dead_letter_rows_transform_gives_the_table_rows():
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to

    letters = [
        DeadLetter("decode", "not_an_image", "x", ref=REF),
        DeadLetter("parse", "not_json", "y", raw="{"),
    ]
    with TestPipeline(runner="BundleBasedDirectRunner") as p:
        rows = p | beam.Create(letters) | files.DeadLetterRows()
        assert_that(
            rows | beam.Map(lambda r: (r["row_key"], r["stage"], r["reason"], r["uri"])),
            equal_to([(d.key, d.stage, d.reason, d.to_row()["uri"]) for d in letters]),
        )


def test_vector_writes_retry_what_may_pass_and_not_a_permission_refusal():
    from google.api_core import exceptions as gexc

    assert files._retryable(gexc.ServiceUnavailable("busy"))
    assert files._retryable(gexc.NotFound("bucket being created"))
    assert files._retryable(ConnectionError("reset"))
    assert not files._retryable(gexc.Forbidden("objectCreator cannot overwrite"))
    assert not files._retryable(gexc.Unauthorized("expired"))
    assert not files._retryable(TypeError("bug"))


ONNX_ID = "resnet50-avgpool@aaaa+onnxruntime-1.32.0"
TF_ID = "resnet50-avgpool@aaaa+tensorflow-2.21.0"


def test_the_vector_path_follows_the_model_id_weights_and_runtime():
    old = files.vector_path("gs://v/", REF, ONNX_ID)
    new = files.vector_path("gs://v/", REF, ONNX_ID.replace("@aaaa", "@bbbb"))
    other_runtime = files.vector_path("gs://v/", REF, TF_ID)
    assert old == "gs://v/b/a%2Fx.jpg@9.aaaa.onnxruntime-1.32.0.npy"
    assert new.endswith(".bbbb.onnxruntime-1.32.0.npy")
    assert other_runtime.endswith(".aaaa.tensorflow-2.21.0.npy")
    assert len({old, new, other_runtime}) == 3
    assert files.vector_path("gs://v/", REF, ONNX_ID) == old  # a redelivery: same path


def test_each_runtimes_row_points_at_its_own_vector(tmp_path):
    """One object embedded by both runtimes (the same weights): two .npy files, each
    row's `vector_uri` holding that row's own embedding, written through the job's own
    vector writer."""
    import apache_beam as beam
    from apache_beam.ml.inference.base import PredictionResult
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to

    info = ImageInfo(REF, 4, 3, "JPEG")
    vectors = {ONNX_ID: np.full(2048, 1.0, np.float32), TF_ID: np.full(2048, 2.0, np.float32)}
    root = str(tmp_path / "vectors")
    with TestPipeline(runner="BundleBasedDirectRunner") as p:
        written = (
            p
            | beam.Create([(info, PredictionResult(None, v, m)) for m, v in vectors.items()])
            | files.WriteVectors(root)
        )
        assert_that(
            written.rows
            | beam.Map(
                lambda r: (
                    r["model_runtime"],
                    float(np.load(r["vector_uri"])[0]),
                    r["embedding"][0],
                )
            ),
            equal_to([("onnxruntime-1.32.0", 1.0, 1.0), ("tensorflow-2.21.0", 2.0, 2.0)]),
        )
    assert len(list((tmp_path / "vectors").rglob("*.npy"))) == 2


def test_the_options_name_the_sinks():
    from streaming import pipeline
    from streaming.config.options import EmbedOptions

    def kinds(*argv):
        return [type(s).__name__ for s in pipeline.sinks_for(EmbedOptions(list(argv)))]

    assert kinds("--output_dir", "out") == ["LocalFiles"]
    assert kinds(
        "--output_table", "p:d.t", "--dead_letter_table", "p:d.dl", "--output_dir", "out"
    ) == ["BigQueryRows", "BigQueryDeadLetters", "LocalFiles"]
    assert kinds("--output_gcs", "gs://b/v/") == []  # vectors only: no sink of rows
