"""Streaming inserts into BigQuery with each row's `row_key` as its insert id.

`WriteToBigQuery` makes random insert ids (and reshuffles to keep them stable), and it
creates a table once per worker: if the table disappears under a running job, every
later row is refused as "not found" and would become a dead letter. This writer uses
google-cloud-bigquery's public `insert_rows_json` with deterministic ids (a redelivered
notification hits BigQuery's de-duplication), re-creates a missing table from
`schemas/` (same schema, partitioning and clustering) and retries; transient failures
are retried with backoff for as long as they last. Requests stay within BigQuery's
limits (bytes and rows per request). Only rows that BigQuery itself refuses, or that
alone exceed a request, come back, as `(table, row, errors)`, for the dead letters;
`streaming/failures.py` has the whole table.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from typing import Any

import apache_beam as beam
from apache_beam.utils.windowed_value import WindowedValue

import schemas
from streaming import failures, metrics
from streaming.config import names
from streaming.config.permissions import needed
from streaming.records import ERROR_CHARS, DeadLetter, ImageRef, utcnow_iso

_LOG = logging.getLogger(__name__)
MAX_BACKOFF_SECS = 30.0
# Tables this process has created or found: checked once per process, not per bundle
# (Beam's local runner sets DoFns up again for every bundle); a missing table is
# re-created when an insert says so.
_CHECKED: set[str] = set()


def table_spec(schema_file: str) -> dict[str, Any]:
    """Day partitions on processing time; clustering for the analysts' usual filters."""
    clustering = (
        ["bucket", "model_fingerprint", "name"]
        if schema_file == schemas.EMBEDDINGS
        else ["stage", "reason"]
    )
    return {"partition_field": "processing_time", "clustering": clustering}


def make_table(table_id: str, schema_file: str):
    """The `bigquery.Table` the job creates when it is missing."""
    from google.cloud import bigquery

    table = bigquery.Table(
        table_id,
        schema=[bigquery.SchemaField.from_api_repr(f) for f in schemas.table_schema(schema_file)],
    )
    spec = table_spec(schema_file)
    table.time_partitioning = bigquery.TimePartitioning(
        type_=bigquery.TimePartitioningType.DAY, field=spec["partition_field"]
    )
    table.clustering_fields = spec["clustering"]
    return table


# BigQuery's streaming-insert limits (quotas page, "Streaming inserts"): an HTTP request
# over 10 MB is refused whole (400), and 500 rows per request is the recommended most.
# The cap leaves room under 10 MB for the request's own framing; Beam's writer uses the
# same 9 MB (`max_insert_payload_size`).
MAX_REQUEST_BYTES = 9_000_000
MAX_REQUEST_ROWS = 500
_REQUEST_FRAME_BYTES = 64  # {"rows": [], "skipInvalidRows": true}


def request_row_bytes(row: dict, row_id: str) -> int:
    """Bytes one row adds to an insertAll request, as google-cloud-bigquery encodes it
    (`json.dumps` with its default separators), plus the separator before it."""
    return len(json.dumps({"insertId": row_id, "json": row}).encode("utf-8")) + 2


# What the writer does with an insert request's error (docs/reliability.md, failures).
SPLIT, RETRY, STALL, MISSING, REJECT = "split", "retry", "stall", "missing", "reject"
_TRANSIENT_403 = {"rateLimitExceeded", "quotaExceeded", "backendError"}


def insert_action(error: BaseException) -> str:
    """The class of a failed insertAll request.

    - 400/413 (insertAll) or 400/429 (the Storage Write API's INVALID_ARGUMENT and
      RESOURCE_EXHAUSTED) for the request's size or row count: `split` it (a single
      row: `row_too_large`);
    - a schema mismatch (the rows have a column the table lacks: a release ahead of its
      table): `stall`, as for any configuration problem, until the column is added;
    - any other 400: `reject` (bisected down to the row at fault, which is dead-lettered);
    - 404: `missing` (the table is re-created; a missing dataset is a stall);
    - 401, and 403 but for rate and quota limits: `stall` (a permission the job lacks);
    - anything else (5xx, 403 rate limits, timeouts, connection errors): `retry`.
    """
    code = getattr(error, "code", None)
    reasons = {
        e.get("reason") for e in (getattr(error, "errors", None) or []) if isinstance(e, dict)
    }
    if code == 413 or (code in (400, 429) and _is_size_error(str(error))):
        return SPLIT
    if code == 400 and schema_mismatch(str(error)):
        return STALL
    if code == 400:
        return REJECT
    if code == 404:
        return MISSING
    if code == 401 or (code == 403 and not reasons & _TRANSIENT_403):
        return STALL
    return RETRY


