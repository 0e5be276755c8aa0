"""The Storage Write API writer: rows as protos that read back as the rows insertAll
would send, requests under the byte cap, and an append's answer classed as the
insertAll writer classes its own (streaming/sinks/write_api.py)."""

import calendar
import logging

import grpc
import pytest
from google.api_core import exceptions as gexc
from google.cloud.bigquery_storage_v1 import types
from google.protobuf import json_format

import schemas
from streaming import failures
from streaming.sinks import bigquery, write_api
from tests.unit.test_bigquery_writer import write  # one bundle through a writer

ROW = {
    "row_key": "k0",
    "bucket": "b",
    "name": "a/cat.jpg",
    "generation": 1712345678901234,
    "metageneration": None,
    "event_type": "OBJECT_FINALIZE",
    "source": "notification",
    "time_created": "2026-12-03T10:11:12.345678Z",
    "embedding": [0.1, -2.5, 3.0e-7],
    "vector_index": 0,
    "processing_time": "2026-12-03T10:11:13+00:00",
}


def decoded(data: bytes, schema_file=schemas.EMBEDDINGS) -> dict:
    message = write_api._row_class(schema_file)()
    message.ParseFromString(data)
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def test_a_row_is_its_columns_with_timestamps_in_microseconds_and_nulls_left_out():
    got = decoded(write_api.encode_row(ROW, schemas.EMBEDDINGS))
    assert got == {
        "row_key": "k0",
        "bucket": "b",
        "name": "a/cat.jpg",
        "generation": "1712345678901234",
        "event_type": "OBJECT_FINALIZE",
        "source": "notification",
        "time_created": str(calendar.timegm((2026, 12, 3, 10, 11, 12)) * 10**6 + 345_678),
        "embedding": [0.1, -2.5, 3.0e-7],
        "vector_index": "0",
        "processing_time": str(calendar.timegm((2026, 12, 3, 10, 11, 13)) * 10**6),
    }


def test_the_descriptor_has_every_column_of_both_tables_in_order():
    for schema_file in (schemas.EMBEDDINGS, schemas.DEAD_LETTERS):
        fields = write_api.row_descriptor(schema_file).field
        assert [f.name for f in fields] == schemas.field_names(schema_file)
    embedding = next(
        f for f in write_api.row_descriptor(schemas.EMBEDDINGS).field if f.name == "embedding"
    )
    assert embedding.label == embedding.LABEL_REPEATED and embedding.options.packed


def test_timestamps_from_text_or_datetime_agree():
    import datetime as dt

    assert write_api.micros("1970-01-01T00:00:01.5Z") == 1_500_000
    assert write_api.micros(dt.datetime(1970, 1, 1, 0, 0, 2)) == 2_000_000
    assert write_api.micros("1969-12-31T23:59:59+00:00") == -1_000_000


class FakeWriter:
    """Answers append_rows as the Write API does: one response per request; over the
    10 MB cap a RESOURCE_EXHAUSTED error (as bqemulator answers); `answers` scripts
    failures first (an exception, or a function of the rows that returns a response)."""

    def __init__(self, answers=()):
        self.answers = list(answers)
        self.requests: list[tuple[int, int]] = []
        self.appended: list[str] = []

    def append_rows(self, requests, timeout=None, metadata=()):
        (request,) = list(requests)
        assert ("x-goog-request-params", f"write_stream={request.write_stream}") in metadata
        rows = [decoded(r) for r in request.proto_rows.rows.serialized_rows]
        size = len(types.AppendRowsRequest.serialize(request))
        self.requests.append((len(rows), size))
        if size > 10 * 1024 * 1024:
            return iter([error_response(grpc.StatusCode.RESOURCE_EXHAUSTED, "exceeds size cap")])
        if self.answers:
            answer = self.answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return iter([answer(rows)])
        self.appended += [r["row_key"] for r in rows]
        return iter([types.AppendRowsResponse()])


def error_response(code, message, row_errors=()):
    return types.AppendRowsResponse(
        error={"code": code.value[0], "message": message},
        row_errors=[{"index": i, "message": m} for i, m in row_errors],
    )


class NoTables:
    def create_table(self, *_a, **_k):
        return None


def writer(fake, monkeypatch, max_bytes=bigquery.MAX_REQUEST_BYTES):
    monkeypatch.setattr(bigquery.time, "sleep", lambda _s: None)
    fn = write_api.AppendRowsFn("my-project:ds.t", schemas.EMBEDDINGS, True, 1 << 30, max_bytes)
    fn._client, fn._writer, fn._stalls = NoTables(), fake, failures.StallLog(logging.getLogger("t"))
    fn._stream = write_api.default_stream(fn._table_id)
    fn.start_bundle()
    return fn


def row(i, floats=2048):
    return dict(ROW, row_key=f"k{i}", embedding=[0.123456789 + i] * floats)


def test_a_backlog_goes_out_in_appends_under_the_byte_cap_with_no_row_count_cap(monkeypatch):
    fake = FakeWriter()
    assert write(writer(fake, monkeypatch), [row(i) for i in range(1200)]) == []
    assert len(fake.appended) == 1200
    assert max(b for _, b in fake.requests) <= bigquery.MAX_REQUEST_BYTES
    assert len(fake.requests) == 3 and fake.requests[0][0] > 500  # 16 KB rows, 9 MB requests


