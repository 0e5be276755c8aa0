"""embed-backfill against the emulators: the same job embeds what was already there."""

import collections
import json
import os
import signal
import subprocess
import sys

import pytest

from analysis import sql
from publisher import backfill
from streaming.sources.notifications import parse_notification
from tests.integration.conftest import pull_all
from tools.processes import ROOT, Child, python_module, run, wait_until


def run_backfill(*argv):
    args = backfill.parse_args([*argv, "--local-endpoints", "--no-progress"])
    return backfill.run(args)


@pytest.fixture(scope="module")
def probe(cloud):
    """A topic + subscription of our own, to see exactly what gets published."""
    topic, sub = cloud.topic("probe"), cloud.subscription("probe")
    cloud.publisher.create_topic(name=topic)
    cloud.subscriber.create_subscription(name=sub, topic=topic)
    return topic, sub


def test_dry_run_publishes_nothing(stack, probe):
    topic, sub = probe
    counts = run_backfill(f"gs://{stack.old.name}", "--topic", topic, "--dry-run")
    assert counts["would_publish"] == len(stack.old_names) and counts["published"] == 0
    assert pull_all(stack.cloud, sub, quiet_for=1.5) == []


def test_backfill_messages_have_the_bucket_notification_format(stack, probe):
    cloud = stack.cloud
    topic, sub = probe
    real_sub = cloud.subscription("real")
    cloud.subscriber.create_subscription(name=real_sub, topic=cloud.notify_topic)
    blob = stack.images.blob("format/check.jpg")
    from tests import fixtures

    blob.upload_from_string(fixtures.jpeg(seed=3), content_type="image/jpeg")
    real = wait_until(
        lambda: [
            m
            for m in pull_all(cloud, real_sub, quiet_for=0.5, limit=5)
            if m.attributes.get("objectId") == "format/check.jpg"
        ],
        timeout=30,
        what="the real notification",
    )[0]
    run_backfill(f"gs://{stack.images.name}/format/", "--topic", topic)
    mine = [m for m in pull_all(cloud, sub) if m.attributes.get("objectId") == "format/check.jpg"]
    assert len(mine) == 1
    assert set(real.attributes) <= set(mine[0].attributes)
    assert mine[0].attributes["backfill"] == "true"
    for key in ("eventType", "bucketId", "objectId", "objectGeneration", "payloadFormat"):
        assert mine[0].attributes[key] == real.attributes[key]
    a = parse_notification(real.data, dict(real.attributes))
    b = parse_notification(mine[0].data, dict(mine[0].attributes))
    for field in (
        "bucket",
        "name",
        "generation",
        "content_type",
        "size",
        "md5_hash",
        "crc32c",
        "key",
    ):
        assert getattr(a, field) == getattr(b, field), field
    real_data, my_data = json.loads(real.data), json.loads(mine[0].data)
    assert set(real_data) <= set(my_data)


