"""BigQuery (its REST and its gRPC port) and Pub/Sub going away for 10 s mid-stream:
the job rides it out and every row arrives. The services sit behind TCP proxies that
the test cuts and restores (bqemulator and the Pub/Sub emulator keep their state in
memory, so really restarting them would also delete the tables and subscriptions that
real services keep)."""

import os
import time
from urllib.parse import urlparse

import pytest

import schemas
from tests import fixtures
from tests.integration.conftest import least_privilege, start_job, wait_until
from tests.integration.tcp_proxy import TcpProxy

# How long both services stay away: the length of the outage, not a wait for a condition.
OUTAGE_S = 10


@pytest.fixture
def job_behind_proxies(stack, tmp_path):
    cloud = stack.cloud
    bq_port = urlparse(os.environ["BIGQUERY_EMULATOR_HOST"]).port
    grpc_port = int(os.environ["BIGQUERY_EMULATOR_GRPC_HOST"].rsplit(":", 1)[1])
    ps_port = int(os.environ["PUBSUB_EMULATOR_HOST"].rsplit(":", 1)[1])
    bq, ps = TcpProxy(bq_port).start(), TcpProxy(ps_port).start()
    bq_grpc = TcpProxy(grpc_port).start()
    bucket = cloud.storage.create_bucket(f"outage-{cloud.run_id}")
    dataset = f"outage_{cloud.run_id}"
    cloud.bq.create_dataset(dataset)
    table = f"{cloud.project}.{dataset}.embeddings"
    from google.cloud import bigquery

    cloud.bq.create_table(
        bigquery.Table(
            table, schema=[bigquery.SchemaField.from_api_repr(f) for f in schemas.table_schema()]
        )
    )
    sub = cloud.subscription("outage")
    cloud.subscriber.create_subscription(
        name=sub, topic=cloud.notify_topic, ack_deadline_seconds=60
    )
    env = {
        "BIGQUERY_EMULATOR_HOST": f"http://127.0.0.1:{bq.port}",
        "BIGQUERY_EMULATOR_GRPC_HOST": f"127.0.0.1:{bq_grpc.port}",
        "PUBSUB_EMULATOR_HOST": f"127.0.0.1:{ps.port}",
    }
    job = start_job(
        [
            "--input_subscription",
            sub,
            "--output_table",
            table.replace(".", ":", 1),
            "--output_gcs",
            f"gs://{bucket.name}/embeddings/",
            "--weights",
            "random:0",
            "--local_endpoints",
            "--buckets",
            bucket.name,
        ],
        str(tmp_path / "job.log"),
        env=env,
    )
    yield bucket, table, job, (bq, bq_grpc), ps
    job.stop()
    for proxy in (bq, bq_grpc, ps):
        proxy.stop()


def test_rows_written_during_a_bigquery_and_pubsub_outage_all_arrive(stack, job_behind_proxies):
    bucket, table, job, bq, ps = job_behind_proxies
    count = lambda: stack.query(
        f"SELECT DISTINCT name FROM `{table}` WHERE event_type = 'OBJECT_FINALIZE'"
    )
    bucket.blob("before.jpg").upload_from_string(fixtures.jpeg(seed=1), content_type="image/jpeg")
    wait_until(lambda: len(count()) == 1, timeout=180, what="the first row", job=job)
    for proxy in (*bq, ps):
        proxy.stop()
    during = [f"during-{i}.jpg" for i in range(3)]
    for i, name in enumerate(during):
        bucket.blob(name).upload_from_string(fixtures.jpeg(seed=10 + i), content_type="image/jpeg")
    time.sleep(OUTAGE_S)
    assert job.poll() is None, job.log_tail()
    for proxy in (*bq, ps):
        proxy.start()
    bucket.blob("after.jpg").upload_from_string(fixtures.jpeg(seed=20), content_type="image/jpeg")
    names = wait_until(
        lambda: (lambda r: r if len(r) == 5 else None)(count()),
        timeout=240,
        what="every row after the outage",
        job=job,
    )
    assert sorted(r["name"] for r in names) == sorted(["before.jpg", "after.jpg", *during])


