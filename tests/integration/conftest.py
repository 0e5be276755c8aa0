"""The local cloud: real Pub/Sub emulator, fake-gcs-server (sending real storage
notifications) and bqemulator, started by tests/run.sh; one streaming job per session."""

from __future__ import annotations

import http.server
import json
import os
import threading
import time
import types
import urllib.request
import uuid

import pytest

from streaming.support import clients
from tools.iam import LeastPrivilege
from tools.processes import Child, python_module, wait_until

# infra/'s resources, by the names the tests give them.
INFRA_NAMES = {
    "images": "var.images_bucket",
    "vectors": "google_storage_bucket.vectors",
    "dataflow": "google_storage_bucket.dataflow",
    "dataset": "google_bigquery_dataset.images",
    "subscription": "google_pubsub_subscription.embed",
    "topic": "google_pubsub_topic.notifications",
    "embedder_account": "google_service_account.embedder",
}


def pytest_collection_modifyitems(items):
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def cloud():
    missing = [v for v in clients.ENV_VARS if not os.environ.get(v)]
    if missing:
        pytest.skip("emulators not configured (" + ", ".join(missing) + "); run tests/run.sh")
    try:
        strict_bigquery_stats()
    except OSError as e:
        pytest.fail(
            f"BIGQUERY_EMULATOR_HOST is not the strict BigQuery proxy ({e}); "
            "run the tests with tests/run.sh"
        )
    clients.use_local_endpoints()
    from google.cloud import pubsub_v1

    project = clients.project_from_env()
    ns = types.SimpleNamespace(
        project=project,
        run_id=uuid.uuid4().hex[:8],
        notify_topic=(
            f"projects/{project}/topics/{os.environ.get('EMU_NOTIFY_TOPIC', 'gcs-notifications')}"
        ),
        storage=clients.storage_client(True),
        bq=clients.bigquery_client(True),
        publisher=pubsub_v1.PublisherClient(),
        subscriber=pubsub_v1.SubscriberClient(),
    )
    ns.topic = lambda name: f"projects/{project}/topics/{name}-{ns.run_id}"
    ns.subscription = lambda name: f"projects/{project}/subscriptions/{name}-{ns.run_id}"
    return ns


def strict_bigquery_stats(mark: bool = False) -> dict:
    """What the strict BigQuery proxy (tools/strict_bigquery.py) has seen
    since it started or since the last mark: insert requests, the largest in bytes and
    rows, and how many it refused. `mark=True` starts a new count."""
    from tools.strict_bigquery import MARK_PATH, STATS_PATH

    url = os.environ["BIGQUERY_EMULATOR_HOST"].rstrip("/") + (MARK_PATH if mark else STATS_PATH)
    with urllib.request.urlopen(url, data=b"" if mark else None, timeout=10) as answer:
        return json.loads(answer.read())


def pull_all(cloud, subscription: str, quiet_for: float = 2.0, limit: float = 60.0) -> list:
    """Pulls and acks until the subscription has been empty for `quiet_for` seconds."""
    messages, last = [], time.monotonic()
    deadline = time.monotonic() + limit
    while time.monotonic() - last < quiet_for and time.monotonic() < deadline:
        try:
            resp = cloud.subscriber.pull(
                subscription=subscription, max_messages=500, timeout=5, retry=None
            )
        except Exception:  # noqa: BLE001 - an empty pull may time out on some emulators
            resp = None
        received = list(resp.received_messages) if resp else []
        if received:
            messages.extend(m.message for m in received)
            cloud.subscriber.acknowledge(
                subscription=subscription, ack_ids=[m.ack_id for m in received]
            )
            last = time.monotonic()
        else:
            time.sleep(0.2)
    return messages


def least_privilege(cloud, identity: str, environ=None, **resources: str) -> LeastPrivilege:
    """Started proxies that refuse what infra/ does not grant `identity` (job, backfill,
    deployer, analyst) on these resources: images=, vectors=, dataflow= (bucket names),
    dataset= (its id), subscription=, topic= (full names); `images_prefix=`. `environ`
    names the services behind them (default: this process's emulators)."""
    bindings = {}
    for key, value in resources.items():
        if key == "images_prefix":
            bindings["var.images_prefix"] = value
        elif key in ("images", "vectors", "dataflow"):
            bindings[INFRA_NAMES[key]] = f"projects/_/buckets/{value}"
        elif key == "dataset":
            bindings[INFRA_NAMES[key]] = f"projects/{cloud.project}/datasets/{value}"
        else:
            bindings[INFRA_NAMES[key]] = value
    return LeastPrivilege(identity, bindings, cloud.project, environ or os.environ).start()


def start_job(argv: list[str], log_path: str, env: dict | None = None) -> Child:
    """A streaming embed-stream process, its output in `log_path`."""
    return Child(python_module("streaming.main", *argv), log_path, env=env)


