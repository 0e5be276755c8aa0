"""Current embedding rows, from a local output folder or from BigQuery.

"Current" is the rule of the `current_embeddings` view (schemas/sql/current_embeddings.sql):
per (bucket, name) the newest generation, a tombstone before an embedding of the same
generation, then the latest write; the object is hidden when that row is a deletion.
`LocalRows` applies it in Python to `OUT/rows/*/*.json`; `BigQueryRows` runs the
shipped SQL over the view (or the view's query inlined).
"""

from __future__ import annotations

import collections
import datetime as dt
import glob
import json
import os
import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from analysis import sql
from streaming.config.names import is_gcs_uri
from streaming.records import object_uri

FINALIZE, DELETE = "OBJECT_FINALIZE", "OBJECT_DELETE"
# Columns a result carries (everything but the embedding and the bulky metadata).
RESULT_FIELDS = (
    "bucket",
    "name",
    "generation",
    "source",
    "content_type",
    "width",
    "height",
    "format",
    "model_fingerprint",
    "vector_uri",
    "vector_index",
    "event_time",
    "processing_time",
)


class SourceError(Exception):
    """A problem with the rows' source (missing folder, table, object): exit code 1."""


def uri_of(row: dict[str, Any]) -> str:
    """Where the object's bytes are: the local path for local rows (the bucket is the
    absolute input folder, the name the relative path), else gs://bucket/name."""
    bucket = row["bucket"]
    return object_uri(bucket, row["name"], row.get("source") == "local" or bucket.startswith("/"))


def split_gs_uri(uri: str) -> tuple[str, str]:
    m = re.match(r"^gs://([^/]+)/(.+)$", uri)
    if not m:
        raise ValueError(f"not a gs://BUCKET/NAME uri: {uri!r}")
    return m.group(1), m.group(2)


def _timestamp(value) -> float:
    if value is None:
        return float("-inf")
    if isinstance(value, dt.datetime):
        return value.timestamp()
    try:
        return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return float("-inf")


