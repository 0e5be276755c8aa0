"""At-least-once delivery, overwrites, deletes and odd deliveries, end to end against the
emulators with the running streaming job."""

import io

import numpy as np
import pytest

from analysis import sql
from streaming.sources.contract import notification_for
from tests import fixtures
from tests.integration.conftest import pull_all, wait_until


@pytest.fixture(scope="module")
def current(stack):
    view = f"{stack.cloud.project}.{stack.dataset}.current_embeddings"
    stack.cloud.bq.query(
        sql.render("current_embeddings.sql", current=view, embeddings=stack.table)
    ).result()
    return f"`{view}`"


@pytest.fixture(scope="module")
def tap(stack):
    """Our own subscription on the notification topic, to capture real messages."""
    sub = stack.cloud.subscription("tap")
    stack.cloud.subscriber.create_subscription(name=sub, topic=stack.cloud.notify_topic)
    return sub


def rows_for(stack, name, table=None):
    return stack.query(
        f"SELECT * FROM {table or stack.rows_sql} "
        f"WHERE bucket = '{stack.images.name}' AND name = '{name}'"
    )


def dead_for(stack, name):
    return stack.query(
        f"SELECT stage, reason, generation FROM {stack.dead_sql} "
        f"WHERE bucket = '{stack.images.name}' AND name = '{name}'"
    )


def assert_each_row_finds_its_vector(stack, rows):
    """Every row's shard exists and holds the row's own vector at its index."""
    prefix = f"gs://{stack.images.name}/"
    for r in rows:
        assert r["vector_uri"].startswith(prefix + "embeddings/shards/"), r["vector_uri"]
        shard = np.load(
            io.BytesIO(stack.images.blob(r["vector_uri"][len(prefix) :]).download_as_bytes())
        )
        np.testing.assert_array_equal(shard[r["vector_index"]], np.float32(r["embedding"]))


def test_same_notification_three_times_gives_one_current_row_and_its_vector(stack, current, tap):
    cloud = stack.cloud
    blob = stack.images.blob("redeliver/x.jpg")
    blob.upload_from_string(fixtures.jpeg(seed=51), content_type="image/jpeg")
    real = wait_until(
        lambda: [
            m
            for m in pull_all(cloud, tap, quiet_for=0.5, limit=5)
            if m.attributes.get("objectId") == "redeliver/x.jpg"
        ],
        timeout=30,
        what="the real notification",
    )[0]
    for _ in range(2):  # the bucket's delivery + 2 redeliveries
        cloud.publisher.publish(cloud.notify_topic, real.data, **dict(real.attributes)).result()
    # The emulator keeps rows with a repeated insert id: one row per delivery.
    raw = wait_until(
        lambda: (lambda r: r if len(r) >= 3 else None)(rows_for(stack, "redeliver/x.jpg")),
        timeout=120,
        what="a row per delivery",
        job=stack.job,
    )
    assert len({r["row_key"] for r in raw}) == 1  # same key every time
    assert len(rows_for(stack, "redeliver/x.jpg", current)) == 1
    # Each delivery's row names a shard holding its vector (a redelivery grouped with
    # other images writes its vector into another shard: a copy, never a lost row).
    assert_each_row_finds_its_vector(stack, raw)


def test_overwrite_adds_a_generation_and_the_view_shows_the_newest(stack, current):
    blob = stack.images.blob("over/x.jpg")
    blob.upload_from_string(fixtures.jpeg(seed=61), content_type="image/jpeg")
    first = blob.generation
    wait_until(lambda: rows_for(stack, "over/x.jpg"), timeout=120, what="gen 1", job=stack.job)
    blob.upload_from_string(fixtures.jpeg(seed=62), content_type="image/jpeg")
    second = blob.generation
    assert second != first
    embedded = lambda: [
        r for r in rows_for(stack, "over/x.jpg") if r["event_type"] == "OBJECT_FINALIZE"
    ]
    rows = wait_until(
        lambda: (lambda r: r if len(r) >= 2 else None)(embedded()),
        timeout=120,
        what="gen 2",
        job=stack.job,
    )
    assert {r["generation"] for r in rows} == {first, second}
    # The bucket also reports the replaced generation as deleted: a tombstone for it.
    assert [r["generation"] for r in rows_for(stack, "over/x.jpg", current)] == [second]


def test_delete_writes_a_tombstone_and_the_view_hides_the_object(stack, current):
    blob = stack.images.blob("del/x.jpg")
    blob.upload_from_string(fixtures.jpeg(seed=71), content_type="image/jpeg")
    wait_until(
        lambda: rows_for(stack, "del/x.jpg", current),
        timeout=120,
        what="the row before the delete",
        job=stack.job,
    )
    blob.delete()
    rows = wait_until(
        lambda: [r for r in rows_for(stack, "del/x.jpg") if r["event_type"] == "OBJECT_DELETE"],
        timeout=120,
        what="the tombstone",
        job=stack.job,
    )
    assert rows[0]["embedding"] == [] and rows[0]["generation"] == blob.generation
    assert rows_for(stack, "del/x.jpg", current) == []


def test_payload_format_none_fetches_the_object_metadata(stack):
    cloud = stack.cloud
    blob = stack.images.blob("none/x.png")
    # Upload first, then announce it the way a NONE-format notification config does.
    blob.upload_from_string(fixtures.png(seed=81), content_type="image/png")
    cloud.publisher.publish(
        cloud.notify_topic,
        b"",
        eventType="OBJECT_FINALIZE",
        bucketId=stack.images.name,
        objectId="none/x.png",
        objectGeneration=str(blob.generation),
        payloadFormat="NONE",
    ).result()
    rows = wait_until(
        lambda: [r for r in rows_for(stack, "none/x.png") if r["content_type"]],
        timeout=120,
        what="the row",
        job=stack.job,
    )
    assert rows[0]["size_bytes"] == blob.size and rows[0]["md5_hash"] == blob.md5_hash


def test_replaced_or_deleted_objects_are_dead_lettered_not_retried(stack):
    cloud = stack.cloud
    blob = stack.images.blob("sup/x.jpg")
    blob.upload_from_string(fixtures.jpeg(seed=91), content_type="image/jpeg")
    old = dict(blob._properties)
    blob.upload_from_string(fixtures.jpeg(seed=92), content_type="image/jpeg")
    gone = stack.images.blob("gone/x.jpg")
    gone.upload_from_string(fixtures.jpeg(seed=93), content_type="image/jpeg")
    gone_props = dict(gone._properties)
    gone.delete()
    for resource in (old, gone_props):  # late notifications for generations now gone
        data, attrs = notification_for(resource)
        attrs.pop("backfill")
        cloud.publisher.publish(cloud.notify_topic, data, **attrs).result()
    sup = wait_until(
        lambda: dead_for(stack, "sup/x.jpg"),
        timeout=120,
        what="the superseded dead letter",
        job=stack.job,
    )
    assert (sup[0]["stage"], sup[0]["reason"]) == ("load", "superseded")
    assert sup[0]["generation"] == int(old["generation"])
    dead = wait_until(
        lambda: dead_for(stack, "gone/x.jpg"),
        timeout=120,
        what="the object_gone dead letter",
        job=stack.job,
    )
    assert (dead[0]["stage"], dead[0]["reason"]) == ("load", "object_gone")
