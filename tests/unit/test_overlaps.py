"""What happens when things overlap, one scenario each: a catch-up step beside live
uploads, a missed delete of an image known by its type alone, a notification whose time
is no time, a versioned bucket's archive, a catch-up step that fails, a worker that
starts after a weights switch, the catch-up's ticks on Dataflow. The stateful test
(test_reconciliation_protocol.py) runs them all interleaved."""

import json

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from streaming.records import ImageRef, Rejected
from streaming.sinks import files
from streaming.sources import catch_up
from streaming.sources.contract import notification_for
from streaming.sources.notifications import parse_notification
from streaming.stages import filters
from tests import protocol_sim as sim


def world(tmp_path, versioned=False):
    return sim.World(versioned, str(tmp_path))


def embedded(w: sim.World, name: str) -> None:
    """`name` uploaded, notified and written."""
    w.notify(w.bucket.upload(name))
    w.drain()


class CatchUpAlone:
    """The catch-up's DoFn over a bucket and tables, nothing else running."""

    def __init__(self):
        self.bucket, self.tables = sim.Bucket(versioned=False), sim.Tables()
        self.fn = catch_up._CatchUpFn(sim.TABLE, sim.DEAD_TABLE, False, sim.CONFIG, sim.CHUNK)
        self.fn._storage, self.fn._bq = sim.Storage(self.bucket), self.tables
        self.state = sim._State()
        self.key, self.scope = catch_up.scope_key(catch_up.Scope(sim.BUCKET))

    def embed(self, name: str) -> None:
        self.bucket.upload(name)
        version = self.bucket.live(name)
        ref = catch_up.ref_of(self.bucket.resource(name, version), "notification")
        row = {"row_key": ref.key, "bucket": ref.bucket, "name": name}
        row.update(generation=ref.generation, event_type="OBJECT_FINALIZE")
        assert self.tables.insert("embeddings", [row]) == []

    def tick(self) -> None:
        self.fn.process((self.key, self.scope), self.state, self.state)

    def step(self, between=None) -> list[ImageRef]:
        self.tables.before_query = between
        return list(self.fn.step(self.key, self.state, self.state))


def test_a_catch_up_step_leaves_alone_what_was_uploaded_after_its_listing():
    c = CatchUpAlone()
    c.embed("a.jpg")
    c.tick()

    def meanwhile():  # between the listing and the query: a new image, an overwrite
        c.embed("c")
        c.embed("a.jpg")

    refs = c.step(meanwhile)
    assert [(r.name, r.event_type) for r in refs if r.event_type != "OBJECT_FINALIZE"] == []


def test_a_missed_delete_of_an_image_known_by_its_type_alone_writes_its_tombstone():
    resource = {"bucket": "b", "name": "g/photo-without-extension", "generation": "7"}
    config = sim.CONFIG
    from_catch_up = catch_up.finding_ref(catch_up.Finding(resource, catch_up.GONE), "catchup")
    from_backfill = parse_notification(*notification_for(resource, event_type="OBJECT_DELETE"))
    for ref in (from_catch_up, from_backfill):
        assert filters.skip_reason(ref, config) == filters.SKIPPED_DELETE
    # A real deletion notification names the type: a non-image's deletion stays skipped.
    text = dict(resource, contentType="text/plain")
    deleted_text = parse_notification(*notification_for(text, event_type="OBJECT_DELETE"))
    assert filters.skip_reason(deleted_text, config) == filters.SKIPPED_TYPE


@pytest.mark.parametrize("event_time", ["yesterday", "2026-13-40T00:00:00Z", "1764201600"])
def test_an_event_time_that_is_no_time_is_a_dead_letter_at_parse(event_time):
    data, attributes = notification_for(
        {"bucket": "b", "name": "a.jpg", "generation": "1", "contentType": "image/jpeg"}
    )
    with pytest.raises(Rejected) as rejected:
        parse_notification(data, dict(attributes, eventTime=event_time))
    assert rejected.value.reason == "bad_attribute" and "eventTime" in str(rejected.value)
    bad_payload = {"bucket": "b", "name": "a.jpg", "generation": "1", "updated": "soon"}
    with pytest.raises(Rejected, match="updated"):
        parse_notification(*notification_for(bad_payload))