@pytest.fixture(scope="session")
def stack(cloud, tmp_path_factory):
    """Buckets, a dataset, objects that predate the job, and the running streaming job
    reading the bucket notifications through its own subscription."""
    from tests import fixtures

    rid = cloud.run_id
    s = types.SimpleNamespace(cloud=cloud)
    s.images = cloud.storage.create_bucket(f"img-{rid}")
    s.old = cloud.storage.create_bucket(f"old-{rid}")
    s.old_names = ["2019/a.jpg", "2019/b.png", "2020/c.jpg"]
    # Their notifications go by before the job subscribes: seen on a subscription of
    # our own, they have been published.
    before = cloud.subscription("before-job")
    cloud.subscriber.create_subscription(name=before, topic=cloud.notify_topic)
    for i, name in enumerate(s.old_names):
        data = fixtures.png(seed=40 + i) if name.endswith(".png") else fixtures.jpeg(seed=40 + i)
        s.old.blob(name).upload_from_string(
            data, content_type="image/png" if name.endswith(".png") else "image/jpeg"
        )
    seen: set = set()
    wait_until(
        lambda: (
            seen.update(
                m.attributes.get("objectId")
                for m in pull_all(cloud, before, quiet_for=0.5, limit=5)
            )
            or seen >= set(s.old_names)
        ),
        timeout=30,
        what="the notifications of the objects that predate the job",
    )
    cloud.subscriber.delete_subscription(subscription=before)
    s.dataset = f"ds_{rid}"
    cloud.bq.create_dataset(s.dataset)
    s.table = f"{cloud.project}:{s.dataset}.embeddings"
    s.dead_table = f"{cloud.project}:{s.dataset}.dead_letters"
    # The embeddings table exists up front (as after `bq mk`); the job creates the
    # dead-letter table itself from schemas/ (CREATE_IF_NEEDED).
    from google.cloud import bigquery

    import schemas

    cloud.bq.create_table(
        bigquery.Table(
            s.table.replace(":", "."),
            schema=[bigquery.SchemaField.from_api_repr(f) for f in schemas.table_schema()],
        )
    )
    s.subscription = cloud.subscription("embed")
    cloud.subscriber.create_subscription(
        name=s.subscription, topic=cloud.notify_topic, ack_deadline_seconds=60
    )
    log = str(tmp_path_factory.mktemp("job") / "job.log")
    # The job runs as infra/'s job account: a call its roles would refuse is a 403.
    s.iam = least_privilege(
        cloud, "job", images=s.images.name, dataset=s.dataset, subscription=s.subscription
    )
    s.job = start_job(
        [
            "--input_subscription",
            s.subscription,
            "--output_table",
            s.table,
            "--dead_letter_table",
            s.dead_table,
            "--output_gcs",
            f"gs://img-{rid}/embeddings/",
            "--weights",
            "random:0",
            # Other tests' buckets notify the same topic: those are cheap dead
            # letters here, not images to embed.
            "--buckets",
            f"{s.images.name},{s.old.name}",
            "--catch_up",
            "never",
            "--local_endpoints",
            "--max_batch_size",
            "8",
            "--max_batch_duration_secs",
            "1",
            "--progress_interval",
            "1",
        ],
        log,
        env=s.iam.env,
    )

    def query(sql: str) -> list[dict]:
        from google.api_core.exceptions import NotFound

        try:
            return [dict(r) for r in cloud.bq.query(sql).result()]
        except NotFound:
            return []

    s.query = query
    s.rows_sql = f"`{cloud.project}.{s.dataset}.embeddings`"
    s.dead_sql = f"`{cloud.project}.{s.dataset}.dead_letters`"
    yield s
    s.job.stop()
    s.iam.stop()
    assert [str(d) for d in s.iam.denied] == []


class _Tokens(http.server.BaseHTTPRequestHandler):
    """OAuth's token endpoint for the test's service-account key."""

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = json.dumps(
            {"access_token": "test-token", "expires_in": 3600, "token_type": "Bearer"}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args):
        pass


@pytest.fixture(scope="module")
def service_account(tmp_path_factory, cloud):
    """Application default credentials of a service account whose tokens come from a
    local endpoint: the launcher's own identity, without Google's token service."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Tokens)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    path = tmp_path_factory.mktemp("adc") / "embedder.json"
    path.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": cloud.project,
                "private_key_id": "1",
                "private_key": pem,
                "client_email": f"embedder@{cloud.project}.iam.gserviceaccount.com",
                "client_id": "1",
                "token_uri": f"http://127.0.0.1:{server.server_address[1]}/token",
            }
        )
    )
    yield str(path)
    server.shutdown()
