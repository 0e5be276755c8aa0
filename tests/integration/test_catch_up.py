"""The catch-up where the real services are strict: a backlog of hundreds of images,
deletions the job never heard of, and a Cloud Storage outage, one job restarted with
the same command between them.

BigQuery sits behind tools/strict_bigquery.py (tests/run.sh): a request over
its 10 MB limit is refused there as BigQuery refuses it. The job writes its vectors to a
bucket of its own that notifies the same topic as the images (fake-gcs-server sends every
bucket's notifications there): they are its own outputs, skipped, never dead letters.
"""

import concurrent.futures
import os
import time

import pytest

from analysis import sql
from tests import fixtures
from tests.integration.conftest import (
    least_privilege,
    start_job,
    strict_bigquery_stats,
    wait_until,
)
from tests.integration.tcp_proxy import TcpProxy
from tools.processes import cloud_job_args

BACKLOG = 320  # as 38 KB rows, about 12 MB: more than one request may hold
DELETED = 10
OUTAGE_S = 15  # how long Cloud Storage is away: longer than a read's retries last


@pytest.fixture(scope="module")
def backlog(cloud, stack, tmp_path_factory):
    rid = cloud.run_id
    bucket = cloud.storage.create_bucket(f"backlog-{rid}")
    vectors = cloud.storage.create_bucket(f"backlog-vec-{rid}")
    names = [f"old/{i:03d}.jpg" for i in range(BACKLOG)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(
            pool.map(
                lambda a: bucket.blob(a[1]).upload_from_string(
                    fixtures.jpeg(96, 64, seed=a[0]), content_type="image/jpeg"
                ),
                enumerate(names),
            )
        )
    # Not images: the catch-up applies the job's filters before it emits anything.
    for i in range(5):
        bucket.blob(f"old/notes-{i}.txt").upload_from_string(b"text", content_type="text/plain")
    time.sleep(2)  # the uploads' notifications are published before the job subscribes
    dataset = f"backlog_{rid}"
    cloud.bq.create_dataset(dataset)
    table = f"{cloud.project}:{dataset}.embeddings"
    dead_table = f"{cloud.project}:{dataset}.dead_letters"
    sub = cloud.subscription("backlog")
    cloud.subscriber.create_subscription(
        name=sub, topic=cloud.notify_topic, ack_deadline_seconds=60
    )
    logs = tmp_path_factory.mktemp("backlog")
    argv = [
        *cloud_job_args(sub, table, vectors.name, bucket.name, dead_table),
        "--catch_up_chunk",
        "250",
        # One shard for the whole backlog, as a busy key fills at scale: its rows
        # reach the BigQuery writer together, enough to fill requests to the cap,
        # however slowly this machine embeds them. A few later uploads go after 60 s.
        "--shard_keys",
        "1",
        "--vectors_per_shard",
        str(BACKLOG),
        "--shard_wait_secs",
        "900",
        "--shard_idle_secs",
        "60",
    ]
    state = {"job": None, "starts": 0, "iam": []}

    def start(env=None):
        """The job, as infra/'s job account (`env` names other services behind)."""
        state["starts"] += 1
        iam = least_privilege(
            cloud,
            "job",
            environ={**os.environ, **(env or {})},
            images=bucket.name,
            vectors=vectors.name,
            dataset=dataset,
            subscription=sub,
        )
        state["iam"].append(iam)
        state["job"] = start_job(argv, str(logs / f"job-{state['starts']}.log"), env=iam.env)
        return state["job"]

    def stop():
        state["job"].stop()

    current = sql.current_relation(table)

    def current_names() -> set:
        return {
            r["name"]
            for r in stack.query(f"SELECT name FROM {current} WHERE bucket = '{bucket.name}'")
        }

    def dead_letters() -> list[dict]:
        return stack.query(
            f"SELECT name, stage, reason, retryable, attempt FROM {sql.table_ref(dead_table)}"
        )

    yield dict(
        bucket=bucket,
        vectors=vectors,
        names=names,
        start=start,
        stop=stop,
        current_names=current_names,
        dead_letters=dead_letters,
        state=state,
        raw=lambda q: stack.query(q.format(rows=sql.table_ref(table))),
        sub=sub,
    )
    if state["job"] is not None:
        state["job"].stop()
    for iam in state["iam"]:
        iam.stop()


def test_a_backlog_gets_every_row_through_bigquerys_request_limit(backlog):
    b = backlog
    strict_bigquery_stats(mark=True)
    job = b["start"]()
    wait_until(
        lambda: len(b["current_names"]()) >= BACKLOG,
        timeout=900,
        what=f"rows for the {BACKLOG} images of the backlog",
        job=job,
    )
    assert b["current_names"]() == set(b["names"])
    after = strict_bigquery_stats()
    assert after["refused"] == 0, after
    # The rows went by the Storage Write API (the default), in appends filled up to the
    # byte cap, not cut short by a row count.
    assert after["insert_requests"] == 0 and after["append_rows"] >= BACKLOG, after
    assert 5_000_000 < after["max_append_bytes"] <= 10 * 1024 * 1024, after
    time.sleep(3)  # the vectors' notifications reach the job: skipped, not dead letters
    assert b["dead_letters"]() == []
    raw = b["raw"]("SELECT row_key, COUNT(*) AS n FROM {rows} GROUP BY row_key")
    assert len(raw) == BACKLOG and {r["n"] for r in raw} == {1}
    # The listing went down the pipeline in steps of 250 objects.
    assert (
        f"{BACKLOG} object generation(s) to embed, 0 deleted while the job could not "
        "see it (2 step(s))" in job.output()
    )


def test_deletions_the_job_never_heard_of_are_tombstoned_at_the_next_start(backlog, cloud):
    b = backlog
    b["stop"]()
    # The deletions' notifications cannot reach the job: its subscription goes away
    # while they are sent (a subscription created late, or retention expired).
    cloud.subscriber.delete_subscription(subscription=b["sub"])
    gone = b["names"][:DELETED]
    for name in gone:
        b["bucket"].blob(name).delete()
    time.sleep(2)
    cloud.subscriber.create_subscription(
        name=b["sub"], topic=cloud.notify_topic, ack_deadline_seconds=60
    )
    job = b["start"]()
    wait_until(
        lambda: not (set(gone) & b["current_names"]()),
        timeout=300,
        what="the deleted objects to leave the current view",
        job=job,
    )
    assert b["current_names"]() == set(b["names"][DELETED:])
    tombstones = b["raw"]("SELECT name FROM {rows} WHERE event_type = 'OBJECT_DELETE'")
    assert sorted(r["name"] for r in tombstones) == sorted(gone)


def test_after_a_storage_outage_the_next_catch_up_embeds_every_image(backlog):
    b = backlog
    b["stop"]()
    port = int(os.environ["STORAGE_EMULATOR_HOST"].rsplit(":", 1)[1])
    storage = TcpProxy(port).start()
    try:
        job = b["start"]({"STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{storage.port}"})
        wait_until(
            lambda: "catch-up gs://" in job.output(),
            timeout=300,
            what="the start-up catch-up",
            job=job,
        )
        storage.stop()  # Cloud Storage goes away with uploads in flight
        during = [f"during/{i}.jpg" for i in range(6)]
        for i, name in enumerate(during):
            b["bucket"].blob(name).upload_from_string(
                fixtures.jpeg(96, 64, seed=500 + i), content_type="image/jpeg"
            )
        time.sleep(OUTAGE_S)
        storage.start()
        # Reads that outlived their retries became retryable dead letters.
        transient = wait_until(
            lambda: [d for d in b["dead_letters"]() if d["name"] in during] or None,
            timeout=120,
            what="dead letters of the reads the outage failed",
            job=job,
        )
        assert all(d["retryable"] and d["attempt"] == 0 for d in transient), transient
        b["stop"]()
        storage.stop()  # the service is back: the next start talks to it directly
        job = b["start"]()
        wait_until(
            lambda: set(during) <= b["current_names"](),
            timeout=300,
            what="rows for every image uploaded during the outage",
            job=job,
        )
    finally:
        storage.stop()


def test_every_catch_up_ran_within_the_roles_infra_grants_the_job(backlog):
    """The starts above (listing, the query of what the tables hold, reads, rows by the
    Storage Write API, tombstones) went through proxies answering 403 as the job's roles
    in infra/ would: none was refused."""
    assert backlog["state"]["iam"], "no job ran"
    assert [str(d) for iam in backlog["state"]["iam"] for d in iam.denied] == []
