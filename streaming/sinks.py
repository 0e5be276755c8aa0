"""Where embeddings go: .npy vectors, BigQuery-shaped rows and dead letters.

Every write is idempotent: paths and row keys derive from bucket + name + generation
(`records.row_key`, `records.object_file_name`), so a redelivered notification
overwrites what it wrote before. Files are written whole or not at all: a local file
goes to a temporary name and is renamed; a Cloud Storage object only appears when
its upload completes.
"""
from __future__ import annotations

import io
import json
import os
import tempfile
from typing import Any, Iterable

import numpy as np

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.io.filesystems import FileSystems

from streaming import metrics
from streaming.records import DeadLetter, ImageInfo, object_file_name, utcnow_iso

DEAD = "dead_letters"
VECTORS_DIR = "vectors"
ROWS_DIR = "rows"
DEAD_LETTERS_DIR = "dead_letters"


def vector_path(root: str, info_or_ref, suffix: str = ".npy") -> str:
    ref = getattr(info_or_ref, "ref", info_or_ref)
    return FileSystems.join(root, object_file_name(ref.bucket, ref.name, ref.generation, suffix))


def embedding_row(info: ImageInfo, embedding: np.ndarray, model_id: str,
                  vector_uri: str | None) -> dict[str, Any]:
    """The BigQuery row (schemas/embeddings.json) of one embedded image."""
    ref = info.ref
    model_name, _, fingerprint = (model_id or "").partition("@")
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
        "width": info.width,
        "height": info.height,
        "format": info.format,
        "embedding": [float(x) for x in np.asarray(embedding, dtype=np.float32)],
        "model_name": model_name,
        "model_fingerprint": fingerprint,
        "vector_uri": vector_uri,
        "metadata": json.dumps(dict(ref.metadata), ensure_ascii=False) if ref.metadata else None,
        "event_time": ref.event_time,
        "processing_time": utcnow_iso(),
    }


def write_atomically(path: str, data: bytes) -> None:
    """Writes `data` to a local path or a Beam filesystem URI, all or nothing."""
    if "://" in path:
        with FileSystems.create(path, mime_type="application/octet-stream") as f:
            f.write(data)
        return
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def npy_bytes(vector: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(vector, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


class _WriteVectorFn(beam.DoFn):
    def __init__(self, root: str | None):
        self._root = root

    def process(self, element) -> Iterable:
        info, result = element
        vector = np.asarray(result.inference, dtype=np.float32)
        uri = None
        if self._root:
            uri = vector_path(self._root, info)
            try:
                write_atomically(uri, npy_bytes(vector))
            except Exception as e:  # noqa: BLE001 - after retries inside FileSystems
                metrics.dead_letter("write", "vector_write_error")
                yield pvalue.TaggedOutput(DEAD, DeadLetter(
                    "write", "vector_write_error", f"{type(e).__name__}: {e}", ref=info.ref))
                return
            if "://" not in uri:
                uri = os.path.abspath(uri)
        metrics.count("images_embedded")
        yield embedding_row(info, vector, result.model_id, uri)


class WriteVectors(beam.PTransform):
    """(ImageInfo, PredictionResult) -> .npy under `root` and the row that points to it."""

    def __init__(self, root: str | None):
        super().__init__()
        self._root = root

    def expand(self, results):
        return results | "Write .npy" >> beam.ParDo(_WriteVectorFn(self._root)).with_outputs(
            DEAD, main="rows")


class _WriteJsonFileFn(beam.DoFn):
    def __init__(self, root: str, kind: str):
        self._root, self._kind = root, kind

    def process(self, row: dict[str, Any]) -> Iterable[str]:
        if self._kind == "rows":
            rel = object_file_name(row["bucket"], row["name"], row["generation"], ".json")
        else:
            rel = row["row_key"] + ".json"
        path = FileSystems.join(self._root, rel)
        write_atomically(path, (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
        yield path


class WriteJsonFiles(beam.PTransform):
    """One NDJSON file per row under `root`, named by the row's identity (idempotent)."""

    def __init__(self, root: str, kind: str = "rows"):
        super().__init__()
        self._root, self._kind = root, kind

    def expand(self, rows):
        return rows | "Write JSON" >> beam.ParDo(_WriteJsonFileFn(self._root, self._kind))


def dead_letter_rows(dead_letters):
    return dead_letters | "To dead-letter rows" >> beam.Map(DeadLetter.to_row)