def test_the_request_estimate_holds_against_the_serialized_request():
    rows = [row(i) for i in range(100)]
    size = write_api.request_bytes(rows, "p.d.t")
    estimate = write_api._FRAME_BYTES + sum(
        len(write_api.encode_row(r, "embeddings.json")) + 6 for r in rows
    )
    assert size <= estimate


def test_a_row_over_the_limit_is_its_own_dead_letter_never_its_neighbours(monkeypatch):
    fake = FakeWriter()
    rows = [row(0), row(1, floats=400_000), row(2)]
    refused = write(writer(fake, monkeypatch, max_bytes=2_000_000), rows)
    assert [(r["row_key"], e[0]["reason"]) for _, r, e in refused] == [("k1", "row_too_large")]
    assert fake.appended == ["k0", "k2"]


def test_rows_an_append_names_are_refused_and_the_rest_go_again(monkeypatch):
    bad = lambda rows: error_response(
        grpc.StatusCode.INVALID_ARGUMENT, "bad rows", [(1, "field x: wrong type")]
    )
    fake = FakeWriter([bad])
    refused = write(writer(fake, monkeypatch), [row(i, floats=4) for i in range(3)])
    assert [(r["row_key"], e[0]["reason"]) for _, r, e in refused] == [("k1", "invalid")]
    assert fake.appended == ["k0", "k2"]


def test_a_value_its_column_cannot_hold_refuses_that_row_alone(monkeypatch):
    fake = FakeWriter()
    rows = [row(0, floats=2), dict(row(1, floats=2), generation="abc"), row(2, floats=2)]
    refused = write(writer(fake, monkeypatch), rows)
    assert [(r["row_key"], e[0]["reason"]) for _, r, e in refused] == [("k1", "invalid")]
    assert fake.appended == ["k0", "k2"]
    as_dead_letter = bigquery.rejected_row_to_dead_letter(refused[0])
    assert as_dead_letter.reason == failures.BIGQUERY_REJECTED


def test_an_invalid_append_naming_no_row_is_split_down_to_the_row_at_fault(monkeypatch):
    class Bisecting(FakeWriter):
        def append_rows(self, requests, timeout=None, metadata=()):
            requests = list(requests)
            keys = [decoded(r)["row_key"] for r in requests[0].proto_rows.rows.serialized_rows]
            if "k5" in keys:
                return iter([error_response(grpc.StatusCode.INVALID_ARGUMENT, "k5 is bad")])
            return super().append_rows(iter(requests), timeout, metadata)

    fake = Bisecting()
    refused = write(writer(fake, monkeypatch), [row(i, floats=0) for i in range(8)])
    assert [r["row_key"] for _, r, _ in refused] == ["k5"]
    assert sorted(fake.appended) == sorted(f"k{i}" for i in range(8) if i != 5)


def test_an_append_over_the_service_limit_is_split_not_refused(monkeypatch):
    fake = FakeWriter()
    rows = [row(i) for i in range(1000)]  # one 16 MB request if the writer's cap were off
    assert write(writer(fake, monkeypatch, max_bytes=20_000_000), rows) == []
    assert len(fake.appended) == 1000 and fake.requests[0][1] > 10 * 1024 * 1024


@pytest.mark.parametrize(
    "code, message, action",
    [
        (
            grpc.StatusCode.INVALID_ARGUMENT,
            "AppendRows request too large: 11000000",
            bigquery.SPLIT,
        ),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "exceeds the 10485760-byte size cap", bigquery.SPLIT),
        (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "Exceeds 'AppendRows throughput' quota",
            bigquery.RETRY,
        ),
        (grpc.StatusCode.INVALID_ARGUMENT, "Input schema has more fields", bigquery.STALL),
        (grpc.StatusCode.INVALID_ARGUMENT, "Invalid timestamp value", bigquery.REJECT),
        (grpc.StatusCode.NOT_FOUND, "Table not found", bigquery.MISSING),
        (grpc.StatusCode.PERMISSION_DENIED, "bigquery.tables.updateData denied", bigquery.STALL),
        (grpc.StatusCode.UNAUTHENTICATED, "invalid credentials", bigquery.STALL),
        (grpc.StatusCode.UNAVAILABLE, "connection reset", bigquery.RETRY),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "deadline", bigquery.RETRY),
        (grpc.StatusCode.INTERNAL, "oops", bigquery.RETRY),
    ],
)
def test_each_append_failure_has_the_class_of_its_insertall_peer(code, message, action):
    with pytest.raises(gexc.GoogleAPICallError) as raised:
        write_api.answer_errors(error_response(code, message), 3)
    assert bigquery.insert_action(raised.value) == action
    assert bigquery.insert_action(gexc.from_grpc_status(code, message)) == action


def test_a_missing_table_is_created_again_and_the_rows_go_in(monkeypatch):
    gone = lambda rows: error_response(grpc.StatusCode.NOT_FOUND, "Table gone: p.d.t")

    class Tables(NoTables):
        created = 0

        def create_table(self, *_a, **_k):
            Tables.created += 1

    fake = FakeWriter([gone])
    fn = writer(fake, monkeypatch)
    fn._client = Tables()
    assert write(fn, [row(0, floats=2)]) == [] and fake.appended == ["k0"]
    assert Tables.created == 1


def test_a_permission_problem_stalls_until_it_is_fixed(monkeypatch):
    denied = gexc.PermissionDenied("Permission 'bigquery.tables.updateData' denied")
    fake = FakeWriter([denied] * 5)
    assert write(writer(fake, monkeypatch), [row(0, floats=2)]) == []
    assert fake.appended == ["k0"] and len(fake.requests) == 6
