"""The Storage Write API writer on bqemulator's gRPC port, through the strict proxy: rows
read back as the insertAll writer's do, requests stay under BigQuery's 10 MB, a refused
row is that row's dead letter only, and a table that disappears comes back."""

import os
import uuid

import grpc
import numpy as np
import pytest
from google.api_core import exceptions as gexc

import schemas
from streaming.records import ImageInfo, ImageRef
from streaming.sinks import bigquery, files, tables, write_api
from streaming.support import clients
from tests.integration.conftest import strict_bigquery_stats


@pytest.fixture
def dataset(cloud):
    name = f"write_api_{uuid.uuid4().hex[:8]}"
    cloud.bq.create_dataset(name)
    yield f"{cloud.project}.{name}"
    cloud.bq.delete_dataset(name, delete_contents=True, not_found_ok=True)


def rows(n: int, floats: int = 2048) -> list[dict]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        ref = ImageRef(
            "bucket",
            f"img/{i:04d}.jpg",
            1_700_000_000_000_000 + i,
            event_time="2026-12-03T10:11:12.345678Z",
            time_created="2026-12-03T10:11:12.000001Z",
            size=1000 + i,
        )
        info = ImageInfo(ref, 640, 480, "JPEG")
        vector = rng.standard_normal(floats).astype(np.float32)
        out.append(files.embedding_row(info, vector, "resnet50@abc123+onnx", "gs://v/s.npy", i))
    return out


def write(method: str, table: str, batch: list[dict]) -> list:
    writer = tables.WriteRows(table, local=True, method=method)._fn
    writer.setup()
    writer.start_bundle()
    out = []
    for row in batch:
        out += [wv.value for wv in writer.process(row, timestamp=0, window=None)]
    out += [wv.value for wv in writer.finish_bundle()]
    return out


def read(cloud, table: str) -> dict:
    return {
        r["row_key"]: dict(r)
        for r in cloud.bq.query(f"SELECT * FROM `{table}` ORDER BY name").result()
    }


def test_rows_by_the_write_api_read_back_as_rows_by_insertall(cloud, dataset):
    batch = rows(20)
    strict_bigquery_stats(mark=True)
    assert write("storage_write_api", f"{dataset}.appended", batch) == []
    assert write("insert_all", f"{dataset}.inserted", batch) == []
    stats = strict_bigquery_stats()
    # (the proxy serves the session's streaming job too: at least these rows)
    assert stats["append_rows"] >= 20 and stats["insert_rows"] >= 20, stats
    appended, inserted = read(cloud, f"{dataset}.appended"), read(cloud, f"{dataset}.inserted")
    assert appended.keys() == inserted.keys() == {r["row_key"] for r in batch}
    for key, row in inserted.items():
        other = appended[key]
        assert np.array_equal(np.float32(other.pop("embedding")), np.float32(row.pop("embedding")))
        assert other == row
    sample = next(iter(appended.values()))
    assert sample["event_time"].isoformat() == "2026-12-03T10:11:12.345678+00:00"
    assert sample["vector_index"] is not None and sample["model_runtime"] == "onnx"


def test_a_backlog_goes_in_appends_under_the_limit_of_the_service(cloud, dataset):
    strict_bigquery_stats(mark=True)
    assert write("storage_write_api", f"{dataset}.backlog", rows(1200)) == []
    stats = strict_bigquery_stats()
    assert stats["refused"] == 0 and stats["append_rows"] >= 1200, stats
    assert 5_000_000 < stats["max_append_bytes"] <= 10 * 1024 * 1024, stats
    count = f"SELECT COUNT(*) AS n FROM `{dataset}.backlog`"
    assert next(iter(cloud.bq.query(count).result()))["n"] == 1200


def test_the_proxy_refuses_what_the_service_refuses(cloud, dataset):
    from google.cloud.bigquery_storage_v1 import types

    table = f"{dataset}.refused"
    cloud.bq.create_table(bigquery.make_table(table, schemas.EMBEDDINGS))
    stream = write_api.default_stream(table)
    encoded = [write_api.encode_row(r, schemas.EMBEDDINGS) for r in rows(700)]  # ~11.8 MB
    big = write_api.append_request(stream, schemas.EMBEDDINGS, encoded)
    assert len(types.AppendRowsRequest.serialize(big)) > 10 * 1024 * 1024
    client = clients.write_client(True)
    routing = (("x-goog-request-params", f"write_stream={stream}"),)
    with pytest.raises(gexc.InvalidArgument, match="too large"):
        list(client.append_rows(iter([big]), metadata=routing))
    small = write_api.append_request(stream, schemas.EMBEDDINGS, encoded[:1])
    with pytest.raises(gexc.InvalidArgument, match="x-goog-request-params"):
        list(client.append_rows(iter([small])))
    (answer,) = client.append_rows(iter([small]), metadata=routing)
    assert not answer.error.code


