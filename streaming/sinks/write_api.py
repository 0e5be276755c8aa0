"""Rows into BigQuery through the Storage Write API: binary (proto) rows appended to the
table's `_default` stream.

Why: BigQuery bills the Storage Write API at half insertAll's price per byte, with a
free tier and no 1 KB minimum per row, and a row travels as its proto (about 16.8 KB for
2,048 doubles) instead of about 23.7 KB of JSON (`benchmarks/results/cost.md`). The
`_default` stream is Google's choice for streaming writers (fewest quotas, no stream to
create or commit) and is at-least-once: a request retried after an unknown outcome, or
a bundle retried by the runner, can append a row again. Every row repeats its
deterministic `row_key` and `schemas/sql/current_embeddings.sql` keeps one row per key;
insertAll's insert-id de-duplication is best effort too (`--bigquery_write_method
insert_all` keeps it).

The request loop, the failure classes, the table's re-creation and the dead letters are
those of `streaming/sinks/bigquery.py` (`RowWriterFn`); only the request differs.
"""

from __future__ import annotations

import datetime as dt
import functools
from typing import Any

import schemas
from streaming.records import parse_rfc3339
from streaming.sinks.bigquery import RowWriterFn

# Bytes of an AppendRows request besides its rows: the stream name and the writer
# schema (the proto descriptor of a row, about 1 KB for the embeddings table).
_FRAME_BYTES = 4096
_TYPES = {
    "STRING": "TYPE_STRING",
    "INTEGER": "TYPE_INT64",
    "TIMESTAMP": "TYPE_INT64",  # microseconds since the epoch (Write API type mapping)
    "FLOAT": "TYPE_DOUBLE",
    "BOOLEAN": "TYPE_BOOL",
}


@functools.cache
def row_descriptor(schema_file: str):
    """The proto2 `DescriptorProto` of one row of `schema_file`: one field per column,
    in the schema's order, repeated columns packed."""
    from google.protobuf import descriptor_pb2

    proto = descriptor_pb2.DescriptorProto(name="Row")
    kind, label = descriptor_pb2.FieldDescriptorProto, descriptor_pb2.FieldDescriptorProto
    for number, field in enumerate(schemas.table_schema(schema_file), 1):
        repeated = field.get("mode") == "REPEATED"
        proto.field.add(
            name=field["name"],
            number=number,
            type=getattr(kind, _TYPES[field["type"]]),
            label=label.LABEL_REPEATED if repeated else label.LABEL_OPTIONAL,
            options=descriptor_pb2.FieldOptions(packed=True) if repeated else None,
        )
    return proto


@functools.cache
def _row_class(schema_file: str):
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    pool = descriptor_pool.DescriptorPool()
    pool.Add(
        descriptor_pb2.FileDescriptorProto(
            name="row.proto", syntax="proto2", message_type=[row_descriptor(schema_file)]
        )
    )
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("Row"))


def micros(value: Any) -> int:
    """A TIMESTAMP value (datetime or RFC 3339 text) as microseconds since the epoch."""
    if not isinstance(value, dt.datetime):
        value = parse_rfc3339(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    delta = value - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def encode_row(row: dict, schema_file: str) -> bytes:
    """A row (the dict insertAll would send) as the serialized proto of `row_descriptor`;
    None and empty lists are left out (NULL, and an empty REPEATED column)."""
    message = _row_class(schema_file)()
    for field in schemas.table_schema(schema_file):
        value = row.get(field["name"])
        if value is None or (isinstance(value, list) and not value):
            continue
        if field["type"] == "TIMESTAMP":
            value = micros(value)
        if field.get("mode") == "REPEATED":
            getattr(message, field["name"]).extend(value)
        else:
            setattr(message, field["name"], value)
    return message.SerializeToString()


def append_request(stream: str, schema_file: str, rows: list[bytes]):
    """One AppendRowsRequest: the writer schema and the serialized rows."""
    from google.cloud.bigquery_storage_v1 import types

    return types.AppendRowsRequest(
        write_stream=stream,
        proto_rows=types.AppendRowsRequest.ProtoData(
            writer_schema=types.ProtoSchema(proto_descriptor=row_descriptor(schema_file)),
            rows=types.ProtoRows(serialized_rows=rows),
        ),
    )


def default_stream(table_id: str) -> str:
    """`projects/P/datasets/D/tables/T/streams/_default` of a P.D.T table id."""
    project, dataset, table = table_id.split(".")
    return f"projects/{project}/datasets/{dataset}/tables/{table}/streams/_default"


def answer_errors(response, count: int) -> list[dict]:
    """An AppendRowsResponse as insertAll's per-row answer: `[]` when the rows were
    appended. The rows a response names in `row_errors` are invalid; the others were
    stopped with them (none of a failed request's rows is written) and go again. An
    error that names no row raises, for the request's failure class."""
    if not response.error.code and not response.row_errors:
        return []
    bad = {e.index: e.message for e in response.row_errors}
    if not bad:
        from google.api_core import exceptions

        raise exceptions.from_grpc_status(_grpc_code(response.error.code), response.error.message)
    return [
        {
            "index": i,
            "errors": (
                [{"reason": "invalid", "message": bad[i]}] if i in bad else [{"reason": "stopped"}]
            ),
        }
        for i in range(count)
    ]


def _grpc_code(value: int):
    import grpc

    return next((c for c in grpc.StatusCode if c.value[0] == value), grpc.StatusCode.UNKNOWN)


class AppendRowsFn(RowWriterFn):
    """`RowWriterFn` over the Storage Write API's `_default` stream."""

    FRAME_BYTES = _FRAME_BYTES
    METHOD = "append"

    def setup(self):
        from streaming.support import clients

        self._writer = clients.write_client(self._local)
        self._stream = default_stream(self._table_id)
        super().setup()

    def _encode(self, row: dict) -> tuple[bytes, int]:
        data = encode_row(row, self._schema_file)
        return data, len(data) + 6  # and its tag and length in the repeated field

    def _send(self, rows: list[bytes]) -> list[dict]:
        request = append_request(self._stream, self._schema_file, rows)
        responses = self._writer.append_rows(
            iter([request]),
            timeout=60,
            metadata=(("x-goog-request-params", f"write_stream={self._stream}"),),
        )
        answers = list(responses)
        if not answers:
            from google.api_core import exceptions

            raise exceptions.ServiceUnavailable("AppendRows closed without an answer")
        return answer_errors(answers[0], len(rows))


def request_bytes(rows: list[dict], table_id: str, schema_file: str = schemas.EMBEDDINGS) -> int:
    """The bytes of the AppendRows request that carries `rows` (for the cost model)."""
    from google.cloud.bigquery_storage_v1 import types

    request = append_request(
        default_stream(table_id), schema_file, [encode_row(r, schema_file) for r in rows]
    )
    return len(types.AppendRowsRequest.serialize(request))
