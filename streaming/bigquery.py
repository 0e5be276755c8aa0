"""Streaming inserts into BigQuery with each row's `row_key` as its insert id.

`WriteToBigQuery` makes random insert ids (and reshuffles to keep them stable), and it
creates a table once per worker: if the table disappears under a running job, every
later row is refused as "not found" and would become a dead letter. This writer uses
google-cloud-bigquery's public `insert_rows_json` with deterministic ids (a redelivered
notification hits BigQuery's de-duplication), re-creates a missing table from
`schemas/` (same schema, partitioning and clustering) and retries; transient failures
are retried with backoff for as long as they last. Only rows that BigQuery itself
refuses come back, as `(table, row, errors)`, for the dead letters.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Iterable

import apache_beam as beam
from apache_beam.utils.windowed_value import WindowedValue

import schemas
from streaming import metrics, names

_LOG = logging.getLogger(__name__)
MAX_BACKOFF_SECS = 30.0
# Tables this process has created or found: checked once per process, not per bundle
# (Beam's local runner sets DoFns up again for every bundle); a missing table is
# re-created when an insert says so.
_CHECKED: set[str] = set()


def table_spec(schema_file: str) -> dict[str, Any]:
    """Day partitions on processing time; clustering for the analysts' usual filters."""
    clustering = (["bucket", "model_fingerprint", "name"] if schema_file == schemas.EMBEDDINGS
                  else ["stage", "reason"])
    return {"partition_field": "processing_time", "clustering": clustering}


def make_table(table_id: str, schema_file: str):
    """The `bigquery.Table` the job creates when it is missing."""
    from google.cloud import bigquery
    table = bigquery.Table(table_id, schema=[bigquery.SchemaField.from_api_repr(f)
                                             for f in schemas.table_schema(schema_file)])
    spec = table_spec(schema_file)
    table.time_partitioning = bigquery.TimePartitioning(
        type_=bigquery.TimePartitioningType.DAY, field=spec["partition_field"])
    table.clustering_fields = spec["clustering"]
    return table


class _InsertRowsFn(beam.DoFn):
    def __init__(self, table: str, schema_file: str, local: bool, batch_size: int):
        self._table_id = names.standard_table_id(table)
        self._table, self._schema_file = table, schema_file
        self._local, self._batch_size = local, batch_size

    def setup(self):
        from streaming import endpoints
        self._client = endpoints.worker_bigquery_client(self._local,
                                                        self._table_id.split(".")[0])
        if self._table_id not in _CHECKED:
            self._ensure_table()

    def start_bundle(self):
        self._buffer: list[tuple[dict, Any, Any]] = []

    def process(self, row: dict, timestamp=beam.DoFn.TimestampParam,
                window=beam.DoFn.WindowParam) -> Iterable:
        self._buffer.append((row, timestamp, window))
        if len(self._buffer) >= self._batch_size:
            yield from self._flush()

    def finish_bundle(self) -> Iterable:
        yield from self._flush()

    def _flush(self) -> Iterable[WindowedValue]:
        batch, self._buffer = self._buffer, []
        if not batch:
            return
        errors = self._insert([row for row, _, _ in batch])
        for index, row_errors in errors.items():
            row, timestamp, window = batch[index]
            yield WindowedValue((self._table, row, row_errors), timestamp, [window])

    def _insert(self, rows: list[dict]) -> dict[int, list]:
        """Inserts until BigQuery has answered for every row; returns refused rows'
        errors by index."""
        from google.api_core import exceptions as gexc
        delay = 0.5
        while True:
            try:
                result = self._client.insert_rows_json(
                    self._table_id, rows, row_ids=[r["row_key"] for r in rows],
                    skip_invalid_rows=True, retry=None, timeout=60)
                metrics.count("bigquery.rows_inserted", len(rows) - len(result))
                return {e["index"]: e["errors"] for e in result}
            except gexc.NotFound as e:
                _LOG.warning("BigQuery table %s is missing (%s); re-creating it",
                             self._table_id, _short(e))
                self._ensure_table()
            except gexc.BadRequest as e:  # the request itself is refused: not retryable
                return {i: [{"reason": "invalid", "message": _short(e)}]
                        for i in range(len(rows))}
            except Exception as e:  # noqa: BLE001 - 5xx, quota, connection: wait it out
                _LOG.warning("BigQuery insert into %s failed (%s); retrying in %.0f s",
                             self._table_id, _short(e), delay)
                metrics.count("bigquery.insert_retries")
            time.sleep(delay)
            delay = min(MAX_BACKOFF_SECS, delay * 2)

    def _ensure_table(self) -> None:
        """Creates the table if it does not exist; a missing dataset is logged and left
        to the retry loop (the operator may be re-creating it)."""
        from google.api_core import exceptions as gexc
        try:
            self._client.create_table(make_table(self._table_id, self._schema_file),
                                      exists_ok=True)
        except gexc.NotFound as e:
            _LOG.error("cannot create BigQuery table %s: %s", self._table_id, _short(e))
            return
        except Exception as e:  # noqa: BLE001 - next insert retries
            _LOG.warning("cannot check BigQuery table %s: %s", self._table_id, _short(e))
            return
        _CHECKED.add(self._table_id)
        metrics.count("bigquery.table_checks")


def _short(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}"
    return text if len(text) <= 300 else text[:297] + "..."


class WriteRows(beam.PTransform):
    """Rows -> BigQuery `table` (P:D.T or P.D.T), created from `schema_file` when
    missing; returns the rows BigQuery refused as `(table, row, errors)`."""

    def __init__(self, table: str, schema_file: str = schemas.EMBEDDINGS,
                 local: bool = False, batch_size: int = 500):
        super().__init__()
        self._fn = _InsertRowsFn(table, schema_file, local, batch_size)

    def expand(self, rows):
        return rows | "Insert rows" >> beam.ParDo(self._fn)
