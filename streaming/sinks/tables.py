"""The BigQuery tables the job writes: `--output_table` (every row and tombstone) and
`--dead_letter_table` (every dead letter), each by the method `--bigquery_write_method`
names: the Storage Write API (`streaming/sinks/write_api.py`, the default) or insertAll
(`streaming/sinks/bigquery.py`). Both share `bigquery.py`'s request loop, failure
classes and dead letters of refused rows.
"""

from __future__ import annotations

import apache_beam as beam

import schemas
from streaming.config.flags import BIGQUERY_WRITE_METHODS
from streaming.sinks import Sink
from streaming.sinks.bigquery import (
    MAX_REQUEST_BYTES,
    MAX_REQUEST_ROWS,
    InsertRowsFn,
    log_refused_dead_letter,
    reduced_dead_letter,
    rejected_row_to_dead_letter,
)
from streaming.sinks.files import DeadLetterRows
from streaming.sinks.write_api import AppendRowsFn

STORAGE_WRITE_API, INSERT_ALL = BIGQUERY_WRITE_METHODS


class WriteRows(beam.PTransform):
    """Rows -> BigQuery `table` (P:D.T or P.D.T), created from `schema_file` when
    missing, by `method` (`--bigquery_write_method`); returns the rows BigQuery refused
    as `(table, row, errors)`."""

    def __init__(
        self,
        table: str,
        schema_file: str = schemas.EMBEDDINGS,
        local: bool = False,
        method: str = STORAGE_WRITE_API,
        max_bytes: int = MAX_REQUEST_BYTES,
    ):
        super().__init__()
        if method == STORAGE_WRITE_API:
            # No row-count limit on an append: requests are capped by bytes alone.
            self._fn = AppendRowsFn(table, schema_file, local, 1 << 30, max_bytes)
        elif method == INSERT_ALL:
            self._fn = InsertRowsFn(table, schema_file, local, MAX_REQUEST_ROWS, max_bytes)
        else:
            raise ValueError(f"unknown BigQuery write method {method!r}")

    def expand(self, rows):
        return rows | "Insert rows" >> beam.ParDo(self._fn)


class BigQueryRows(Sink):
    """--output_table: every row and tombstone, by `method`; rows BigQuery refuses come
    back as dead letters of the `bigquery` stage."""

    def __init__(self, table: str, local: bool, method: str = STORAGE_WRITE_API):
        self._table, self._local, self._method = table, local, method

    def write_rows(self, rows):
        rejected = (
            tuple(rows.values())
            | "All rows" >> beam.Flatten()
            | "Write to BigQuery" >> WriteRows(self._table, local=self._local, method=self._method)
        )
        return {
            "bigquery": rejected
            | "Dead-letter rejected rows" >> beam.Map(rejected_row_to_dead_letter)
        }


class BigQueryDeadLetters(Sink):
    """--dead_letter_table: every dead letter, as one row each, by `method`."""

    def __init__(self, table: str, local: bool, method: str = STORAGE_WRITE_API):
        self._table, self._local, self._method = table, local, method

    def write_dead_letters(self, by_stage, gathered):
        refused = (
            gathered
            | "Dead-letter rows" >> DeadLetterRows()
            | "Write dead letters to BigQuery"
            >> WriteRows(self._table, schemas.DEAD_LETTERS, local=self._local, method=self._method)
        )
        _ = (
            refused
            | "Reduce refused dead letters" >> beam.Map(reduced_dead_letter)
            | "Write reduced dead letters"
            >> WriteRows(self._table, schemas.DEAD_LETTERS, local=self._local, method=self._method)
            | "Log dead letters refused twice" >> beam.Map(log_refused_dead_letter)
        )