# What BigQuery says of a row with a column its table lacks: insertAll per row ("no such
# field: x."), the Storage Write API for the request ("Input schema has more fields than
# BigQuery schema"; INVALID_ARGUMENT, schema mismatch).
_ADD_COLUMNS = (
    "the table lacks a column of schemas/: add it, as docs/dataflow.md says under 'Table columns'"
)
_SCHEMA_MISMATCH = ("no such field", "input schema has more fields", "schema mismatch")


def schema_mismatch(message: str) -> bool:
    """Whether BigQuery refused rows because the table lacks one of their columns."""
    message = message.lower()
    return any(text in message for text in _SCHEMA_MISMATCH)


def _is_size_error(message: str) -> bool:
    message = message.lower()
    return (
        "payload size exceeds" in message
        or "too many rows" in message
        or "request too large" in message
        or "size cap" in message
        or "request is too large" in message
    )


class RowWriterFn(beam.DoFn):
    """Rows -> BigQuery `table` in requests under `max_bytes` and `batch_size` rows, by
    whatever `_send` speaks; the rows BigQuery refuses come back as
    `(table, row, errors)`. The request loop, its failure classes (`insert_action`), the
    table's re-creation and the stall log are the same for every ingestion method."""

    FRAME_BYTES = _REQUEST_FRAME_BYTES
    METHOD = "insert"

    def __init__(self, table: str, schema_file: str, local: bool, batch_size: int, max_bytes: int):
        self._table_id = names.standard_table_id(table)
        self._table, self._schema_file = table, schema_file
        self._local, self._batch_size, self._max_bytes = local, batch_size, max_bytes

    def setup(self):
        from streaming.support import clients

        self._client = clients.worker_bigquery_client(self._local, self._table_id.split(".")[0])
        self._stalls = failures.StallLog(_LOG)
        if self._table_id not in _CHECKED:
            self._ensure_table()

    def start_bundle(self):
        self._buffer: list[tuple[dict, Any, Any, Any]] = []
        self._buffered_bytes = self.FRAME_BYTES

    def process(
        self, row: dict, timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam
    ) -> Iterable:
        try:
            payload, size = self._encode(row)
        except (TypeError, ValueError, OverflowError) as e:  # a value of the wrong type
            yield self._refused(
                row, timestamp, window, [{"reason": "invalid", "message": _short(e)}]
            )
            return
        if size + self.FRAME_BYTES > self._max_bytes:
            yield self._refused(row, timestamp, window, _too_large(size, self._max_bytes))
            return
        if self._buffer and (
            self._buffered_bytes + size > self._max_bytes or len(self._buffer) >= self._batch_size
        ):
            yield from self._flush()
        self._buffer.append((row, payload, timestamp, window))
        self._buffered_bytes += size

    def finish_bundle(self) -> Iterable:
        yield from self._flush()

    def _encode(self, row: dict) -> tuple[Any, int]:
        """`row` as this method sends it, and the bytes it adds to a request; raises
        TypeError or ValueError for a value its column cannot hold (the row is refused
        as BigQuery would refuse it)."""
        raise NotImplementedError

    def _send(self, rows: list) -> list[dict]:
        """One request with `rows` (as `_encode` made them); returns insertAll's per-row answer,
        `[{"index": i, "errors": [...]}]` for the rows not written, and raises (a
        google.api_core exception) when the request as a whole failed."""
        raise NotImplementedError

    def _flush(self) -> Iterable[WindowedValue]:
        batch, self._buffer = self._buffer, []
        self._buffered_bytes = self.FRAME_BYTES
        if not batch:
            return
        errors = self._write([payload for _, payload, _, _ in batch])
        for index, (row, _, timestamp, window) in enumerate(batch):
            if index in errors:
                yield self._refused(row, timestamp, window, errors[index])
            else:
                metrics.row_checkpoint("row_written", row)

    def _refused(self, row, timestamp, window, errors) -> WindowedValue:
        return WindowedValue((self._table, row, errors), timestamp, [window])

    def _write(self, rows: list) -> dict[int, list]:
        """Writes until BigQuery has answered for every row; returns the refused rows'
        errors by index. Transient failures are retried, configuration problems waited
        out (stalled on), and a request BigQuery refuses is split until the row at
        fault is alone (`insert_action`)."""
        refused: dict[int, list] = {}
        pending, delay = list(range(len(rows))), 0.5
        while pending:
            batch = [rows[i] for i in pending]
            try:
                result = self._send(batch)
            except Exception as e:  # noqa: BLE001 - classified below, never raised
                action = insert_action(e)
                if action in (SPLIT, REJECT):
                    if len(pending) > 1:
                        metrics.count("bigquery.requests_split")
                        half = len(pending) // 2
                        for part in (pending[:half], pending[half:]):
                            answer = self._write([rows[i] for i in part])
                            refused.update({part[i]: v for i, v in answer.items()})
                    elif action == SPLIT:
                        refused[pending[0]] = _too_large(None, self._max_bytes, _short(e))
                    else:
                        refused[pending[0]] = [{"reason": "invalid", "message": _short(e)}]
                    return refused
                if action == MISSING and self._ensure_table():
                    _LOG.warning("BigQuery table %s was missing; re-created it", self._table_id)
                    self._table_recreated()
                elif action in (MISSING, STALL):
                    metrics.count("bigquery.stalled")
                    fix = (
                        _ADD_COLUMNS
                        if schema_mismatch(str(e))
                        else needed(str(e)) or "fix the dataset or the job's permissions"
                    )
                    self._stalls.error(
                        f"{action}:{getattr(e, 'code', '')}",
                        f"BigQuery {self.METHOD} into {self._table_id} is waiting: "
                        f"{_short(e)} ({fix}: the rows go in then)",
                    )
                else:
                    metrics.count("bigquery.insert_retries")
                    _LOG.warning(
                        "BigQuery %s into %s failed (%s); retrying in %.0f s",
                        self.METHOD,
                        self._table_id,
                        _short(e),
                        delay,
                    )
            else:
                metrics.count("bigquery.rows_inserted", len(batch) - len(result))
                again, lacking = [], []
                for error in result:
                    index = pending[error["index"]]
                    if schema_mismatch(json.dumps(error["errors"], default=str)):
                        lacking.append(error["errors"])
                        again.append(index)  # the table lacks a column: waits for it
                    elif _is_invalid(error["errors"]):
                        refused[index] = error["errors"]
                    else:  # stopped by another row, or a backend hiccup: goes again
                        again.append(index)
                pending = again
                if not pending:
                    break
                if lacking:
                    metrics.count("bigquery.stalled")
                    self._stalls.error(
                        "schema",
                        f"BigQuery {self.METHOD} into {self._table_id} is waiting: "
                        f"{_short_errors(lacking[0])} ({_ADD_COLUMNS}: the rows go in then)",
                    )
                else:
                    metrics.count("bigquery.insert_retries")
            time.sleep(delay)
            delay = min(MAX_BACKOFF_SECS, delay * 2)
        return refused

    def _table_recreated(self) -> None:
        """Called after a missing table was created again."""

    def _ensure_table(self) -> bool:
        """Creates the table if it does not exist; True if it exists now. A missing
        dataset is left to the caller's stall (creating datasets is the operator's
        job, and a permission the job's account does not need)."""
        from google.api_core import exceptions as gexc

        try:
            self._client.create_table(make_table(self._table_id, self._schema_file), exists_ok=True)
        except gexc.NotFound as e:
            self._stalls.error(
                "dataset", f"cannot create BigQuery table {self._table_id}: {_short(e)}"
            )
            return False
        except Exception as e:  # noqa: BLE001 - next insert retries
            _LOG.warning("cannot check BigQuery table %s: %s", self._table_id, _short(e))
            return False
        _CHECKED.add(self._table_id)
        metrics.count("bigquery.table_checks")
        return True


