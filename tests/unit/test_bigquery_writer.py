"""The BigQuery writer's requests: within BigQuery's limits, and each failure classed as
retried, stalled on or dead-lettered (streaming/failures.py)."""

import json
import logging

import pytest
from google.api_core import exceptions as gexc

from streaming import failures
from streaming.sinks import bigquery
from tools.strict_bigquery import MAX_REQUEST_BYTES as BIGQUERY_LIMIT


def row(i: int, floats: int = 2048) -> dict:
    return {"row_key": f"k{i}", "name": f"n{i}", "embedding": [0.123456789 + i] * floats}


class FakeClient:
    """Answers insert_rows_json as BigQuery does: over 10 MB is a 400 for the request;
    `answers` scripts failures first."""

    def __init__(self, answers=()):
        self.answers = list(answers)
        self.requests: list[tuple[int, int]] = []  # (rows, bytes)
        self.inserted: list[str] = []

    def insert_rows_json(self, table, rows, row_ids, **_):
        body = json.dumps(
            {
                "rows": [{"insertId": i, "json": r} for i, r in zip(row_ids, rows)],
                "skipInvalidRows": True,
            }
        )
        self.requests.append((len(rows), len(body)))
        if len(body) > BIGQUERY_LIMIT:
            raise gexc.BadRequest("Request payload size exceeds the limit: 10485760 bytes.")
        if self.answers:
            answer = self.answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            if callable(answer):
                return answer(rows)
        self.inserted += [r["row_key"] for r in rows]
        return []

    def create_table(self, *_a, **_k):
        return None


def writer(client, monkeypatch, batch_size=500, max_bytes=bigquery.MAX_REQUEST_BYTES):
    monkeypatch.setattr(bigquery.time, "sleep", lambda _s: None)
    fn = bigquery.InsertRowsFn("my-project:ds.t", "embeddings.json", True, batch_size, max_bytes)
    fn._client, fn._stalls = client, failures.StallLog(logging.getLogger("test"))
    fn.start_bundle()
    return fn


def write(fn, rows):
    """The values a writer DoFn emits for `rows` in one bundle (the refused rows)."""
    out = []
    for r in rows:
        out += list(fn.process(r, timestamp=0, window=None))
    out += list(fn.finish_bundle())
    return [wv.value for wv in out]


def test_a_backlog_goes_out_in_requests_under_the_byte_cap(monkeypatch):
    client = FakeClient()
    refused = write(writer(client, monkeypatch), [row(i) for i in range(600)])
    assert refused == [] and len(client.inserted) == 600
    assert max(b for _, b in client.requests) <= bigquery.MAX_REQUEST_BYTES
    # Full requests: as many ~38 KB rows as fit, not the 500-row count cap.
    assert len(client.requests) == 3 and 200 < client.requests[0][0] < 500


def test_the_row_cap_holds_for_small_rows(monkeypatch):
    client = FakeClient()
    write(writer(client, monkeypatch), [row(i, floats=0) for i in range(1200)])
    assert [n for n, _ in client.requests] == [500, 500, 200]


def test_a_row_over_the_limit_is_its_own_dead_letter_never_its_neighbours(monkeypatch):
    client = FakeClient()
    rows = [row(0), row(1, floats=400_000), row(2)]
    refused = write(writer(client, monkeypatch, max_bytes=2_000_000), rows)
    assert [(r["row_key"], e[0]["reason"]) for _, r, e in refused] == [("k1", "row_too_large")]
    assert client.inserted == ["k0", "k2"]


def test_a_request_bigquery_refuses_is_split_down_to_the_row_at_fault(monkeypatch):

    class Bisecting(FakeClient):
        def insert_rows_json(self, table, rows, row_ids, **kw):
            if any(r["row_key"] == "k5" for r in rows):
                self.requests.append((len(rows), 0))
                raise gexc.BadRequest("invalid value in k5")
            return super().insert_rows_json(table, rows, row_ids, **kw)

    client = Bisecting()
    refused = write(writer(client, monkeypatch), [row(i, floats=0) for i in range(8)])
    assert [r["row_key"] for _, r, _ in refused] == ["k5"]
    assert sorted(client.inserted) == sorted(f"k{i}" for i in range(8) if i != 5)


