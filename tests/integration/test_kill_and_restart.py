"""SIGKILL the streaming job mid-stream, start it again with the same command: every
uploaded image ends with exactly one current row, exactly one raw row per row key and
its own vector, and every deleted image with none.

Beam's local runner acknowledges Pub/Sub messages when it pulls them, so the images in
flight at the kill never come back from Pub/Sub; the restarted job finds them by its
start-up catch-up (the bucket listed against the tables). The dataset is then deleted
and re-created under the running job: its tables come back and no valid row becomes a
dead letter.
"""

import concurrent.futures
import io
import os
import re
import signal
import time

import numpy as np
import pytest

from analysis import sql
from tests import fixtures
from tests.integration.conftest import start_job, strict_bigquery_stats, wait_until
from tools.processes import cloud_job_args

BURST = 240  # as rows, more than one insert request holds: the requests hit the byte cap


@pytest.fixture(scope="module")
def killable(stack, tmp_path_factory):
    cloud = stack.cloud
    rid = cloud.run_id
    bucket = cloud.storage.create_bucket(f"sigkill-{rid}")
    vectors = cloud.storage.create_bucket(f"sigkill-vec-{rid}")
    dataset = f"sigkill_{rid}"
    cloud.bq.create_dataset(dataset)
    table = f"{cloud.project}:{dataset}.embeddings"
    dead_table = f"{cloud.project}:{dataset}.dead_letters"
    sub = cloud.subscription("sigkill")
    cloud.subscriber.create_subscription(
        name=sub, topic=cloud.notify_topic, ack_deadline_seconds=10
    )
    argv = [
        *cloud_job_args(sub, table, vectors.name, bucket.name, dead_table),
    ]
    logs = tmp_path_factory.mktemp("kill")
    state = {"job": None, "starts": 0, "uploaded": {}, "deleted": set()}

    def start():
        state["starts"] += 1
        state["job"] = start_job(argv, str(logs / f"job-{state['starts']}.log"))
        return state["job"]

    def kill():
        os.killpg(state["job"].pid, signal.SIGKILL)
        state["job"].stop()

    def upload(name: str, seed: int, size=(320, 240)) -> None:
        blob = bucket.blob(name)
        blob.upload_from_string(fixtures.jpeg(*size, seed=seed), content_type="image/jpeg")
        state["uploaded"][name] = blob.generation

    def delete(name: str) -> None:
        bucket.blob(name).delete()
        state["uploaded"].pop(name)
        state["deleted"].add(name)

    def while_unheard(action) -> None:
        """Runs `action` while the job's subscription is detached: its notifications
        never reach the job (as with a subscription created late)."""
        cloud.subscriber.delete_subscription(subscription=sub)
        action()
        time.sleep(2)
        cloud.subscriber.create_subscription(
            name=sub, topic=cloud.notify_topic, ack_deadline_seconds=10
        )

    current = sql.current_relation(table)

    def current_rows() -> list[dict]:
        return stack.query(
            f"SELECT name, generation, source FROM {current} WHERE bucket = '{bucket.name}'"
        )

    def all_current(job) -> list[dict]:
        want = dict(state["uploaded"])
        return wait_until(
            lambda: (
                lambda r: (
                    r
                    if {x["name"] for x in r} >= set(want)
                    and not {x["name"] for x in r} & state["deleted"]
                    else None
                )
            )(current_rows()),
            timeout=600,
            what=f"current rows for all {len(want)} uploads",
            job=job,
        )

    def raw_rows() -> list[dict]:
        return stack.query(
            f"SELECT name, generation, row_key, event_type, vector_uri, "
            f"vector_index, "
            f"embedding FROM {sql.table_ref(table)} "
            f"WHERE bucket = '{bucket.name}'"
        )

    ns = dict(
        start=start,
        kill=kill,
        upload=upload,
        all_current=all_current,
        state=state,
        table=table,
        dead_sql=sql.table_ref(dead_table),
        bucket=bucket,
        cloud=cloud,
        query=stack.query,
        delete=delete,
        while_unheard=while_unheard,
        raw_rows=raw_rows,
        vectors=vectors,
    )
    start()
    upload("warmup.jpg", 1)
    all_current(state["job"])
    yield ns
    if state["job"] is not None:
        state["job"].stop()


def assert_exactly_one_current_row_each(rows: list[dict], uploaded: dict[str, int]):
    by_name: dict[str, list] = {}
    for r in rows:
        by_name.setdefault(r["name"], []).append(r["generation"])
    assert sorted(by_name) == sorted(uploaded)
    for name, generations in by_name.items():
        assert generations == [uploaded[name]], name


