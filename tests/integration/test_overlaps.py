"""The catch-up and the live stream at the same time, and inputs BigQuery or Cloud
Storage turn away: what the emulators answer too fast or too kindly to show by
themselves.

A catch-up step lists a chunk of the bucket, then asks BigQuery what it holds; the
emulator answers in milliseconds, BigQuery in seconds, and uploads go on in between.
tools/strict_bigquery.py holds the step's query (`/strict/hold`) while the test uploads,
so the gap is as wide as the test needs. It also refuses an append whose writer schema
names a column the table lacks (`/strict/columns`), as BigQuery does and bqemulator
does not. Each job is `embed-stream` on the emulators, started as a user starts it.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from urllib.parse import urlparse

import pytest

import schemas
from analysis import sql
from tests import fixtures
from tests.integration.conftest import start_job, wait_until
from tests.integration.tcp_proxy import TcpProxy
from tools.processes import cloud_job_args
from tools.strict_bigquery import COLUMNS_PATH, HOLD_PATH, RELEASE_PATH

START_S = 120  # a job's start (TensorFlow, the model) and its first rows, on 2 busy cores


def strict(path: str, body: dict | None = None) -> dict:
    """Calls the strict BigQuery proxy's control `path` (POST with `body`, else GET)."""
    url = os.environ["BIGQUERY_EMULATOR_HOST"].rstrip("/") + path
    data = json.dumps(body).encode() if body is not None else None
    with urllib.request.urlopen(url, data=data, timeout=10) as answer:
        return json.loads(answer.read())


class Place:
    """One test's bucket of images, a bucket for the vectors, a dataset with the
    embeddings table, and the jobs it started (stopped at the end)."""

    def __init__(self, cloud, tag: str, logs):
        rid = cloud.run_id
        self.cloud, self.logs, self.jobs = cloud, logs, []
        self.bucket = cloud.storage.create_bucket(f"{tag}-{rid}")
        self.vectors = cloud.storage.create_bucket(f"{tag}-vec-{rid}")
        self.dataset = f"{tag.replace('-', '_')}_{rid}"
        cloud.bq.create_dataset(self.dataset)
        self.table = f"{cloud.project}:{self.dataset}.embeddings"
        self.dead_table = f"{cloud.project}:{self.dataset}.dead_letters"
        from google.cloud import bigquery

        cloud.bq.create_table(
            bigquery.Table(
                ".".join(sql.parse_table_id(self.table)),
                schema=[bigquery.SchemaField.from_api_repr(f) for f in schemas.table_schema()],
            )
        )

    def upload(self, name: str, seed: int, content_type: str = "image/jpeg", data=None) -> int:
        """Uploads a small image (or `data`); returns its generation."""
        blob = self.bucket.blob(name)
        blob.upload_from_string(
            data if data is not None else fixtures.jpeg(64, 48, seed=seed),
            content_type=content_type,
        )
        return int(blob.generation)

    def live(self) -> dict[str, int]:
        """{name: live generation} of every object in the bucket."""
        return {b.name: int(b.generation) for b in self.cloud.storage.list_blobs(self.bucket)}

    def subscription(self, name: str, topic: str | None = None) -> str:
        """A subscription of the storage notifications, or of `topic` (created here)."""
        if topic is not None:
            self.cloud.publisher.create_topic(name=topic)
        sub = self.cloud.subscription(name)
        self.cloud.subscriber.create_subscription(
            name=sub, topic=topic or self.cloud.notify_topic, ack_deadline_seconds=60
        )
        return sub

    def quiet_subscription(self, name: str) -> str:
        """A subscription of a topic no one publishes to: a job whose notifications must
        not matter (the catch-up alone finds its work)."""
        return self.subscription(name, self.cloud.topic(name))

    def start(self, sub: str, *extra: str, env: dict | None = None):
        """`embed-stream` reading `sub`, over this place's bucket, tables and vectors."""
        argv = cloud_job_args(sub, self.table, self.vectors.name, self.bucket.name, self.dead_table)
        job = start_job([*argv, *extra], str(self.logs / f"job-{len(self.jobs)}.log"), env=env)
        self.jobs.append(job)
        return job

    def query(self, text: str) -> list[dict]:
        from google.api_core.exceptions import NotFound

        text = text.format(
            rows=sql.table_ref(self.table),
            current=sql.current_relation(self.table),
            dead=sql.table_ref(self.dead_table),
        )
        try:
            return [dict(r) for r in self.cloud.bq.query(text).result()]
        except NotFound:
            return []

    def current(self) -> dict[str, int]:
        """{name: generation} of the `current_embeddings` view."""
        return {r["name"]: r["generation"] for r in self.query("SELECT * FROM {current}")}

    def finalized(self) -> set[tuple[str, int]]:
        rows = self.query(
            "SELECT name, generation FROM {rows} WHERE event_type = 'OBJECT_FINALIZE'"
        )
        return {(r["name"], r["generation"]) for r in rows}

    def tombstones(self) -> list[tuple[str, int]]:
        rows = self.query("SELECT name, generation FROM {rows} WHERE event_type = 'OBJECT_DELETE'")
        return sorted((r["name"], r["generation"]) for r in rows)

    def dead_letters(self) -> list[dict]:
        return self.query("SELECT * FROM {dead}")