class InsertRowsFn(RowWriterFn):
    """insertAll (`insert_rows_json`) with each row's `row_key` as its insert id."""

    def _encode(self, row: dict) -> tuple[dict, int]:
        return row, request_row_bytes(row, row["row_key"])

    def _send(self, rows: list[dict]) -> list[dict]:
        return self._client.insert_rows_json(
            self._table_id,
            rows,
            row_ids=[r["row_key"] for r in rows],
            skip_invalid_rows=True,
            retry=None,
            timeout=60,
        )


def _is_invalid(errors: list) -> bool:
    """A row's own errors make it invalid (final), as opposed to `stopped` (another
    row's fault) or a backend error on it (transient)."""
    return any(e.get("reason") == "invalid" for e in errors) or not all(
        e.get("reason") in ("stopped", "backendError", "internalError", "timeout") for e in errors
    )


def _too_large(size: int | None, limit: int, message: str = "") -> list[dict]:
    text = message or f"the row is {size} bytes as JSON; an insert request holds {limit}"
    return [{"reason": failures.ROW_TOO_LARGE, "message": text}]


def _short_errors(errors: list) -> str:
    text = "; ".join(str(e.get("message") or e.get("reason")) for e in errors)
    return text if len(text) <= 200 else text[:197] + "..."