def test_a_dead_letter_bigquery_refuses_is_written_reduced_and_never_dropped():
    from streaming.sinks import bigquery

    row = {
        "row_key": "k",
        "bucket": "b",
        "name": "a.jpg",
        "generation": 3,
        "stage": "write",
        "reason": "bigquery_rejected",
        "error": "invalid",
        "raw": None,
        "event_time": "yesterday",
        "retryable": False,
        "attempt": 0,
    }
    errors = [{"reason": "invalid", "message": "Invalid timestamp: 'yesterday'"}]
    reduced = bigquery.reduced_dead_letter(("p:d.dead", row, errors))
    assert reduced["event_time"] is None and "yesterday" in reduced["raw"]
    assert reduced["error"].startswith("BigQuery refused this dead letter")
    assert {k: reduced[k] for k in ("row_key", "name", "generation", "reason")} == {
        "row_key": "k",
        "name": "a.jpg",
        "generation": 3,
        "reason": "bigquery_rejected",
    }
    tables = sim.Tables()
    assert tables.insert("dead_letters", [row]) != []  # DuckDB refuses it as BigQuery does
    assert tables.insert("dead_letters", [reduced]) == []


def test_an_archived_generation_gets_a_tombstone_that_hides_a_late_embedding(tmp_path):
    archived = ImageRef("b", "a.jpg", 5, event_type="OBJECT_ARCHIVE", content_type="image/jpeg")
    with TestPipeline() as p:
        kept = p | beam.Create([archived]) | filters.FilterObjects(sim.CONFIG)
        assert_that(kept.deletes, equal_to([archived]), label="tombstoned")
        assert_that(kept.accepted, equal_to([]), label="not embedded")
    assert files.tombstone_row(archived)["event_type"] == "OBJECT_DELETE"
    # Versioned: delete the live version (OBJECT_ARCHIVE), then its finalize arrives late.
    w = world(tmp_path, versioned=True)
    w.process.cursor.clear()
    finalize = w.bucket.upload("a.jpg")
    w.notify(w.bucket.delete("a.jpg"))
    w.notify(finalize)
    w.drain()
    assert w.tables.current() == {}


def test_a_failing_catch_up_step_is_tried_again_later_then_given_up_never_raised():
    c = CatchUpAlone()
    c.embed("a.jpg")
    c.bucket.list_fault = "unavailable"
    c.tick()
    assert c.step() == []  # Cloud Storage away past its client's retries: no raise
    waits = [catch_up.step_retry_secs(1)]
    for tries in range(2, catch_up.STEP_TRIES):
        assert c.step() == []
        progress = json.loads(c.state.value)
        assert progress["tries"] == tries and progress["after"] is None
        waits.append(catch_up.step_retry_secs(tries))
    assert waits == sorted(waits) and max(waits) == catch_up.MAX_STEP_RETRY_SECS
    c.step()
    assert c.state.value is None  # abandoned: the next tick starts a pass
    c.bucket.list_fault = None
    c.tables.query_fault = "forbidden"  # no bigquery.jobUser: the same, for the query
    c.tick()
    c.step()
    assert json.loads(c.state.value)["tries"] == 1
    c.tables.query_fault = None
    c.bucket.upload("c")
    found = c.step() + c.step()  # two steps of two names: a.jpg c, then none
    assert [r.name for r in found] == ["c"] and c.state.value is None


def test_a_pass_whose_timer_was_lost_is_started_again_by_the_next_tick(monkeypatch):
    import time

    c = CatchUpAlone()
    c.tick()
    held = c.state.value
    c.tick()  # a tick while the pass runs: skipped
    assert c.state.value == held
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + 7 * 86_400)  # its timer never fired
    c.tick()
    assert c.state.value != held and json.loads(c.state.value)["steps"] == 0


def test_a_worker_started_after_a_weights_switch_embeds_with_them_from_its_first_batch(
    tmp_path, monkeypatch
):
    from streaming.model import inference, weights_watch

    built = []

    def build(spec, *args, **kwargs):
        built.append(spec)
        return sim.Model(str(spec).rsplit("/", 1)[-1].split(".")[0])

    monkeypatch.setattr(inference, "load_embedding_model", build)
    monkeypatch.setattr(inference, "build_embedding_model", build)
    monkeypatch.setattr(weights_watch, "_WATCHED", {})
    (tmp_path / "switched.weights.h5").write_bytes(b"w")
    handler = inference.EmbeddingModelHandler(
        "random:0", weights_watch=str(tmp_path), weights_watch_interval=3600
    )
    model = handler.load_model()
    try:
        assert model.current().fingerprint == "switched"
        assert built == [str(tmp_path / "switched.weights.h5")]  # --weights never loaded
    finally:
        model.stop()


def test_a_dataflow_job_catches_up_from_an_unbounded_impulse_never_from_create():
    from tests.unit.test_reconcile import dataflow_step_names

    catch_up_steps = {n for n in dataflow_step_names() if n.startswith("Catch up/")}
    assert "Catch up/Every interval" in catch_up_steps
    assert not any("Create" in n for n in catch_up_steps)