@pytest.fixture
def place(cloud, tmp_path):
    """Makes `Place`s; at the end, releases any held query and stops their jobs."""
    places = []

    def make(tag: str) -> Place:
        places.append(Place(cloud, tag, tmp_path))
        return places[-1]

    yield make
    strict(RELEASE_PATH, {})
    for p in places:
        for job in p.jobs:
            job.stop()


def caught_up(job, bucket) -> bool:
    """The job's catch-up has compared the whole bucket (its closing line)."""
    return f"catch-up gs://{bucket.name}/:" in job.output()


def test_objects_uploaded_while_a_catch_up_compares_stay_current(cloud, place):
    """Job A embeds live uploads; job B starts with a catch-up whose query BigQuery holds
    while 5 images are uploaded and 1 is overwritten, and A writes their rows. B's
    listing predates them: a generation it lacks may be newer than the listing, not
    deleted, and must not be tombstoned."""
    p = place("overlap")
    live_sub = p.subscription("overlap-live")
    for i in range(3):
        p.upload(f"live/old-{i}.jpg", seed=i)
    # Not A's (another prefix): B's catch-up embeds it, after its comparison's outputs.
    p.upload("z/backlog.jpg", seed=9)
    job_a = p.start(live_sub, "--catch_up", "never", "--include_prefix", "live/")
    wait_until(
        lambda: {n for n, _ in p.finalized()} == {f"live/old-{i}.jpg" for i in range(3)},
        timeout=START_S,
        what="job A's rows for the first 3 uploads",
        job=job_a,
    )
    strict(HOLD_PATH, {"contains": p.bucket.name, "count": 1, "max_secs": 90})
    job_b = p.start(p.quiet_subscription("overlap-catch-up"), "--catch_up", "always")
    wait_until(
        lambda: strict(HOLD_PATH)["holding"] == 1,
        timeout=START_S,
        what="job B's catch-up query (held)",
        job=job_b,
    )
    during = {f"live/new-{i}.jpg": p.upload(f"live/new-{i}.jpg", seed=10 + i) for i in range(5)}
    overwritten = ("live/old-0.jpg", p.live()["live/old-0.jpg"])
    during["live/old-0.jpg"] = p.upload("live/old-0.jpg", seed=20)
    wait_until(
        lambda: set(during.items()) <= p.finalized(),
        timeout=60,
        what="job A's rows for what was uploaded during B's comparison",
        job=job_a,
    )
    strict(RELEASE_PATH, {})
    wait_until(
        lambda: caught_up(job_b, p.bucket) and "z/backlog.jpg" in p.current(),
        timeout=60,
        what="job B's catch-up to finish and embed z/backlog.jpg",
        job=job_b,
    )
    assert job_a.poll() is None, job_a.log_tail()
    live = p.live()
    assert len(live) == 9
    assert p.current() == live, job_b.log_tail()
    # The overwritten generation's own deletion (its notification) is the only tombstone.
    assert set(p.tombstones()) <= {overwritten}