def test_backfill_embeds_existing_objects_and_skip_existing_skips_them(stack):
    cloud = stack.cloud
    counts = run_backfill(f"gs://{stack.old.name}", "--topic", cloud.notify_topic)
    assert counts["published"] == len(stack.old_names) and counts["failed"] == 0
    rows = wait_until(
        lambda: (lambda r: r if len(r) >= len(stack.old_names) else None)(
            stack.query(
                f"SELECT name, source, generation FROM {stack.rows_sql} "
                f"WHERE bucket = '{stack.old.name}'"
            )
        ),
        timeout=180,
        what="rows for the backfilled objects",
        job=stack.job,
    )
    assert sorted(r["name"] for r in rows) == sorted(stack.old_names)
    assert {r["source"] for r in rows} == {"backfill"}
    again = run_backfill(
        f"gs://{stack.old.name}",
        "--topic",
        cloud.notify_topic,
        "--skip-existing",
        "--table",
        stack.table,
    )
    assert again["skipped_existing"] == len(stack.old_names) and again["published"] == 0
    # A re-run without --skip-existing re-embeds: same row keys, each row's vector in the
    # shard it names, and the current view still has one row per object.
    rerun = run_backfill(f"gs://{stack.old.name}", "--topic", cloud.notify_topic)
    assert rerun["published"] == len(stack.old_names)
    view = f"{cloud.project}.{stack.dataset}.current_backfill"
    cloud.bq.query(
        sql.render("current_embeddings.sql", current=view, embeddings=stack.table)
    ).result()
    # The re-run's rows are in (the emulator keeps rows with a repeated insert id).
    wait_until(
        lambda: (
            len(stack.query(f"SELECT name FROM {stack.rows_sql} WHERE bucket = '{stack.old.name}'"))
            >= 2 * len(stack.old_names)
        ),
        timeout=180,
        what="rows for the re-run",
        job=stack.job,
    )
    keys = stack.query(
        f"SELECT DISTINCT row_key FROM {stack.rows_sql} WHERE bucket = '{stack.old.name}'"
    )
    assert len(keys) == len(stack.old_names)
    current = stack.query(f"SELECT name FROM `{view}` WHERE bucket = '{stack.old.name}'")
    assert sorted(r["name"] for r in current) == sorted(stack.old_names)
    placed = stack.query(
        f"SELECT vector_uri, vector_index FROM {stack.rows_sql} WHERE bucket = '{stack.old.name}'"
    )
    shards = {
        f"gs://{stack.images.name}/{b.name}"
        for b in stack.images.list_blobs(prefix="embeddings/shards/")
    }
    assert placed and all(
        r["vector_uri"] in shards and r["vector_index"] is not None for r in placed
    ), placed


@pytest.mark.parametrize("how", ["interrupt", "kill"])
def test_stopped_backfill_resumes_and_covers_every_object(cloud, tmp_path, how):
    """Ctrl-C saves the checkpoint on the way out (exit 130); a kill leaves the last
    periodic one. Either way the resumed run covers every object, re-publishing at most
    what was in flight (plus, after a kill, half a second of publishing)."""
    bucket = cloud.storage.create_bucket(f"{how}-{cloud.run_id}")
    names = [f"obj-{i:04d}.bin" for i in range(120)]
    for name in names:  # not images: the streaming job skips them by type
        bucket.blob(name).upload_from_string(b"x", content_type="application/x-test")
    topic, sub = cloud.topic(how), cloud.subscription(how)
    cloud.publisher.create_topic(name=topic)
    cloud.subscriber.create_subscription(name=sub, topic=topic)
    resume = str(tmp_path / "resume.json")
    argv = python_module(
        "publisher.backfill",
        f"gs://{bucket.name}",
        "--topic",
        topic,
        "--content-type",
        "",
        "--extensions",
        "",
        "--rate",
        "25",
        "--max-in-flight",
        "10",
        "--resume",
        resume,
        "--local-endpoints",
        "--no-progress",
    )
    checkpoint = lambda: os.path.exists(resume) and json.load(open(resume)).get("after")
    with Child(argv) as first:
        reached = wait_until(checkpoint, timeout=60, what="a first checkpoint", job=first)
        if how == "interrupt":
            first.send_signal(signal.SIGINT)
            assert first.wait(60) == 130, first.log_tail()
            assert "interrupted" in first.output()
        else:  # killed right after a later periodic checkpoint
            wait_until(
                lambda: checkpoint() != reached,
                timeout=60,
                interval=0.05,
                what="a second checkpoint",
                job=first,
            )
            first.send_signal(signal.SIGKILL)
            first.wait(60)
    assert json.load(open(resume))["after"] < names[-1]
    code, output = run(argv, timeout=120)
    assert code == 0, output[-2000:]
    got = collections.Counter(m.attributes["objectId"] for m in pull_all(cloud, sub))
    assert set(got) == set(names)
    assert sum(n - 1 for n in got.values()) <= (10 if how == "interrupt" else 10 + 25)


