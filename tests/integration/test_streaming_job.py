"""Uploads to the Cloud Storage emulator -> real notifications -> the streaming job ->
BigQuery rows + .npy objects + dead letters, all through real servers."""

import base64
import hashlib
import io
import json
import re

import numpy as np
import pytest

from streaming.stages.load import decode_image
from tests import fixtures
from tests.integration.conftest import pull_all, wait_until

UPLOADS = {
    "shots/a/cat.jpg": (fixtures.jpeg(400, 300, seed=11), "image/jpeg"),
    "shots/b/cat.jpg": (fixtures.jpeg(300, 400, seed=12), "image/jpeg"),
    "shots/logo.png": (fixtures.png(256, 256, seed=13), "image/png"),
}


@pytest.fixture(scope="module")
def tap(stack):
    """Our own subscription on the notification topic, made before the uploads, so it
    sees the notifications of the job's .npy outputs too."""
    sub = stack.cloud.subscription("outputs-tap")
    stack.cloud.subscriber.create_subscription(name=sub, topic=stack.cloud.notify_topic)
    return sub


@pytest.fixture(scope="module")
def uploaded(stack, tap):
    blobs = {}
    for name, (data, ctype) in UPLOADS.items():
        blob = stack.images.blob(name)
        blob.metadata = {"camera": "test"}
        blob.upload_from_string(data, content_type=ctype)
        blobs[name] = blob
    bucket = stack.images.name
    rows = wait_until(
        lambda: (lambda r: r if len({x["name"] for x in r}) >= len(UPLOADS) else None)(
            stack.query(
                f"SELECT * FROM {stack.rows_sql} WHERE bucket = '{bucket}' "
                "AND STARTS_WITH(name, 'shots/')"
            )
        ),
        timeout=180,
        what="rows for the uploaded images",
        job=stack.job,
    )
    return blobs, rows


def test_each_upload_gives_exactly_one_row_with_its_metadata(uploaded):
    blobs, rows = uploaded
    assert sorted(r["name"] for r in rows) == sorted(UPLOADS)  # one row each, no dupes
    for r in rows:
        blob = blobs[r["name"]]
        data = UPLOADS[r["name"]][0]
        assert r["generation"] == blob.generation
        assert r["content_type"] == UPLOADS[r["name"]][1]
        assert r["size_bytes"] == len(data)
        assert r["md5_hash"] == base64.b64encode(hashlib.md5(data).digest()).decode()
        assert r["event_type"] == "OBJECT_FINALIZE" and r["source"] == "notification"
        assert r["model_name"] == "resnet50-avgpool" and len(r["model_fingerprint"]) == 16
        assert r["model_runtime"].startswith("onnxruntime-")
        assert len(r["embedding"]) == 2048
        assert json.loads(r["metadata"]) == {"camera": "test"}
    by_name = {r["name"]: r for r in rows}
    assert (by_name["shots/a/cat.jpg"]["width"], by_name["shots/a/cat.jpg"]["height"]) == (400, 300)


def test_vectors_are_in_cloud_storage_and_equal_a_direct_model_call(stack, uploaded, direct_embed):
    _, rows = uploaded
    places = {(r["vector_uri"], r["vector_index"]) for r in rows}
    assert len(places) == len(rows)  # same basename, different vectors
    for r in rows:
        assert r["vector_uri"].startswith(f"gs://{stack.images.name}/embeddings/shards/")
        key = r["vector_uri"][len(f"gs://{stack.images.name}/") :]
        shard = np.load(io.BytesIO(stack.images.blob(key).download_as_bytes()))
        vector = shard[r["vector_index"]]
        np.testing.assert_array_equal(vector, np.float32(r["embedding"]))
        want = direct_embed(decode_image(UPLOADS[r["name"]][0]).pixels)
        # The default runtime, ONNX Runtime, agrees with Keras to a cosine of 0.99999.
        assert vector @ want / (np.linalg.norm(vector) * np.linalg.norm(want)) >= 0.99999


def test_the_job_never_embeds_its_own_outputs(stack, uploaded, tap):
    """The job writes its .npy under gs://img-.../embeddings/, in the bucket it watches.
    Asserted once their notifications are out and a later upload has gone all the way
    through the job. (The type filter would drop them too; that the own-output rule
    does, whatever the type, is tested in test_stages_on_storage.py.)"""
    _, embedded = uploaded
    prefix = f"gs://{stack.images.name}/"
    vectors = {r["vector_uri"][len(prefix) :] for r in embedded}
    seen: set = set()

    def all_notified():
        seen.update(
            m.attributes.get("objectId") for m in pull_all(stack.cloud, tap, quiet_for=0.5, limit=5)
        )
        return vectors <= seen

    wait_until(all_notified, timeout=60, what="the notifications of the job's .npy objects")
    stack.images.blob("own/after.jpg").upload_from_string(
        fixtures.jpeg(seed=31), content_type="image/jpeg"
    )
    wait_until(
        lambda: stack.query(f"SELECT name FROM {stack.rows_sql} WHERE name = 'own/after.jpg'"),
        timeout=120,
        what="the row of an upload made after them",
        job=stack.job,
    )
    mine = f"bucket = '{stack.images.name}' AND STARTS_WITH(name, 'embeddings/')"
    rows = stack.query(f"SELECT name FROM {stack.rows_sql} WHERE {mine}")
    dead = stack.query(f"SELECT name FROM {stack.dead_sql} WHERE {mine}")
    assert rows == [] and dead == []