def test_a_missed_delete_of_an_image_known_by_its_content_type_alone(cloud, place):
    """An image without an image extension, accepted by its content type, deleted while
    its notification could not reach the job: the next start's catch-up tombstones it.
    The catch-up's deletion carries no content type, so the type cannot decide."""
    p = place("typed")
    p.upload("g/photo-without-extension", seed=1)
    p.upload(
        "g/kept-without-extension", seed=2, content_type="image/png", data=fixtures.png(64, 48)
    )
    p.upload("g/gone.jpg", seed=3)
    p.upload("g/kept.jpg", seed=4)
    p.upload("g/notes", seed=5, content_type="text/plain", data=b"not an image")
    sub = p.quiet_subscription("typed")
    job = p.start(sub, "--catch_up", "always")
    images = {"g/photo-without-extension", "g/kept-without-extension", "g/gone.jpg", "g/kept.jpg"}
    wait_until(lambda: set(p.current()) == images, timeout=START_S, what="4 rows", job=job)
    job.stop()
    # Deleted while the job is down and no subscription of its hears of it.
    p.bucket.blob("g/photo-without-extension").delete()
    p.bucket.blob("g/gone.jpg").delete()
    job = p.start(sub, "--catch_up", "always")
    wait_until(
        lambda: caught_up(job, p.bucket) and "g/gone.jpg" not in p.current(),
        timeout=START_S,
        what="the restart's catch-up to tombstone g/gone.jpg",
        job=job,
    )
    # Both tombstones come from the same step; the second may land a moment later.
    kept = {"g/kept-without-extension", "g/kept.jpg"}
    wait_until(
        lambda: set(p.current()) == kept,
        timeout=10,
        what="g/photo-without-extension to leave the current view",
        job=job,
    )
    assert [n for n, _ in p.tombstones()] == ["g/gone.jpg", "g/photo-without-extension"]
    assert p.dead_letters() == []


def notification(bucket: str, name: str, generation: int, event_time: str) -> tuple:
    """A storage notification (data, attributes) as Cloud Storage sends it."""
    resource = {
        "kind": "storage#object",
        "bucket": bucket,
        "name": name,
        "generation": str(generation),
        "contentType": "image/jpeg",
        "size": "100",
    }
    attributes = {
        "eventType": "OBJECT_FINALIZE",
        "bucketId": bucket,
        "objectId": name,
        "objectGeneration": str(generation),
        "eventTime": event_time,
        "payloadFormat": "JSON_API_V1",
    }
    return json.dumps(resource).encode(), attributes


def test_a_notification_whose_event_time_is_not_a_time_is_a_dead_letter(cloud, place):
    """An eventTime of "yesterday" would reach a TIMESTAMP column of the row and of any
    dead letter written later, and BigQuery refuses both: it is refused when parsed."""
    p = place("event-time")
    topic = cloud.topic("event-time")
    sub = p.subscription("event-time", topic)
    bad = p.upload("bad.jpg", seed=1)
    good = p.upload("good.jpg", seed=2)
    job = p.start(sub, "--catch_up", "never")
    for name, generation, event_time in (
        ("bad.jpg", bad, "yesterday"),
        ("good.jpg", good, "2026-12-01T10:00:00Z"),
    ):
        data, attributes = notification(p.bucket.name, name, generation, event_time)
        cloud.publisher.publish(topic, data, **attributes).result()
    wait_until(lambda: p.current() == {"good.jpg": good}, timeout=START_S, what="a row", job=job)
    dead = wait_until(p.dead_letters, timeout=20, what="the dead letter of bad.jpg", job=job)
    assert [(d["stage"], d["reason"]) for d in dead] == [("parse", "bad_attribute")], dead
    assert "yesterday" in dead[0]["error"] and "bad.jpg" in dead[0]["raw"]
    assert p.finalized() == {("good.jpg", good)}