def test_rows_stopped_or_hit_by_a_backend_error_go_again_only_invalid_ones_are_refused(monkeypatch):
    answer = lambda rows: [
        {"index": 0, "errors": [{"reason": "invalid", "message": "x"}]},
        {"index": 1, "errors": [{"reason": "backendError"}]},
        {"index": 2, "errors": [{"reason": "stopped"}]},
    ]
    client = FakeClient([answer])
    refused = write(writer(client, monkeypatch), [row(i, floats=0) for i in range(4)])
    assert [r["row_key"] for _, r, _ in refused] == ["k0"]
    assert client.inserted == ["k1", "k2"]  # k3 went in with the first request


@pytest.mark.parametrize(
    "error, action",
    [
        (
            gexc.BadRequest("Request payload size exceeds the limit: 10485760 bytes."),
            bigquery.SPLIT,
        ),
        (gexc.from_http_status(413, "Request Too Large"), bigquery.SPLIT),
        (gexc.BadRequest("Invalid value: not a timestamp"), bigquery.REJECT),
        # A column the table lacks is the release's configuration, not the row's fault.
        (gexc.BadRequest("no such field: x"), bigquery.STALL),
        (gexc.NotFound("Not found: Table p:d.t"), bigquery.MISSING),
        (
            gexc.Forbidden("Access Denied: Table p:d.t", errors=[{"reason": "accessDenied"}]),
            bigquery.STALL,
        ),
        (gexc.Unauthorized("Request had invalid authentication credentials"), bigquery.STALL),
        (
            gexc.Forbidden("Exceeded rate limits", errors=[{"reason": "rateLimitExceeded"}]),
            bigquery.RETRY,
        ),
        (gexc.ServiceUnavailable("backend"), bigquery.RETRY),
        (gexc.InternalServerError("oops"), bigquery.RETRY),
        (ConnectionResetError("reset"), bigquery.RETRY),
    ],
)
def test_each_insert_failure_has_one_class(error, action):
    assert bigquery.insert_action(error) == action


def test_a_permission_problem_stalls_with_a_bounded_log_and_a_counter(monkeypatch, caplog):
    from streaming import metrics

    denied = gexc.Forbidden("Access Denied: Table p:d.t", errors=[{"reason": "accessDenied"}])
    client = FakeClient([denied] * 50)
    before = metrics.TALLY.snapshot()[0].get("bigquery.stalled", 0)
    with caplog.at_level(logging.ERROR):
        refused = write(writer(client, monkeypatch), [row(0, floats=0)])
    assert refused == [] and client.inserted == ["k0"]  # nothing lost once it is fixed
    assert metrics.TALLY.snapshot()[0]["bigquery.stalled"] - before == 50
    # The test's clock does not move: one line, not fifty.
    assert len([r for r in caplog.records if "is waiting" in r.getMessage()]) == 1


def test_a_missing_dataset_is_stalled_on_not_dead_lettered(monkeypatch):
    missing = gexc.NotFound("Not found: Dataset p:d")

    class NoDataset(FakeClient):
        def create_table(self, *_a, **_k):
            if len(self.answers):
                raise missing

    client = NoDataset([missing] * 3)
    refused = write(writer(client, monkeypatch), [row(0, floats=0)])
    assert refused == [] and client.inserted == ["k0"]


def test_the_stall_log_is_rate_limited_per_cause():
    now = [0.0]
    log = failures.StallLog(logging.getLogger("test"), every_secs=60, clock=lambda: now[0])
    assert log.error("a", "x") and not log.error("a", "x") and log.error("b", "y")
    now[0] = 61
    assert log.error("a", "x")


def test_the_docs_show_the_failure_and_reason_tables_of_the_code():
    from pathlib import Path

    doc = (Path(__file__).parents[2] / "docs" / "reliability.md").read_text()
    assert failures.failures_markdown() in doc
    assert failures.reasons_markdown() in doc