def test_bad_message_and_bad_image_are_dead_lettered_and_the_stream_goes_on(stack, uploaded):
    cloud = stack.cloud
    cloud.publisher.publish(
        cloud.notify_topic, b'{"hello": "not a notification"}', origin="someone-else"
    ).result(timeout=30)
    stack.images.blob("bad/notes.jpg").upload_from_string(
        b"this is text, not a JPEG", content_type="image/jpeg"
    )
    stack.images.blob("after/ok.jpg").upload_from_string(
        fixtures.jpeg(seed=21), content_type="image/jpeg"
    )
    # Other tests' uploads reach this job too: wait for these two dead letters.
    dead = wait_until(
        lambda: (
            lambda r: (
                r
                if {(d["reason"], d["name"]) for d in r}
                >= {("not_a_notification", None), ("not_an_image", "bad/notes.jpg")}
                and any("not a notification" in (d["raw"] or "") for d in r)
                else None
            )
        )(
            stack.query(
                f"SELECT stage, reason, name, raw, error FROM {stack.dead_sql} "
                "WHERE reason = 'not_a_notification' OR name = 'bad/notes.jpg'"
            )
        ),
        timeout=120,
        what="dead letters",
        job=stack.job,
    )
    reasons = {(d["stage"], d["reason"], d["name"]) for d in dead}
    assert ("parse", "not_a_notification", None) in reasons
    assert ("decode", "not_an_image", "bad/notes.jpg") in reasons
    parse_dead = [
        d
        for d in dead
        if d["reason"] == "not_a_notification" and "not a notification" in (d["raw"] or "")
    ]
    assert parse_dead and len(parse_dead[0]["raw"]) <= 1000
    later = wait_until(
        lambda: stack.query(f"SELECT name FROM {stack.rows_sql} WHERE name = 'after/ok.jpg'"),
        timeout=120,
        what="the image uploaded after the bad ones",
        job=stack.job,
    )
    assert len(later) == 1
    assert stack.job.poll() is None


def test_the_running_job_logs_what_it_does(stack, uploaded):
    """A periodic line: embedded so far, dead letters by reason, images/s, and the
    notification-to-row latency percentiles."""
    pattern = re.compile(
        r"INFO embed-stream: embedded (\d+), dead letters \d+.*images/s, "
        r"notification-to-row latency p50 [\d.]+ s p95 [\d.]+ s"
    )

    def embedded_so_far():
        counts = [int(m.group(1)) for m in pattern.finditer(stack.job.log_tail(200_000))]
        return counts and max(counts) >= len(UPLOADS)

    wait_until(embedded_so_far, timeout=60, what="a progress line", job=stack.job)


def test_a_storm_of_malformed_messages_leaves_one_dead_letter_each(stack, uploaded):
    """Hundreds of bad messages at once (the local read pulls them by the hundred):
    every one is dead-lettered exactly once, and uploads behind them still get rows."""
    cloud, marker = stack.cloud, f"storm-{stack.images.name}"
    futures = [
        cloud.publisher.publish(
            cloud.notify_topic,
            f"{marker} {i}: not JSON".encode(),
            eventType="OBJECT_FINALIZE",
            bucketId=stack.images.name,
            objectId=f"storm/{i}.jpg",
            payloadFormat="JSON_API_V1",
        )
        for i in range(300)
    ]
    for future in futures:
        future.result(timeout=60)
    behind = [f"after-storm/{i}.jpg" for i in range(3)]
    for i, name in enumerate(behind):
        stack.images.blob(name).upload_from_string(
            fixtures.jpeg(seed=40 + i), content_type="image/jpeg"
        )
    mine = f"raw LIKE '%{marker} %'"  # raw: the message's attributes and data, as JSON
    count_sql = (
        f"SELECT COUNT(*) AS n, COUNT(DISTINCT raw) AS distinct_raw FROM "
        f"{stack.dead_sql} WHERE {mine}"
    )
    dead = wait_until(
        lambda: (lambda r: r[0] if r and r[0]["n"] >= 300 else None)(stack.query(count_sql)),
        timeout=180,
        what="300 dead letters",
        job=stack.job,
    )
    rows = wait_until(
        lambda: (lambda r: r if len(r) >= len(behind) else None)(
            stack.query(
                f"SELECT name FROM {stack.rows_sql} WHERE STARTS_WITH(name, 'after-storm/')"
            )
        ),
        timeout=120,
        what="rows for the uploads behind the storm",
        job=stack.job,
    )
    assert (dead["n"], dead["distinct_raw"]) == (300, 300)
    assert sorted(r["name"] for r in rows) == behind
    stages = stack.query(f"SELECT DISTINCT stage FROM {stack.dead_sql} WHERE {mine}")
    assert [r["stage"] for r in stages] == ["parse"]


def test_the_job_runs_within_the_roles_infra_grants_it(stack, uploaded):
    """Every call of the job above went through proxies that answer 403 as its roles
    in infra/ would (tools/iam.py): none was refused, and the proxies did see it."""
    assert [str(d) for d in stack.iam.denied] == []
    assert stack.iam.storage.port and stack.query(f"SELECT 1 AS one FROM {stack.rows_sql} LIMIT 1")
