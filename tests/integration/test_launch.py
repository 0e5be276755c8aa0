"""The Flex Template launch, run here as the launcher runs it: the entry file with the
template's parameters and --template_location, staging to the Cloud Storage emulator,
as the job's service account with only the roles infra/ grants it. A proxy answers 403
wherever those roles would; every pre-flight check passes or is named in one warning
line, and the job file carries the image, the worker defaults and every option."""

from __future__ import annotations

import http.server
import json
import os
import re
import subprocess
import sys
import threading
import urllib.parse

import pytest

from tests.checks.test_infra import iam_grants
from tests.launcher import launcher_argv
from tools.http_proxy import HttpProxy, gcs_error

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
IMAGE = "us-central1-docker.pkg.dev/test-project/embeddings/embed:abc123"
# What each Cloud Storage role of infra/ allows (Google's IAM roles reference).
ROLE_PERMISSIONS = {
    "roles/storage.objectAdmin": {
        "objects.get",
        "objects.list",
        "objects.create",
        "objects.delete",
    },
    "roles/storage.objectCreator": {"objects.create"},
    "roles/storage.objectViewer": {"objects.get", "objects.list"},
    "roles/storage.legacyBucketReader": {"buckets.get", "objects.list"},
}


def permission(method: str, path: str) -> str:
    """The Cloud Storage permission a JSON API request needs."""
    path = urllib.parse.urlsplit(path).path
    if path.startswith("/upload/"):
        return "objects.create"
    if re.fullmatch(r"/storage/v1/b/[^/]+/?", path):
        return "buckets.get"
    if re.fullmatch(r"/storage/v1/b/[^/]+/o/?", path):
        return "objects.list" if method == "GET" else "objects.create"
    if "/o/" in path:
        return {"GET": "objects.get", "DELETE": "objects.delete"}.get(method, "objects.create")
    return "other"


def storage_roles(member: str, buckets: dict[str, str]) -> dict[str, set[str]]:
    """{bucket name: permissions} of `member`'s Cloud Storage grants in infra/."""
    allowed: dict[str, set[str]] = {name: set() for name in buckets.values()}
    for who, role, target in iam_grants():
        if who == member and target in buckets and role in ROLE_PERMISSIONS:
            allowed[buckets[target]] |= ROLE_PERMISSIONS[role]
    return allowed


def role_rule(allowed: dict[str, set[str]]):
    def rule(request):
        m = re.match(r"/(?:upload/)?storage/v1/b/([^/?]+)", request.path)
        if not m:
            return None
        bucket = urllib.parse.unquote(m.group(1))
        needed = permission(request.method, request.path)
        if bucket in allowed and needed not in allowed[bucket]:
            return gcs_error(
                403,
                f"embedder does not have storage.{needed} access to "
                f"the Google Cloud Storage bucket {bucket}",
            )
        return None

    return rule


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


def test_the_template_launch_writes_the_job_file_under_the_jobs_roles(cloud, service_account):
    from google.cloud import bigquery

    rid = cloud.run_id
    dataflow, vectors = f"dataflow-{rid}", f"vectors-{rid}"
    for name in (dataflow, vectors):
        cloud.storage.create_bucket(name)
    cloud.storage.bucket(dataflow).blob("models/r50.weights.h5").upload_from_string(b"w")
    topic, subscription = cloud.topic("launch"), cloud.subscription("launch")
    cloud.publisher.create_topic(name=topic)
    cloud.subscriber.create_subscription(name=subscription, topic=topic)
    cloud.bq.create_dataset(bigquery.Dataset(f"{cloud.project}.images_{rid}"))
    proxy = HttpProxy(
        os.environ["STORAGE_EMULATOR_HOST"],
        rule=role_rule(
            storage_roles(
                "local.embedder",
                {
                    "google_storage_bucket.dataflow": dataflow,
                    "google_storage_bucket.vectors": vectors,
                },
            )
        ),
    ).start()
    job_file = f"gs://{dataflow}/staging/template_launches/1/job_object"
    gcloud = [
        "gcloud",
        "dataflow",
        "flex-template",
        "run",
        "image-embeddings",
        "--region",
        "us-central1",
        "--project",
        cloud.project,
        "--staging-location",
        f"gs://{dataflow}/staging",
        "--temp-location",
        f"gs://{dataflow}/tmp",
        "--parameters",
        f"sdk_container_image={IMAGE}",
        "--parameters",
        f"input_subscription={subscription}",
        "--parameters",
        f"output_table={cloud.project}:images_{rid}.embeddings",
        "--parameters",
        f"output_gcs=gs://{vectors}/embeddings/",
        "--parameters",
        f"weights=gs://{dataflow}/models/r50.weights.h5",
    ]
    env = dict(
        os.environ,
        GOOGLE_APPLICATION_CREDENTIALS=service_account,
        GOOGLE_CLOUD_PROJECT=cloud.project,
        STORAGE_EMULATOR_HOST=proxy.url,
    )
    try:
        run = subprocess.run(
            [
                sys.executable,
                os.path.join(ROOT, "flex_template", "main.py"),
                *launcher_argv(gcloud, job_file),
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        proxy.stop()
    assert run.returncode == 0, run.stderr[-4000:]
    assert run.stdout.strip().endswith(f"wrote the job file {job_file}; nothing submitted")
    ours = [ln for ln in run.stderr.splitlines() if ln.startswith("embed-stream: ")]
    assert ours == [
        f"embed-stream: warning: not checked: --output_gcs gs://{vectors}/"
        f"embeddings/ (permission denied on bucket {vectors})"
    ]
    denied = [r.path for r in proxy.requests if r.path.startswith(f"/storage/v1/b/{vectors}")]
    assert denied, "the pre-flight never asked about the vectors bucket"
    job = json.loads(
        cloud.storage.bucket(dataflow)
        .blob("staging/template_launches/1/job_object")
        .download_as_bytes()
    )
    options = job["environment"]["sdkPipelineOptions"]["options"]
    assert options["sdk_container_image"] == IMAGE
    assert "no_use_multiple_sdk_containers" in options["experiments"]
    assert options["number_of_worker_harness_threads"] == 2
    assert options["model_cache_dir"] == f"gs://{dataflow}/image-embeddings/onnx"
    for name, value in (
        ("input_subscription", subscription),
        ("output_gcs", f"gs://{vectors}/embeddings/"),
        ("weights", f"gs://{dataflow}/models/r50.weights.h5"),
        ("decode_threads", 2),
        ("runtime", "onnx"),
    ):
        assert options[name] == value, name
    assert job["type"] == "JOB_TYPE_STREAMING"