def test_a_dry_run_never_moves_the_resume_checkpoint(stack, probe, tmp_path):
    topic, sub = probe
    resume = str(tmp_path / "resume.json")
    source = f"gs://{stack.old.name}"
    dry = run_backfill(source, "--topic", topic, "--dry-run", "--resume", resume)
    assert dry["would_publish"] == len(stack.old_names)
    assert not os.path.exists(resume)
    real = run_backfill(source, "--topic", topic, "--resume", resume)
    assert real["published"] == len(stack.old_names)
    got = sorted(m.attributes["objectId"] for m in pull_all(stack.cloud, sub))
    assert got == sorted(stack.old_names)
    again = run_backfill(source, "--topic", topic, "--dry-run", "--resume", resume)
    assert again["would_publish"] == 0  # a dry run still reads the checkpoint


@pytest.fixture(scope="module")
def reconciled(cloud):
    """A bucket whose objects are in every state the reconciliation tells apart, and
    tables that say so: rows of two model fingerprints, a final dead letter, retryable
    dead letters (one try, and all tries used up), a row for an older generation only
    (that generation is gone: a tombstone is due), and nothing at all."""
    import schemas
    from streaming.records import row_key
    from streaming.sinks.bigquery import make_table

    bucket = cloud.storage.create_bucket(f"recon-{cloud.run_id}")
    gens = {}
    for name in (
        "new-fp.jpg",
        "old-fp.jpg",
        "dead.jpg",
        "nothing.jpg",
        "older-gen.jpg",
        "transient.jpg",
        "used-up.jpg",
    ):
        blob = bucket.blob(name)
        blob.upload_from_string(b"x", content_type="image/jpeg")
        gens[name] = blob.generation
    dataset = f"recon_{cloud.run_id}"
    cloud.bq.create_dataset(dataset)
    table, dead = f"{cloud.project}.{dataset}.embeddings", f"{cloud.project}.{dataset}.dead"
    cloud.bq.create_table(make_table(table, schemas.EMBEDDINGS))
    cloud.bq.create_table(make_table(dead, schemas.DEAD_LETTERS))
    now = "2026-01-01T00:00:00Z"

    def row(name, generation, fingerprint):
        return {
            "row_key": row_key(bucket.name, name, generation),
            "bucket": bucket.name,
            "name": name,
            "generation": generation,
            "event_type": "OBJECT_FINALIZE",
            "source": "notification",
            "embedding": [0.5],
            "model_fingerprint": fingerprint,
            "processing_time": now,
        }

    assert (
        cloud.bq.insert_rows_json(
            table,
            [
                row("new-fp.jpg", gens["new-fp.jpg"], "NEW"),
                row("old-fp.jpg", gens["old-fp.jpg"], "OLD"),
                row("older-gen.jpg", gens["older-gen.jpg"] - 1, "NEW"),
            ],
            retry=None,
        )
        == []
    )

    def dead_letter(name, reason, attempt, retryable):
        return {
            "row_key": f"{name}#{attempt}",
            "bucket": bucket.name,
            "name": name,
            "generation": gens[name],
            "stage": "load",
            "reason": reason,
            "processing_time": now,
            "retryable": retryable,
            "attempt": attempt,
        }

    assert (
        cloud.bq.insert_rows_json(
            dead,
            [
                dead_letter("dead.jpg", "not_an_image", 0, False),
                dead_letter("transient.jpg", "read_error", 0, True),
                *(dead_letter("used-up.jpg", "read_error", a, True) for a in range(3)),
            ],
            retry=None,
        )
        == []
    )
    topic, sub = cloud.topic("recon"), cloud.subscription("recon")
    cloud.publisher.create_topic(name=topic)
    cloud.subscriber.create_subscription(name=sub, topic=topic)

    def published(*extra) -> list[str]:
        """The messages as `name`, `name#attempt` (a retry) or `name (deleted)`."""
        counts = run_backfill(
            f"gs://{bucket.name}",
            "--topic",
            topic,
            "--skip-existing",
            "--table",
            table.replace(".", ":", 1),
            *extra,
        )
        messages = pull_all(cloud, sub)
        names = sorted(
            m.attributes["objectId"]
            + (f"#{m.attributes['attempt']}" if "attempt" in m.attributes else "")
            + (" (deleted)" if m.attributes["eventType"] == "OBJECT_DELETE" else "")
            for m in messages
        )
        assert counts["published"] == len(names)
        finalized = [m for m in messages if m.attributes["eventType"] == "OBJECT_FINALIZE"]
        assert counts["skipped_existing"] == len(gens) - len(finalized)
        return names

    return published, dead.replace(".", ":", 1)