def assert_one_raw_row_and_vector_each(k, names) -> None:
    """Below the view: one raw row per uploaded generation's row key (the catch-up and
    the notifications did not both embed it), a tombstone for each deleted one, and
    each row's shard holding the row's own vector at its index."""
    from streaming.records import row_key

    uploaded, bucket = k["state"]["uploaded"], k["bucket"].name
    raw = [r for r in k["raw_rows"]() if r["name"] in names]
    finals = {}
    for r in raw:
        if r["event_type"] == "OBJECT_FINALIZE":
            finals.setdefault(r["row_key"], []).append(r)
    for name in names & set(uploaded):
        key = row_key(bucket, name, uploaded[name])
        assert len(finals.get(key, [])) == 1, (name, len(finals.get(key, [])))
        (r,) = finals[key]
        blob_name = r["vector_uri"][len(f"gs://{k['vectors'].name}/") :]
        shard = np.load(io.BytesIO(k["vectors"].blob(blob_name).download_as_bytes()))
        stored = shard[r["vector_index"]]
        np.testing.assert_allclose(stored, np.asarray(r["embedding"], np.float32), rtol=1e-6)
    tombstoned = {r["name"] for r in raw if r["event_type"] == "OBJECT_DELETE"}
    assert tombstoned >= names & k["state"]["deleted"]


def caught_up(job) -> tuple[int, int]:
    """(generations embedded, deletions tombstoned) by the restarted job's catch-up."""
    found = re.search(r"(\d+) object generation\(s\) to embed, (\d+) deleted", job.output())
    assert found, job.log_tail()
    return int(found.group(1)), int(found.group(2))


def test_steady_uploads_with_a_sigkill_mid_stream(killable):
    k = killable
    for i in range(12):
        k["upload"](f"steady/{i:02d}.jpg", 100 + i)
        if i == 7:
            k["kill"]()  # 0.5-3.5 s after the uploads before it: some in flight
        time.sleep(0.5)
    # While it is down, with its subscription detached (what was waiting there is
    # dropped too): two deletions and an upload whose notifications never reach it.
    k["while_unheard"](
        lambda: (
            k["delete"]("steady/00.jpg"),
            k["delete"]("steady/01.jpg"),
            k["upload"]("steady/unheard.jpg", 199),
        )
    )
    job = k["start"]()
    rows = k["all_current"](job)
    assert_exactly_one_current_row_each(rows, k["state"]["uploaded"])
    found, gone = caught_up(job)
    assert found >= 1 and gone >= 1, (found, gone)
    assert_one_raw_row_and_vector_each(
        k, {f"steady/{i:02d}.jpg" for i in range(12)} | {"steady/unheard.jpg"}
    )


def test_a_burst_then_a_sigkill_within_a_second_and_a_half(killable):
    k = killable
    names = [f"burst/{i:03d}.jpg" for i in range(BURST)]
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        list(
            pool.map(
                lambda a: k["upload"](*a, size=(96, 64)),
                [(n, 200 + i) for i, n in enumerate(names)],
            )
        )
    time.sleep(0.8)
    k["kill"]()
    strict_bigquery_stats(mark=True)
    job = k["start"]()
    rows = k["all_current"](job)
    assert_exactly_one_current_row_each(rows, k["state"]["uploaded"])
    assert (
        k["query"](f"SELECT name, reason FROM {k['dead_sql']} WHERE STARTS_WITH(name, 'burst/')")
        == []
    )
    assert caught_up(job)[0] >= 1
    assert_one_raw_row_and_vector_each(k, set(names))
    after = strict_bigquery_stats()
    assert after["refused"] == 0, after


def test_a_dataset_recreated_under_the_running_job_gets_its_tables_back(killable):
    k = killable
    job = k["state"]["job"]
    dataset = k["table"].split(":")[1].split(".")[0]
    k["cloud"].bq.delete_dataset(dataset, delete_contents=True)
    k["cloud"].bq.create_dataset(dataset)
    k["state"]["uploaded"].clear()
    for i in range(3):
        k["upload"](f"after-delete/{i}.jpg", 300 + i)
    rows = k["all_current"](job)
    # Rows written after the delete may also include redeliveries of earlier images.
    assert_exactly_one_current_row_each(
        [r for r in rows if r["name"].startswith("after-delete/")], k["state"]["uploaded"]
    )
    table = k["cloud"].bq.get_table(k["table"].replace(":", "."))
    assert table.time_partitioning.field == "processing_time"
    assert table.clustering_fields == ["bucket", "model_fingerprint", "name"]
    assert k["query"](f"SELECT name FROM {k['dead_sql']} WHERE reason = 'bigquery_rejected'") == []
    assert job.poll() is None