def current_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The current row of every live object (the view's rule, in Python)."""
    best: dict[tuple[str, str], tuple[tuple, dict]] = {}
    for r in rows:
        rank = (
            -int(r["generation"]),
            0 if r.get("event_type") == DELETE else 1,
            -_timestamp(r.get("processing_time")),
            r.get("row_key") or "",
        )
        key = (r["bucket"], r["name"])
        if key not in best or rank < best[key][0]:
            best[key] = (rank, r)
    return sorted(
        (r for _, r in best.values() if r.get("event_type") == FINALIZE),
        key=lambda r: (r["bucket"], r["name"]),
    )


def fill_vectors(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows whose `embedding` is empty get it from their .npy: the shard at `vector_uri`,
    row `vector_index` (None: a .npy of one vector). Each shard is read once."""
    from streaming.sinks.vectors import read_vectors

    wanted: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if not r.get("embedding") and r.get("vector_uri") and r.get("event_type") != DELETE:
            wanted.setdefault(r["vector_uri"], []).append(r)
    for uri, group in wanted.items():
        try:
            matrix = read_vectors(uri)
        except (OSError, ValueError) as e:
            raise SourceError(f"cannot read the vectors at {uri}: {e}") from e
        for r in group:
            r["embedding"] = matrix[r.get("vector_index") or 0].astype(float).tolist()
    return rows


def cosine_distances(matrix: np.ndarray, query: np.ndarray) -> np.ndarray:
    """1 - cosine similarity of each row of `matrix` to `query` (float64; NaN where a
    norm is zero)."""
    m = np.asarray(matrix, np.float64)
    q = np.asarray(query, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return 1.0 - (m @ q) / (np.linalg.norm(m, axis=1) * np.linalg.norm(q))


def fingerprint_counts(rows: Sequence[dict[str, Any]]) -> list[tuple[str, int]]:
    counts = collections.Counter(r.get("model_fingerprint") for r in rows)
    return sorted(((fp, n) for fp, n in counts.items() if fp), key=lambda x: (-x[1], x[0]))


def result(row: dict[str, Any], distance: float | None = None) -> dict[str, Any]:
    out = {k: _plain(row.get(k)) for k in RESULT_FIELDS}
    out["uri"] = uri_of(row)
    if distance is not None:
        out["distance"] = float(distance)
    return out


def _plain(value):
    return value.isoformat() if isinstance(value, (dt.datetime, dt.date)) else value


class LocalRows:
    """The rows embed-stream wrote under OUTPUT_DIR/rows/ (local folder or gs://)."""

    def __init__(self, output_dir: str):
        self.output_dir = output_dir
        self.description = f"folder {output_dir}"
        self._rows = fill_vectors(current_rows(self._read_all()))

    def _read_all(self) -> list[dict[str, Any]]:
        rows = []
        if "://" in self.output_dir:
            from apache_beam.io.filesystems import FileSystems

            pattern = FileSystems.join(self.output_dir, "rows", "*", "*.json")
            paths = [m.path for m in FileSystems.match([pattern])[0].metadata_list]
            opener = lambda p: FileSystems.open(p, compression_type="uncompressed")
        else:
            if not os.path.isdir(os.path.join(self.output_dir, "rows")):
                raise SourceError(
                    f"no rows/ folder under {self.output_dir!r} (the --output_dir of embed-stream)"
                )
            paths = glob.glob(os.path.join(glob.escape(self.output_dir), "rows", "*", "*.json"))
            opener = lambda p: open(p, "rb")
        for path in sorted(paths):
            with opener(path) as f:
                for line in f.read().decode("utf-8").splitlines():
                    if line.strip():
                        rows.append(json.loads(line))
        return rows

    def current(self) -> list[dict[str, Any]]:
        return self._rows

    def fingerprints(self) -> list[tuple[str, int]]:
        return fingerprint_counts(self._rows)

    def lookup(self, bucket: str, name: str) -> dict[str, Any] | None:
        for r in self._rows:
            if r["bucket"] == bucket and r["name"] == name:
                return r
        return None

    def lookup_uri(self, uri: str) -> dict[str, Any] | None:
        if "://" not in uri:
            uri = os.path.abspath(uri)
        for r in self._rows:
            if uri_of(r) == uri:
                return r
        return None

    def _of_model(self, fingerprint: str, dim: int | None = None) -> list[dict[str, Any]]:
        return [
            r
            for r in self._rows
            if r.get("model_fingerprint") == fingerprint
            and r.get("embedding")
            and (dim is None or len(r["embedding"]) == dim)
        ]

    def nearest(self, query: np.ndarray, fingerprint: str, k: int) -> list[dict[str, Any]]:
        rows = self._of_model(fingerprint, len(query))
        if not rows:
            return []
        d = cosine_distances(np.array([r["embedding"] for r in rows]), query)
        order = sorted(
            (i for i in range(len(rows)) if np.isfinite(d[i])),
            key=lambda i: (d[i], rows[i]["bucket"], rows[i]["name"]),
        )
        return [result(rows[i], d[i]) for i in order[:k]]

    def sample(self, fingerprint: str, n: int) -> list[dict[str, Any]]:
        """A repeatable sample: rows ordered by row_key (a sha256, so in random order)."""
        rows = sorted(self._of_model(fingerprint), key=lambda r: r["row_key"])
        return rows[:n]


class BigQueryRows:
    """The embeddings table (and its current view) in BigQuery or the emulator."""

    def __init__(
        self, client, table: str, current_view: str | None = None, use_vector_search: bool = False
    ):
        sql.parse_table_id(table)
        if current_view:
            sql.parse_table_id(current_view)
        self.client, self.table, self.current_view = client, table, current_view
        self.use_vector_search = use_vector_search
        self.description = f"table {table}"

    def query(self, sql_file: str, /, *, top_k: int | None = None, **params) -> list[dict]:
        text = sql.text(sql_file)
        ints = {"top_k": top_k} if top_k is not None else {}
        body = sql.without_comment_lines(
            sql.render(sql_file, embeddings=self.table, current=self.current_view, **ints)
        )
        return run_query(self.client, body, sql.declared_params(text), params)

    def fingerprints(self) -> list[tuple[str, int]]:
        return [
            (r["model_fingerprint"], int(r["objects"]))
            for r in self.query("model_fingerprints.sql")
            if r["model_fingerprint"]
        ]

    def lookup(self, bucket: str, name: str) -> dict[str, Any] | None:
        rows = self.query("object_current_row.sql", bucket=bucket, name=name)
        return rows[0] if rows else None

    def lookup_uri(self, uri: str) -> dict[str, Any] | None:
        if not is_gcs_uri(uri):
            raise SourceError(
                f"{uri!r}: name a table object as gs://BUCKET/NAME or with --bucket and --name"
            )
        return self.lookup(*split_gs_uri(uri))

    def nearest(self, query: np.ndarray, fingerprint: str, k: int) -> list[dict[str, Any]]:
        params = dict(query_embedding=[float(x) for x in query], model_fingerprint=fingerprint, k=k)
        if self.use_vector_search:
            rows = self.query("vector_search.sql", top_k=min(10_000, 4 * k + 20), **params)
        else:
            rows = self.query("nearest_neighbours.sql", **params)
        return [result(r, r["distance"]) for r in rows]

    def sample(self, fingerprint: str, n: int) -> list[dict[str, Any]]:
        return self.query("sample_current.sql", model_fingerprint=fingerprint, n=n)


def run_query(client, body: str, types: dict[str, str], params: dict[str, Any]) -> list[dict]:
    """Runs SQL with typed query parameters (types from the file's `-- params:` line)."""
    from google.cloud import bigquery

    missing = set(types) - set(params)
    extra = set(params) - set(types)
    if missing or extra:
        raise ValueError(f"parameters missing {sorted(missing)}, unexpected {sorted(extra)}")
    qps = []
    for name, typ in types.items():
        m = re.fullmatch(r"ARRAY<(\w+)>", typ)
        if m:
            qps.append(bigquery.ArrayQueryParameter(name, m.group(1), list(params[name])))
        else:
            qps.append(bigquery.ScalarQueryParameter(name, typ, params[name]))
    job = client.query(body, job_config=bigquery.QueryJobConfig(query_parameters=qps))
    return [dict(r) for r in job.result()]


def open_source(args, local_endpoints: bool = False):
    """LocalRows or BigQueryRows from the CLI's --output_dir / --table options."""
    if args.output_dir:
        return LocalRows(args.output_dir)
    from streaming.support import clients

    project = getattr(args, "billing_project", None) or sql.parse_table_id(args.table)[0]
    client = clients.bigquery_client(local_endpoints, project=project)
    return BigQueryRows(
        client,
        args.table,
        getattr(args, "current_view", None),
        getattr(args, "use_vector_search", False),
    )
