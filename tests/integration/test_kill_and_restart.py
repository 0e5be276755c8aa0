"""SIGKILL the streaming job mid-stream, start it again with the same command: every
uploaded image ends with exactly one current row.

Beam's local runner acknowledges Pub/Sub messages when it pulls them, so the images in
flight at the kill never come back from Pub/Sub; the restarted job finds them by its
start-up catch-up (the bucket listed against the tables). The dataset is then deleted
and re-created under the running job: its tables come back and no valid row becomes a
dead letter.
"""
import concurrent.futures
import os
import signal
import time

import pytest

from analysis import sql
from tests import fixtures
from tests.integration.conftest import start_job, wait_until


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
    cloud.subscriber.create_subscription(name=sub, topic=cloud.notify_topic,
                                         ack_deadline_seconds=10)
    argv = ["--input_subscription", sub, "--output_table", table,
            "--dead_letter_table", dead_table, "--output_gcs", f"gs://{vectors.name}/",
            "--buckets", bucket.name, "--weights", "random:0", "--local_endpoints",
            "--max_batch_duration_secs", "1"]
    logs = tmp_path_factory.mktemp("kill")
    state = {"job": None, "starts": 0, "uploaded": {}}

    def start():
        state["starts"] += 1
        state["job"] = start_job(argv, str(logs / f"job-{state['starts']}.log"))
        return state["job"]

    def kill():
        os.killpg(state["job"].pid, signal.SIGKILL)
        state["job"].stop()

    def upload(name: str, seed: int) -> None:
        blob = bucket.blob(name)
        blob.upload_from_string(fixtures.jpeg(320, 240, seed=seed), content_type="image/jpeg")
        state["uploaded"][name] = blob.generation

    current = sql.current_relation(table)

    def current_rows() -> list[dict]:
        return stack.query(f"SELECT name, generation, source FROM {current} "
                           f"WHERE bucket = '{bucket.name}'")

    def all_current(job) -> list[dict]:
        want = dict(state["uploaded"])
        return wait_until(
            lambda: (lambda r: r if {x["name"] for x in r} >= set(want) else None)(
                current_rows()),
            timeout=300, what=f"current rows for all {len(want)} uploads", job=job)

    ns = dict(start=start, kill=kill, upload=upload, all_current=all_current, state=state,
              table=table, dead_sql=sql.table_ref(dead_table), bucket=bucket, cloud=cloud,
              query=stack.query)
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


def test_steady_uploads_with_a_sigkill_mid_stream(killable):
    k = killable
    for i in range(12):
        k["upload"](f"steady/{i:02d}.jpg", 100 + i)
        if i == 7:
            k["kill"]()  # 0.5-3.5 s after the uploads before it: some in flight
        time.sleep(0.5)
    job = k["start"]()
    rows = k["all_current"](job)
    assert_exactly_one_current_row_each(rows, k["state"]["uploaded"])


def test_a_burst_then_a_sigkill_within_a_second_and_a_half(killable):
    k = killable
    names = [f"burst/{i:02d}.jpg" for i in range(10)]
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        list(pool.map(lambda a: k["upload"](*a), [(n, 200 + i) for i, n in enumerate(names)]))
    time.sleep(0.8)
    k["kill"]()
    job = k["start"]()
    rows = k["all_current"](job)
    assert_exactly_one_current_row_each(rows, k["state"]["uploaded"])
    assert k["query"](f"SELECT name, reason FROM {k['dead_sql']} "
                      "WHERE STARTS_WITH(name, 'burst/')") == []


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
        [r for r in rows if r["name"].startswith("after-delete/")], k["state"]["uploaded"])
    table = k["cloud"].bq.get_table(k["table"].replace(":", "."))
    assert table.time_partitioning.field == "processing_time"
    assert table.clustering_fields == ["bucket", "model_fingerprint", "name"]
    assert k["query"](f"SELECT name FROM {k['dead_sql']} "
                      "WHERE reason = 'bigquery_rejected'") == []
    assert job.poll() is None
