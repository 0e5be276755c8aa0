"""The job's stages after the source (`pipeline.embed_refs`, the real ResNet50 on
`random:0`) on storage notifications, against fake-gcs-server; where Cloud Storage
does what the emulator does not (IAM refusals, create-only roles), a proxy in front
of it (`http_proxy.HttpProxy`) answers on the wire.

Each test runs bounded pipelines in this process and reads their rows and dead
letters (written to --output_dir) and their counters.
"""

from __future__ import annotations

import glob
import io
import json
import os

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.io import PubsubMessage

from streaming import main, pipeline
from streaming.config.options import EmbedOptions
from streaming.sinks import files
from streaming.sources.contract import notification_for
from streaming.sources.notifications import ParseNotifications
from tests import fixtures
from tests.integration.conftest import pull_all, wait_until
from tools.http_proxy import HttpProxy, gcs_error, object_creator_rule


@pytest.fixture
def bucket(cloud, request):
    name = f"perm-{request.node.name[5:25].replace('_', '-').strip('-')}-{cloud.run_id}"
    return cloud.storage.create_bucket(name.lower())


@pytest.fixture
def proxy(monkeypatch):
    """fake-gcs-server behind a recording proxy; the job's clients talk to the proxy."""
    p = HttpProxy(os.environ["STORAGE_EMULATOR_HOST"]).start()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", p.url)
    yield p
    p.stop()


def upload(bucket, name, data, content_type):
    blob = bucket.blob(name)
    blob.upload_from_string(data, content_type=content_type)
    return blob


def json_message(blob) -> PubsubMessage:
    data, attributes = notification_for(blob._properties)
    attributes.pop("backfill")
    return PubsubMessage(data, attributes)


def none_message(blob) -> PubsubMessage:
    """A notification from a config created with payloadFormat NONE: attributes only."""
    return PubsubMessage(
        b"",
        {
            "eventType": "OBJECT_FINALIZE",
            "bucketId": blob.bucket.name,
            "objectId": blob.name,
            "objectGeneration": str(blob.generation),
            "payloadFormat": "NONE",
        },
    )


def run_job(messages, out_dir, *argv):
    """The job's graph after the source, on `messages`: (rows, dead letters, counters)."""
    opts = EmbedOptions(
        [
            "--output_dir",
            str(out_dir),
            "--weights",
            "random:0",
            "--runner",
            "BundleBasedDirectRunner",
            *argv,
        ]
    )
    p = beam.Pipeline(options=opts)
    parsed = p | beam.Create(messages) | ParseNotifications()
    pipeline.embed_refs(parsed.refs, opts, extra_dead=[parsed.dead_letters])
    result = p.run()
    result.wait_until_finish()

    def read(kind):
        found = []
        for path in glob.glob(os.path.join(out_dir, kind, "**", "*.json"), recursive=True):
            with open(path, encoding="utf-8") as f:
                found.append(json.loads(f.read()))
        return found

    return read(files.ROWS_DIR), read(files.DEAD_LETTERS_DIR), main.counters(result)


def test_none_format_objects_are_filtered_on_their_fetched_content_type(bucket, tmp_path):
    """A NONE notification says nothing of the type: an extension-less JPEG is embedded,
    an extension-less text file is skipped (counted, no dead letter) once its metadata
    is read."""
    photo = upload(bucket, "none/photo", fixtures.jpeg(seed=5), "image/jpeg")
    notes = upload(bucket, "none/notes", b"not an image\n", "text/plain")
    rows, dead, counters = run_job([none_message(photo), none_message(notes)], tmp_path)
    assert [(r["name"], r["content_type"]) for r in rows] == [("none/photo", "image/jpeg")]
    assert rows[0]["size_bytes"] == photo.size and len(rows[0]["embedding"]) == 2048
    assert dead == []
    assert counters.get("skipped.type") == 1 and counters.get("images_embedded") == 1


def test_unreadable_objects_become_dead_letters_and_the_rest_goes_on(bucket, proxy, tmp_path):
    """Cloud Storage answers 403 for `forbidden/*` (metadata and bytes) and 503 for
    `flaky/*` until the reader's retries are spent: each is a dead letter with its
    reason, none fails the bundle (which a streaming runner would retry forever)."""

    def rule(request):
        name = request.bucket_and_object[1] or ""
        if request.method == "GET" and name.startswith("forbidden/"):
            return gcs_error(403, f"caller does not have storage.objects.get access to {name}")
        if request.method == "GET" and name.startswith("flaky/"):
            return gcs_error(503, "backend unavailable")
        return None

    proxy.rule = rule
    blobs = {
        name: upload(bucket, name, fixtures.jpeg(seed=i), "image/jpeg")
        for i, name in enumerate(
            ["forbidden/meta.jpg", "forbidden/bytes.jpg", "flaky/meta.jpg", "ok.jpg"]
        )
    }
    messages = [
        none_message(blobs["forbidden/meta.jpg"]),  # metadata GET refused
        json_message(blobs["forbidden/bytes.jpg"]),  # download refused
        none_message(blobs["flaky/meta.jpg"]),  # metadata GET never succeeds
        json_message(blobs["ok.jpg"]),
    ]
    rows, dead, counters = run_job(messages, tmp_path)
    assert [r["name"] for r in rows] == ["ok.jpg"]
    assert sorted((d["stage"], d["reason"], d["name"]) for d in dead) == [
        ("load", "permission_denied", "forbidden/bytes.jpg"),
        ("load", "permission_denied", "forbidden/meta.jpg"),
        ("load", "read_error", "flaky/meta.jpg"),
    ]
    assert all(d["error"] for d in dead)
    assert counters.get("dead_letter.permission_denied") == 2
    assert counters.get("dead_letter.read_error") == 1
    flaky_gets = [r for r in proxy.requests if r.bucket_and_object[1] == "flaky/meta.jpg"]
    assert len(flaky_gets) > 1  # retried before giving up