def test_dead_letters_wait_for_the_columns_an_older_table_lacks(cloud, place):
    """A dead-letter table made from an older schema (no `retryable`, `attempt`):
    BigQuery refuses appends that name those columns. The job waits and says so; once
    the columns are added the dead letters arrive, none lost."""
    from google.cloud import bigquery

    p = place("old-dead")
    table_id = ".".join(sql.parse_table_id(p.dead_table))
    new_columns = ("retryable", "attempt")
    older = [f for f in schemas.table_schema(schemas.DEAD_LETTERS) if f["name"] not in new_columns]
    cloud.bq.create_table(
        bigquery.Table(table_id, schema=[bigquery.SchemaField.from_api_repr(f) for f in older])
    )
    strict(COLUMNS_PATH, {"table": table_id})
    topic = cloud.topic("old-dead")
    sub = p.subscription("old-dead", topic)
    job = p.start(sub, "--catch_up", "never")
    # Two dead letters: one of a message that is no notification, one of an object in a
    # bucket the job does not read (with a generation and an attempt).
    cloud.publisher.publish(topic, b"not a notification", note="1").result()
    data, attributes = notification(f"elsewhere-{cloud.run_id}", "x.jpg", 7, "2026-12-01T10:00:00Z")
    cloud.publisher.publish(topic, data, **attributes).result()
    wait_until(
        lambda: any(
            all(word in line for word in ("waiting", table_id, *new_columns))
            for line in job.output().splitlines()
        ),
        timeout=START_S,
        what="the job's line saying that the dead letters wait for the table",
        job=job,
    )
    assert p.dead_letters() == []
    for column, kind in (("retryable", "BOOL"), ("attempt", "INT64")):
        cloud.bq.query(f"ALTER TABLE `{table_id}` ADD COLUMN {column} {kind}").result()
    table = cloud.bq.get_table(table_id)
    have = {f.name for f in table.schema}
    table.schema = list(table.schema) + [
        bigquery.SchemaField.from_api_repr(f)
        for f in schemas.table_schema(schemas.DEAD_LETTERS)
        if f["name"] not in have
    ]
    cloud.bq.update_table(table, ["schema"])
    dead = wait_until(
        lambda: (lambda d: d if len(d) >= 2 else None)(p.dead_letters()),
        timeout=90,
        what="the 2 dead letters once the columns exist",
        job=job,
    )
    assert sorted((d["stage"], d["reason"], d["retryable"], d["attempt"]) for d in dead) == [
        ("filter", "bucket_not_allowed", False, 0),
        ("parse", "not_a_notification", False, None),
    ], dead


# google-cloud-storage retries a call for up to 120 s; the job's process gets a
# 2 s budget instead, so an outage outlasts the client's retries in seconds.
SHORT_STORAGE_RETRIES = """
from google.cloud.storage import retry

retry.DEFAULT_RETRY._timeout = retry.DEFAULT_RETRY._deadline = 2.0
retry.DEFAULT_RETRY._maximum = 0.5
"""
OUTAGE_S = 15  # longer than 4 tries (the local runner's) of a 2 s budget each


def test_a_storage_outage_during_the_catch_up_is_ridden_out(cloud, place, tmp_path):
    """Cloud Storage goes away between two steps of the catch-up at start, for longer
    than the client retries: the job keeps running, and once storage is back the
    catch-up goes on from where it was and finds the whole backlog."""
    p = place("cut")
    for i in range(2):  # the first step's chunk: not images, nothing to read
        p.upload(f"a/{i}.txt", seed=i, content_type="text/plain", data=b"text")
    backlog = {f"b/{i}.jpg": p.upload(f"b/{i}.jpg", seed=30 + i) for i in range(6)}
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SHORT_STORAGE_RETRIES)
    storage = TcpProxy(urlparse(os.environ["STORAGE_EMULATOR_HOST"]).port).start()
    try:
        strict(HOLD_PATH, {"contains": p.bucket.name, "count": 1, "max_secs": 90})
        job = p.start(
            p.quiet_subscription("cut"),
            "--catch_up",
            "always",
            "--catch_up_chunk",
            "2",
            env={
                "STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{storage.port}",
                "PYTHONPATH": os.pathsep.join(
                    x for x in (str(site), os.environ.get("PYTHONPATH")) if x
                ),
            },
        )
        wait_until(
            lambda: strict(HOLD_PATH)["holding"] == 1,
            timeout=START_S,
            what="the first step's query (held)",
            job=job,
        )
        storage.stop()
        strict(RELEASE_PATH, {})
        time.sleep(OUTAGE_S)  # the length of the outage, not a wait for a condition
        assert job.poll() is None, job.log_tail()
        storage.start()
        wait_until(
            lambda: p.current() == backlog,
            timeout=120,
            what="rows for the whole backlog",
            job=job,
        )
        assert caught_up(job, p.bucket)
        assert p.tombstones() == [] and p.dead_letters() == []
        # The failed step was the catch-up's to handle, not raised to the runner (whose
        # retries of the bundle log this).
        assert "Exception at bundle" not in job.output()
    finally:
        storage.stop()