def test_skip_existing_publishes_only_generations_without_a_row(reconciled):
    published, _ = reconciled
    assert published() == [
        "dead.jpg",
        "nothing.jpg",
        "older-gen.jpg",
        "older-gen.jpg (deleted)",
        "transient.jpg",
        "used-up.jpg",
    ]


def test_skip_existing_also_skips_dead_letters_unless_asked_to_retry(reconciled):
    published, dead = reconciled
    # A retryable dead letter is published again, as its next attempt; one whose
    # attempts are used up, and a final one, are not.
    assert published("--dead-letter-table", dead) == [
        "nothing.jpg",
        "older-gen.jpg",
        "older-gen.jpg (deleted)",
        "transient.jpg#1",
    ]
    assert published("--dead-letter-table", dead, "--retry-dead-letters") == [
        "dead.jpg#1",
        "nothing.jpg",
        "older-gen.jpg",
        "older-gen.jpg (deleted)",
        "transient.jpg#1",
        "used-up.jpg#3",
    ]
    # A dead-letter table not created yet holds nothing; the rows still count.
    missing = dead.rsplit(".", 1)[0] + ".not_created_yet"
    assert published("--dead-letter-table", missing) == [
        "dead.jpg",
        "nothing.jpg",
        "older-gen.jpg",
        "older-gen.jpg (deleted)",
        "transient.jpg",
        "used-up.jpg",
    ]


def test_a_new_fingerprint_re_embeds_objects_whose_row_has_an_older_one(reconciled):
    published, dead = reconciled
    assert published("--dead-letter-table", dead, "--fingerprint", "NEW") == [
        "nothing.jpg",
        "old-fp.jpg",
        "older-gen.jpg",
        "older-gen.jpg (deleted)",
        "transient.jpg#1",
    ]


def backfill_cli(*argv, progress=False):
    extra = [] if progress else ["--no-progress"]
    return subprocess.run(
        [sys.executable, "-m", "publisher.backfill", *argv, "--local-endpoints", *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_a_topic_that_does_not_exist_stops_the_backfill_in_one_line(cloud):
    bucket = cloud.storage.create_bucket(f"notopic-{cloud.run_id}")  # empty: no notifications
    missing = cloud.topic("does-not-exist")
    proc = backfill_cli(f"gs://{bucket.name}", "--topic", missing)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"embed-backfill: error: --topic {missing}: topic not found"
    assert proc.stdout == ""  # nothing listed, nothing published


def test_a_bucket_that_does_not_exist_stops_the_backfill_in_one_line(cloud, probe):
    topic, _ = probe
    proc = backfill_cli(f"gs://no-such-bucket-{cloud.run_id}", "--topic", topic)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"embed-backfill: error: bucket gs://no-such-bucket-{cloud.run_id} not found"
    )


def test_the_progress_bar_ends_on_the_summarys_counts(stack, probe):
    topic, sub = probe
    proc = backfill_cli(f"gs://{stack.old.name}", "--topic", topic, progress=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = dict(kv.split("=") for kv in proc.stdout.strip().split(": ")[-1].split())
    final_bar = proc.stderr.replace("\r", "\n").strip().splitlines()[-1]
    assert f"{summary['listed']}/" in final_bar or f" {summary['listed']} " in final_bar
    assert f"published={summary['published']}" in final_bar
    assert f"failed={summary['failed']}" in final_bar
    assert summary["published"] == str(len(stack.old_names))
    pull_all(stack.cloud, sub, quiet_for=1.0)