def test_a_vector_that_already_exists_does_not_cost_the_row(bucket, proxy, tmp_path):
    """With `roles/storage.objectCreator` on the vectors bucket (the proxy refuses an
    upload that would replace an object with 403, as Cloud Storage does for that role;
    fake-gcs-server itself grants everything), a notification processed again, in the
    same run or a later one, still gives its row and no dead letter; the vector is
    written once, by a create-only upload (ifGenerationMatch=0)."""
    proxy.rule = object_creator_rule(proxy)
    blob = upload(bucket, "again/x.jpg", fixtures.jpeg(seed=7), "image/jpeg")
    root = f"gs://{bucket.name}/vectors/"
    message = json_message(blob)
    for run, deliveries in enumerate((2, 1)):  # a redelivery, then a re-run
        rows, dead, counters = run_job(
            [message] * deliveries,
            tmp_path / f"run{run}",
            "--output_gcs",
            root,
            "--vector_layout",
            "objects",
        )
        assert dead == [], dead
        assert counters.get("images_embedded") == deliveries
        assert [r["name"] for r in rows] == ["again/x.jpg"]  # one file per generation
    vectors = list(bucket.list_blobs(prefix="vectors/"))
    assert [f"gs://{bucket.name}/{v.name}" for v in vectors] == [rows[0]["vector_uri"]]
    # The first write stays; a later run's forward pass (another batch) may differ in
    # the last float bits.
    stored = np.load(io.BytesIO(vectors[0].download_as_bytes()))
    np.testing.assert_allclose(stored, np.float32(rows[0]["embedding"]), rtol=1e-5, atol=1e-5)
    uploads = proxy.uploads("vectors/")
    assert len(uploads) == 3 and all(u.query.get("ifGenerationMatch") == "0" for u in uploads)


def test_a_shard_that_already_exists_does_not_cost_its_rows(bucket, proxy, tmp_path):
    """The same images embedded again in the same group (a retried bundle, a re-run)
    name the same shard: its create-only upload finds it there (412; an overwrite
    would be refused under `roles/storage.objectCreator`), and every row still comes,
    pointing at the first write's vectors. Two images, one shard, two uploads in all."""
    proxy.rule = object_creator_rule(proxy)
    blobs = [
        upload(bucket, f"shard/{i}.jpg", fixtures.jpeg(seed=20 + i), "image/jpeg") for i in range(2)
    ]
    root = f"gs://{bucket.name}/shards-test/"
    for run in range(2):
        rows, dead, counters = run_job(
            [json_message(b) for b in blobs], tmp_path / f"r{run}", "--output_gcs", root
        )
        assert dead == [], dead
        assert sorted((r["name"], r["vector_index"]) for r in rows) == [
            ("shard/0.jpg", 0),
            ("shard/1.jpg", 1),
        ]
    (shard,) = list(bucket.list_blobs(prefix="shards-test/"))
    assert {r["vector_uri"] for r in rows} == {f"gs://{bucket.name}/{shard.name}"}
    stored = np.load(io.BytesIO(shard.download_as_bytes()))
    for r in rows:
        np.testing.assert_allclose(
            stored[r["vector_index"]], np.float32(r["embedding"]), rtol=1e-5, atol=1e-5
        )
    uploads = proxy.uploads("shards-test/")
    assert len(uploads) == 2 and all(u.query.get("ifGenerationMatch") == "0" for u in uploads)


def test_notifications_of_the_jobs_own_vectors_are_dropped_by_name(cloud, bucket, tmp_path):
    """The job writes its .npy into the bucket it reads, and the bucket notifies it of
    them. With a type filter that accepts them (application/octet-stream), only the
    own-output rule drops those real notifications: counted as skipped.own_output, no
    row, no dead letter."""
    tap = cloud.subscription(f"tap-{bucket.name}")
    cloud.subscriber.create_subscription(name=tap, topic=cloud.notify_topic)
    blob = upload(bucket, "own/x.jpg", fixtures.jpeg(seed=9), "image/jpeg")
    argv = (
        "--output_gcs",
        f"gs://{bucket.name}/embeddings/",
        "--content_types",
        "image/,application/octet-stream",
    )
    rows, dead, _ = run_job([json_message(blob)], tmp_path / "first", *argv)
    assert [r["name"] for r in rows] == ["own/x.jpg"] and dead == []
    vector = rows[0]["vector_uri"][len(f"gs://{bucket.name}/") :]
    received: list = []

    def notified():
        received.extend(
            m
            for m in pull_all(cloud, tap, quiet_for=0.5, limit=5)
            if m.attributes.get("bucketId") == bucket.name
            and m.attributes.get("objectId") == vector
        )
        return received

    wait_until(notified, timeout=60, what="the notification of the job's .npy")
    rows, dead, counters = run_job(
        [PubsubMessage(m.data, dict(m.attributes)) for m in received], tmp_path / "second", *argv
    )
    assert rows == [] and dead == []
    assert counters.get("skipped.own_output") == len(received)
    cloud.subscriber.delete_subscription(subscription=tap)
