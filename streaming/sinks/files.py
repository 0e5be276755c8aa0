"""Where embeddings go: .npy vectors, BigQuery-shaped rows and dead letters.

Every write is idempotent: paths and row keys derive from bucket + name + generation
(`records.row_key`, `records.object_file_name`), so a redelivered notification
overwrites what it wrote before, or, for a .npy in Cloud Storage, finds it already
there (`support.storage.create_object`). Files are written whole or not at all: a local file goes to
a temporary name and is renamed; a Cloud Storage object only appears when its upload
completes.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from collections.abc import Iterable
from typing import Any

import apache_beam as beam
import numpy as np
import orjson
from apache_beam import pvalue
from apache_beam.io.filesystems import FileSystems
from apache_beam.utils import retry

from streaming import failures, metrics
from streaming.config.names import is_gcs_uri
from streaming.model.spec import split_model_id
from streaming.records import (
    DeadLetter,
    ImageInfo,
    ImageRef,
    object_file_name,
    rejected_from,
    utcnow_iso,
)
from streaming.sinks import Sink
from streaming.support import clients
from streaming.support.ordered_pool import WorkAhead
from streaming.support.storage import create_object, write_atomically

DEAD = "dead_letters"
WRITE_THREADS, WRITE_AHEAD = 8, 16  # vector uploads at once, and elements ahead
VECTORS_DIR = "vectors"
ROWS_DIR = "rows"
DEAD_LETTERS_DIR = "dead_letters"


def vector_path(root: str, info_or_ref, model_id: str = "") -> str:
    """`<root>/<bucket>/<name>@<generation>.<fingerprint>.<runtime>.npy`: the path follows
    the result's model id (`model.result_model_id`), weights and runtime, so a vector
    written under a create-only write is always its own row's: neither a re-embedding
    with new weights nor another runtime's row of the same object finds (and keeps)
    a vector that another model made."""
    ref = getattr(info_or_ref, "ref", info_or_ref)
    _, fingerprint, runtime = split_model_id(model_id)
    tag = ".".join(part for part in (fingerprint, runtime) if part)
    suffix = f".{tag}.npy" if tag else ".npy"
    return FileSystems.join(root, object_file_name(ref.bucket, ref.name, ref.generation, suffix))


def embedding_row(
    info: ImageInfo,
    embedding: np.ndarray,
    model_id: str,
    vector_uri: str | None,
    vector_index: int | None = None,
    with_embedding: bool = True,
) -> dict[str, Any]:
    """The BigQuery row (schemas/embeddings.json) of one embedded image; `vector_index`
    is the vector's row in a shard (streaming/sinks/vectors.py), None for a .npy of its own.
    Without `with_embedding` (--row_embedding none) the row only names its vector."""
    model_name, fingerprint, runtime = split_model_id(model_id)
    row = _ref_row(info.ref)
    row.update(
        width=info.width,
        height=info.height,
        format=info.format,
        embedding=float32_list(embedding) if with_embedding else [],
        model_name=model_name,
        model_fingerprint=fingerprint,
        model_runtime=runtime,
        vector_uri=vector_uri,
        vector_index=vector_index,
    )
    return row


def float32_list(vector) -> list[float]:
    """A float32 vector as Python floats that print as the shortest decimals that read
    back as the same float32 (about 11 characters instead of 20 in a row's JSON): the
    insert request carries half the bytes and `np.float32(value)` is exact."""
    return orjson.loads(
        orjson.dumps(
            np.asarray(vector, dtype=np.float32).reshape(-1), option=orjson.OPT_SERIALIZE_NUMPY
        )
    )


def tombstone_row(ref: ImageRef) -> dict[str, Any]:
    """The row recording that a generation is no longer live (an OBJECT_DELETE, or an
    OBJECT_ARCHIVE in a versioned bucket): no embedding, written as OBJECT_DELETE under
    that event's row key, so the current view hides the generation whichever came and
    however late its embedding row lands."""
    metrics.count("tombstones")
    return _ref_row(dataclasses.replace(ref, event_type="OBJECT_DELETE"))


def _ref_row(ref: ImageRef) -> dict[str, Any]:
    return {
        "row_key": ref.key,
        "bucket": ref.bucket,
        "name": ref.name,
        "generation": ref.generation,
        "metageneration": ref.metageneration,
        "event_type": ref.event_type,
        "source": ref.source,
        "content_type": ref.content_type,
        "size_bytes": ref.size,
        "md5_hash": ref.md5_hash,
        "crc32c": ref.crc32c,
        "time_created": ref.time_created,
        "updated": ref.updated,
        "width": None,
        "height": None,
        "format": None,
        "embedding": [],
        "model_name": None,
        "model_fingerprint": None,
        "model_runtime": None,
        "vector_uri": None,
        "vector_index": None,
        "metadata": json.dumps(dict(ref.metadata), ensure_ascii=False) if ref.metadata else None,
        "event_time": ref.event_time,
        "processing_time": utcnow_iso(),
    }


def ndjson_line(row: dict[str, Any]) -> bytes:
    """One row as a UTF-8 JSON line, the format BigQuery and DuckDB load."""
    return orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE)


def _retryable(error: BaseException) -> bool:
    """Worth another attempt: not a programming error, not a permission refusal."""
    if isinstance(error, (TypeError, ValueError)):
        return False
    return getattr(error, "code", None) not in (401, 403)


@retry.with_exponential_backoff(num_retries=3, initial_delay_secs=0.5, retry_filter=_retryable)
def write_with_retries(path: str, data: bytes, gcs=None) -> None:
    """`create_object` for gs:// when given a storage client, else `write_atomically`;
    retried with backoff a bounded number of times (then the caller dead-letters):
    transient storage errors should not cost an embedding."""
    if gcs is not None and is_gcs_uri(path):
        create_object(gcs, path, data)
    else:
        write_atomically(path, data)


def npy_bytes(vector: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(vector, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


class _WriteVectorFn(WorkAhead):
    """Writes each vector on a small pool, `WRITE_AHEAD` elements ahead of the bundle's
    thread: an object upload waits on the network, not on the cores."""

    def __init__(self, root: str | None, with_embedding: bool = True):
        super().__init__(WRITE_THREADS, WRITE_AHEAD, "write")
        self._root, self._with_embedding = root, with_embedding

    def setup(self):
        super().setup()
        # One storage client per process, for create-only writes to gs://.
        self._gcs = clients.worker_storage_client() if is_gcs_uri(self._root) else None

    def work(self, element):
        info, result = element
        vector = np.asarray(result.inference, dtype=np.float32)
        uri = error = None
        if self._root:
            uri = vector_path(self._root, info, result.model_id)
            try:
                write_with_retries(uri, npy_bytes(vector), self._gcs)
            except Exception as e:  # noqa: BLE001 - after the retries: never fail the bundle
                error = rejected_from(e, failures.VECTOR_WRITE_ERROR)
            if "://" not in uri:
                uri = os.path.abspath(uri)
        return info, vector, result.model_id, uri, error

    def emit(self, written) -> Iterable:
        info, vector, model_id, uri, error = written
        if error is not None:
            metrics.dead_letter(error.reason)
            yield pvalue.TaggedOutput(
                DEAD, DeadLetter("write", error.reason, str(error), ref=info.ref)
            )
            return
        metrics.count("images_embedded")
        metrics.checkpoint("vector_written", info.ref)
        yield embedding_row(info, vector, model_id, uri, with_embedding=self._with_embedding)


class WriteVectors(beam.PTransform):
    """(ImageInfo, PredictionResult) -> .npy under `root` and the row that points to it."""

    def __init__(self, root: str | None, with_embedding: bool = True):
        super().__init__()
        self._fn = _WriteVectorFn(root, with_embedding)

    def expand(self, results):
        return results | "Write .npy" >> beam.ParDo(self._fn).with_outputs(DEAD, main="rows")


class _WriteJsonFileFn(beam.DoFn):
    def __init__(self, root: str, kind: str):
        self._root, self._kind = root, kind

    def process(self, row: dict[str, Any]) -> Iterable[str]:
        if self._kind == "rows":
            suffix = ".json" if row["event_type"] == "OBJECT_FINALIZE" else ".deleted.json"
            rel = object_file_name(row["bucket"], row["name"], row["generation"], suffix)
        else:
            rel = row["row_key"] + ".json"
        path = FileSystems.join(self._root, rel)
        write_atomically(path, ndjson_line(row))
        yield path


class WriteJsonFiles(beam.PTransform):
    """One NDJSON file per row under `root`, named by the row's identity (idempotent)."""

    def __init__(self, root: str, kind: str = "rows"):
        super().__init__()
        self._root, self._kind = root, kind

    def expand(self, rows):
        return rows | "Write JSON" >> beam.ParDo(_WriteJsonFileFn(self._root, self._kind))


class DeadLetterRows(beam.PTransform):
    """DeadLetter -> its row (schemas/dead_letters.json), for BigQuery and the files."""

    def expand(self, dead_letters):
        return dead_letters | "To row" >> beam.Map(DeadLetter.to_row)


def vector_root(output_gcs: str | None, output_dir: str | None) -> str | None:
    """Where the .npy vectors go: --output_gcs, else `vectors/` under --output_dir."""
    return output_gcs or (FileSystems.join(output_dir, VECTORS_DIR) if output_dir else None)


class LocalFiles(Sink):
    """--output_dir: one NDJSON file per row and per dead letter (local or any Beam
    filesystem), one file sink per input, never after a Flatten: the local --watch run
    executes on the FnApiRunner, where a Flatten waits for its (never-ending) inputs."""

    def __init__(self, output_dir: str):
        self._dir = output_dir

    def write_rows(self, rows):
        for label, part in rows.items():
            part | f"Write {label}" >> WriteJsonFiles(FileSystems.join(self._dir, ROWS_DIR), "rows")
        return {}

    def write_dead_letters(self, by_stage, gathered):
        for stage, part in by_stage.items():
            (
                part
                | f"Dead-letter rows ({stage})" >> DeadLetterRows()
                | f"Write dead letters ({stage})"
                >> WriteJsonFiles(FileSystems.join(self._dir, DEAD_LETTERS_DIR), "dead_letters")
            )