@pytest.mark.parametrize("method", ["storage_write_api", "insert_all"])
def test_a_permission_the_job_lacks_stalls_it_visibly_and_nothing_is_lost(stack, tmp_path, method):
    """A 403 / PERMISSION_DENIED on writing rows (a role the job's account lacks) is no
    row's fault: the job waits, says so in one line (not one per retry), counts it, and
    writes every row once the permission is granted. Nothing becomes a dead letter."""
    import grpc

    from tools.http_proxy import HttpProxy
    from tools.strict_bigquery import APPEND_ROWS, Stats, bigquery_error, grpc_proxy

    cloud = stack.cloud
    denied = {"on": True}
    message = "Permission bigquery.tables.updateData denied on table"

    def deny(path):
        if denied["on"] and path == APPEND_ROWS:
            return grpc.StatusCode.PERMISSION_DENIED, message
        return None

    def rule(request):
        if (
            denied["on"]
            and request.method == "POST"
            and request.path.split("?")[0].endswith("/insertAll")
        ):
            return bigquery_error(403, f"Access Denied: {message}", "accessDenied")
        return None

    proxy = HttpProxy(os.environ["BIGQUERY_EMULATOR_HOST"], rule, record=False).start()
    appends = grpc_proxy(os.environ["BIGQUERY_EMULATOR_GRPC_HOST"], Stats(), deny)
    grpc_port = appends.add_insecure_port("127.0.0.1:0")
    appends.start()
    tag = method.split("_")[0]
    bucket = cloud.storage.create_bucket(f"denied-{tag}-{cloud.run_id}")
    dataset = f"denied_{tag}_{cloud.run_id}"
    cloud.bq.create_dataset(dataset)
    table = f"{cloud.project}.{dataset}.embeddings"
    sub = cloud.subscription(f"denied-{tag}")
    cloud.subscriber.create_subscription(
        name=sub, topic=cloud.notify_topic, ack_deadline_seconds=60
    )
    # Behind the refusing proxies, the job's account as infra/ grants it (the
    # dataset's row writer role), so both write methods run under its roles.
    iam = least_privilege(
        cloud,
        "job",
        environ={
            **os.environ,
            "BIGQUERY_EMULATOR_HOST": proxy.url,
            "BIGQUERY_EMULATOR_GRPC_HOST": f"127.0.0.1:{grpc_port}",
        },
        images=bucket.name,
        dataset=dataset,
        subscription=sub,
    )
    job = start_job(
        [
            "--input_subscription",
            sub,
            "--output_table",
            table.replace(".", ":", 1),
            "--dead_letter_table",
            f"{cloud.project}:{dataset}.dead_letters",
            "--output_gcs",
            f"gs://{bucket.name}/embeddings/",
            "--weights",
            "random:0",
            "--local_endpoints",
            "--buckets",
            bucket.name,
            "--max_batch_duration_secs",
            "1",
            "--bigquery_write_method",
            method,
        ],
        str(tmp_path / "job.log"),
        env=iam.env,
    )
    try:
        for i in range(2):
            bucket.blob(f"{i}.jpg").upload_from_string(
                fixtures.jpeg(seed=60 + i), content_type="image/jpeg"
            )
        wait_until(
            lambda: "is waiting" in job.output(),
            timeout=240,
            what="the job's line about the refused inserts",
            job=job,
        )
        time.sleep(5)  # several retries go by: still one line
        waiting = [line for line in job.output().splitlines() if "is waiting" in line]
        assert len(waiting) == 1 and "bigquery.tables.updateData" in waiting[0], waiting
        assert job.poll() is None
        denied["on"] = False  # the role is granted
        rows = wait_until(
            lambda: (lambda r: r if len(r) == 2 else None)(
                stack.query(f"SELECT DISTINCT name FROM `{table}`")
            ),
            timeout=120,
            what="the rows once the permission is granted",
            job=job,
        )
        assert sorted(r["name"] for r in rows) == ["0.jpg", "1.jpg"]
        assert (
            stack.query(
                f"SELECT reason FROM `{cloud.project}.{dataset}.dead_letters` "
                f"WHERE bucket = '{bucket.name}'"
            )
            == []
        )
        assert [str(d) for d in iam.denied] == []
    finally:
        job.stop()
        iam.stop()
        proxy.stop()
        appends.stop(None)
