"""The cost model (benchmarks/cost.py): how requests are classed and rows sized, that its
committed results keep every price with a source, and that docs/performance.md shows the
committed table, not figures of its own."""

from __future__ import annotations

import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import cost  # noqa: E402

from tools.http_proxy import Request  # noqa: E402

RESULTS = os.path.join(ROOT, "benchmarks", "results")


@pytest.mark.parametrize(
    "method,path,query,expected",
    [
        (
            "POST",
            "/upload/storage/v1/b/v/o",
            {"uploadType": "multipart", "name": "x.npy"},
            ("A", "object insert"),
        ),
        ("PUT", "/upload/storage/v1/b/v/o", {"upload_id": "abc"}, None),  # resumable data
        ("GET", "/download/storage/v1/b/i/o/a.jpg", {"alt": "media"}, ("B", "object read")),
        ("GET", "/storage/v1/b/i/o/a.jpg", {"alt": "media"}, ("B", "object read")),
        ("GET", "/storage/v1/b/i/o/a.jpg", {}, ("B", "object metadata")),
        ("GET", "/storage/v1/b/i/o", {"prefix": "x/"}, ("A", "object list")),
        ("GET", "/storage/v1/b/i", {}, ("B", "bucket metadata")),
        ("DELETE", "/storage/v1/b/i/o/a.jpg", {}, None),
    ],
)
def test_storage_requests_are_classed_as_cloud_storage_bills_them(method, path, query, expected):
    assert cost.storage_op(Request(method, path, query, b"")) == expected


def test_row_bytes_follow_bigquerys_data_size_rules():
    row = {
        "row_key": "k" * 64,
        "generation": 7,
        "embedding": [0.5] * 2048,
        "width": None,
        "processing_time": "2026-12-03T00:00:00Z",
    }
    # STRING: 2 + length; INTEGER, FLOAT, TIMESTAMP: 8 each; NULL: 0.
    assert cost.row_bytes(row) == (2 + 64) + 8 + 2048 * 8 + 0 + 8


def test_pubsub_and_bigquery_minimums_apply_per_unit():
    counts = {
        "gcs_class_a": 1,
        "gcs_class_b": 1000,
        "bq_billed_bytes": 500 * 1000,
        "bq_billed_bytes_insert_all": 1024 * 1000,
        "pubsub_billed_bytes": 1000 * 1000,
        "pubsub_bytes": 500 * 1000,
    }
    insert_all = cost.per_million(counts, 0, "insert_all")
    write_api = cost.per_million(counts, 0, "write_api")
    # A million rows of 1 KB: 1,000,000 KiB = 976.6 MiB at $0.01 per 200 MiB.
    assert insert_all["BigQuery ingestion"] == pytest.approx(0.049, abs=0.001)
    assert write_api["BigQuery ingestion"] == pytest.approx(500e6 / 2**30 * 0.025, abs=0.001)
    assert insert_all["Cloud Storage Class A"] == 0.005
    assert insert_all["Cloud Storage Class B"] == 0.4


def test_streaming_engine_counts_the_notification_and_each_buffered_byte_both_ways():
    counts = {
        "gcs_class_a": 0,
        "gcs_class_b": 0,
        "bq_billed_bytes": 0,
        "bq_billed_bytes_insert_all": 0,
        "pubsub_billed_bytes": 0,
        "pubsub_bytes": 500 * 1000,
    }
    costs = cost.per_million(counts, 9000, "write_api")
    gib = (500 + 2 * 9000) * 1e6 / 2**30
    assert costs["_streaming_engine_gib"] == pytest.approx(gib, abs=0.01)
    assert costs["Dataflow Streaming Engine (data processed)"] == pytest.approx(
        gib * 0.018, abs=0.001
    )


@pytest.fixture(scope="module")
def committed():
    path = os.path.join(RESULTS, "cost.json")
    if not os.path.exists(path):
        pytest.skip("benchmarks/results/cost.json not committed")
    with open(path) as f:
        return json.load(f)


def test_every_price_has_a_source_and_a_date(committed):
    assert committed["prices_read_on"]
    for name, price in committed["prices"].items():
        assert price["value"] > 0 and price["source"].startswith("https://"), name


def test_the_docs_show_the_committed_cost_table():
    with open(os.path.join(RESULTS, "cost.md")) as f:
        result = f.read()
    with open(os.path.join(ROOT, "docs", "performance.md")) as f:
        docs = f.read()
    section = result[result.index("## $ per million images") :]
    table = [line for line in section.splitlines() if line.startswith("|")]
    assert len(table) > 5
    for line in table:
        assert line in docs, line


def test_a_year_of_storage_is_three_active_months_then_long_term():
    counts = {"bq_billed_bytes": 2**30 / 1000, "object_bytes": 2**30 / 1000}  # 1 GiB a million
    year = cost.stored_a_year(counts)
    assert year["BigQuery rows, a year"] == pytest.approx(3 * 0.02 + 9 * 0.01)
    assert year["Cloud Storage vectors, a year"] == pytest.approx(12 * 0.02)


def test_the_default_layout_at_a_rate_takes_that_rates_shards():
    counts = {
        "objects_written": 100.0,
        "object_bytes": 0,
        "gcs_class_a": 100.0,
        "gcs_class_b": 1000.0,
        "bq_billed_bytes": 16_818_000,
        "bq_billed_bytes_insert_all": 16_818_000,
        "bq_rows": 1000,
        "pubsub_billed_bytes": 0,
        "pubsub_bytes": 0,
    }
    shards = {
        "rates": {r: {"traffic": {"objects_per_1000": n}} for r, n in zip(cost.RATES, (900, 25, 2))}
    }
    worker = {"machine": "m", "workers": 1, "usd_per_million": 1.0}
    scale = {"cheapest_measured": {"photos": {r: worker for r in cost.RATES}}}
    at = cost.at_rates({"per_1000": counts}, 0, shards, scale)
    assert at["20"]["services"]["Cloud Storage Class A"] == pytest.approx(25 * 1000 * 5e-6)
    assert at["1"]["services"]["Cloud Storage Class A"] == pytest.approx(900 * 1000 * 5e-6)
    assert at["200"]["services_with_a_year_over_workers"]["photos"] == pytest.approx(
        at["200"]["services_with_a_year_usd"], abs=0.01
    )
    # Rows without their embedding: 434 of 16,818 bytes a row stay in BigQuery.
    bare = at["20"]["without_embedding"]
    assert bare["BigQuery rows, a year"] == pytest.approx(
        at["20"]["storage"]["BigQuery rows, a year"] * 434 / 16_818, abs=0.002
    )


def test_a_catch_up_query_is_billed_at_least_ten_megabytes_per_table():
    # Per 1,000 rows: 100 bytes a row read by the catch-up, 16,500 by a search.
    counts = {
        "bq_catch_up_column_bytes": 100_000.0,
        "bq_search_column_bytes": 16_500_000.0,
        "bq_rows": 1000,
    }
    o = cost.once({"per_1000": counts}, 1000)
    low, high = o["catch_up_queries_usd"]
    assert low == pytest.approx(1000 * 2 * 10 * 2**20 / 2**40 * 6.25, abs=0.001)
    assert high == pytest.approx(1000 * (100e6 + 10 * 2**20) / 2**40 * 6.25, abs=0.001)
    assert o["catch_up_listing_usd"] == 0.005
    assert o["search_usd_per_million_rows"] == pytest.approx(16.5e9 / 2**40 * 6.25, abs=0.001)