def test_a_row_the_table_refuses_is_its_own_dead_letter(cloud, dataset):
    batch = rows(3, floats=4)
    batch[1]["generation"] = "not a number"
    refused = write("storage_write_api", f"{dataset}.bad", batch)
    assert [row["row_key"] for _, row, _ in refused] == [batch[1]["row_key"]]
    letter = bigquery.rejected_row_to_dead_letter(refused[0])
    assert letter.reason == "bigquery_rejected"
    assert set(read(cloud, f"{dataset}.bad")) == {batch[0]["row_key"], batch[2]["row_key"]}


def test_a_table_that_disappears_is_created_again(cloud, dataset):
    table = f"{dataset}.gone"
    assert write("storage_write_api", table, rows(2, floats=4)) == []
    cloud.bq.delete_table(table)
    assert write("storage_write_api", table, rows(3, floats=4)[2:]) == []
    assert len(read(cloud, table)) == 1


def test_the_emulator_port_is_the_strict_proxy():
    # Every job of the integration tests must append through the proxy, or the limits
    # above would go unchecked for them.
    from streaming.support.clients import write_client

    client = write_client(True)
    with pytest.raises(gexc.GoogleAPICallError) as raised:
        list(client.append_rows(iter([write_api.append_request("x", schemas.EMBEDDINGS, [])])))
    assert raised.value.grpc_status_code == grpc.StatusCode.INVALID_ARGUMENT
    assert "x-goog-request-params" in str(raised.value), os.environ.get(
        "BIGQUERY_EMULATOR_GRPC_HOST"
    )


def test_appends_abandoned_mid_stream_leave_the_emulator_serving(cloud, dataset):
    # The proxy gives each gRPC call a turn of its own (tools/strict_bigquery.py): a
    # stream its client leaves open (a job killed mid-append) must not keep the turn.
    import threading

    from google.cloud.bigquery_storage_v1 import types

    from tools.strict_bigquery import APPEND_ROWS

    table = f"{dataset}.abandoned"
    cloud.bq.create_table(bigquery.make_table(table, schemas.EMBEDDINGS))
    stream = write_api.default_stream(table)
    encoded = [write_api.encode_row(r, schemas.EMBEDDINGS) for r in rows(1, floats=4)]
    data = types.AppendRowsRequest.serialize(
        write_api.append_request(stream, schemas.EMBEDDINGS, encoded)
    )
    routing = (("x-goog-request-params", f"write_stream={stream}"),)
    never = threading.Event()

    def one_then_nothing():
        yield data
        never.wait(60)

    channel = grpc.insecure_channel(os.environ["BIGQUERY_EMULATOR_GRPC_HOST"])
    append = channel.stream_stream(APPEND_ROWS)
    for _ in range(16):
        call = append(one_then_nothing(), metadata=routing, timeout=30)
        next(call)  # answered; the stream stays open
        call.cancel()
    never.set()
    client = clients.write_client(True)
    (answer,) = client.append_rows(
        iter([types.AppendRowsRequest.deserialize(data)]), metadata=routing, timeout=10
    )
    assert not answer.error.code
    channel.close()


def test_queries_and_appends_at_once_all_get_answers(cloud, dataset):
    # bqemulator answers both on different threads over one DuckDB connection, where a
    # query meeting an append can deadlock it; through the proxy they take turns.
    import concurrent.futures

    table = f"{dataset}.busy"
    cloud.bq.create_table(bigquery.make_table(table, schemas.EMBEDDINGS))
    client = clients.write_client(True)
    stream = write_api.default_stream(table)
    routing = (("x-goog-request-params", f"write_stream={stream}"),)
    encoded = [write_api.encode_row(r, schemas.EMBEDDINGS) for r in rows(1, floats=64)]
    request = write_api.append_request(stream, schemas.EMBEDDINGS, encoded)

    def append(_):
        (answer,) = client.append_rows(iter([request]), metadata=routing, timeout=30)
        return not answer.error.code

    def query(_):
        sql = f"SELECT COUNT(*) AS n FROM `{table}`"
        return next(iter(cloud.bq.query(sql).result(timeout=30)))["n"] >= 0

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        done = list(pool.map(lambda i: (append if i % 3 else query)(i), range(240)))
    assert all(done)
    count = next(iter(cloud.bq.query(f"SELECT COUNT(*) AS n FROM `{table}`").result()))["n"]
    assert count == sum(1 for i in range(240) if i % 3)