def _short(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}"
    return text if len(text) <= 300 else text[:297] + "..."


def rejected_row_to_dead_letter(failure) -> DeadLetter:
    """A row BigQuery refused, as a dead letter: `row_too_large` if it alone exceeds an
    insert request, else `bigquery_rejected`."""
    _table, row, errors = failure
    reason = (
        failures.ROW_TOO_LARGE
        if any(isinstance(e, dict) and e.get("reason") == failures.ROW_TOO_LARGE for e in errors)
        else failures.BIGQUERY_REJECTED
    )
    metrics.dead_letter(reason)
    ref = None
    if row.get("bucket") is not None and row.get("name") is not None:
        ref = ImageRef(
            row["bucket"],
            row["name"],
            _generation(row.get("generation")),
            event_type=row.get("event_type") or "OBJECT_FINALIZE",
            event_time=row.get("event_time"),
        )
    return DeadLetter("write", reason, json.dumps(errors, default=str), ref=ref)


def _generation(value) -> int:
    """A refused row's generation, 0 when it is not a number (which may be its fault)."""
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


# The columns of a dead letter whose values the job made itself (never copied from
# input), so BigQuery takes them whatever the input was.
_OWN_DEAD_LETTER_COLUMNS = ("row_key", "bucket", "name", "uri", "stage", "reason", "retryable")


def reduced_dead_letter(failure) -> dict[str, Any]:
    """A dead-letter row BigQuery refused, as one it takes: the columns the job made,
    the refusal prepended to the error, the values from the input (its times) kept as
    text in `raw`. A dead letter is the record that something failed: it may not vanish
    because the failing input also broke its row."""
    _table, row, errors = failure
    metrics.count("dead_letters.reduced")
    reduced = {c: row.get(c) for c in _OWN_DEAD_LETTER_COLUMNS}
    for column in ("generation", "attempt"):
        value = row.get(column)
        reduced[column] = value if isinstance(value, int) and value >= 0 else None
    reason = json.dumps(errors, default=str)[:300]
    reduced["error"] = f"BigQuery refused this dead letter ({reason}); {row.get('error') or ''}"[
        :ERROR_CHARS
    ]
    reduced["raw"] = json.dumps(
        {"raw": row.get("raw"), "event_time": row.get("event_time")}, default=str
    )[:ERROR_CHARS]
    reduced["event_time"] = None
    reduced["processing_time"] = utcnow_iso()
    return reduced


def log_refused_dead_letter(failure) -> None:
    """A reduced dead letter refused as well: one error line with the whole row, and a
    counter, so it is never silent."""
    _table, row, errors = failure
    metrics.count("dead_letters.refused")
    _LOG.error(
        "BigQuery refused dead letter %s even reduced (%s): %s",
        row.get("row_key"),
        json.dumps(errors, default=str)[:300],
        json.dumps(row, default=str)[:ERROR_CHARS],
    )
