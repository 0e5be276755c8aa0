"""The Flex Template launch, run here as the launcher runs it: the entry file with the
template's parameters and --template_location, against the emulators, as the job's
service account (the launcher's identity) through proxies that answer 403 wherever the
roles infra/ grants it would (tools/iam.py). With `--update`, Beam looks the running job
up by name on a local Dataflow API (`dataflow.jobs.list`, which roles/dataflow.viewer
grants the account) and the job file replaces it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.integration.conftest import least_privilege
from tests.launcher import launcher_argv

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
IMAGE = "us-central1-docker.pkg.dev/test-project/embeddings/embed:abc123"
RUNNING_ID = "2026-12-01_00_00_00-123"


@pytest.mark.parametrize("update", [False, True], ids=["launch", "update"])
def test_the_template_launch_writes_the_job_file_under_the_jobs_roles(
    cloud, service_account, update
):
    from google.cloud import bigquery

    rid = f"{cloud.run_id}-{int(update)}"
    dataflow, vectors = f"dataflow-{rid}", f"vectors-{rid}"
    for name in (dataflow, vectors):
        cloud.storage.create_bucket(name)
    cloud.storage.bucket(dataflow).blob("models/r50.weights.h5").upload_from_string(b"w")
    topic = cloud.topic(f"launch-{int(update)}")
    subscription = cloud.subscription(f"launch-{int(update)}")
    cloud.publisher.create_topic(name=topic)
    cloud.subscriber.create_subscription(name=subscription, topic=topic)
    dataset = f"images_{rid.replace('-', '_')}"
    cloud.bq.create_dataset(bigquery.Dataset(f"{cloud.project}.{dataset}"))
    iam = least_privilege(
        cloud,
        "job",
        dataflow=dataflow,
        vectors=vectors,
        dataset=dataset,
        subscription=subscription,
    )
    iam.dataflow.running["image-embeddings"] = RUNNING_ID
    job_file = f"gs://{dataflow}/staging/template_launches/1/job_object"
    gcloud = [
        "gcloud",
        "dataflow",
        "flex-template",
        "run",
        "image-embeddings",
        *(["--update"] if update else []),
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
        f"output_table={cloud.project}:{dataset}.embeddings",
        "--parameters",
        f"output_gcs=gs://{vectors}/embeddings/",
        "--parameters",
        f"weights=gs://{dataflow}/models/r50.weights.h5",
    ]
    env = dict(
        os.environ,
        **iam.env,
        GOOGLE_APPLICATION_CREDENTIALS=service_account,
        GOOGLE_CLOUD_PROJECT=cloud.project,
    )
    # The Dataflow API the launcher would reach, here a local one.
    argv = [*launcher_argv(gcloud, job_file), f"--dataflow_endpoint={iam.dataflow_endpoint}"]
    try:
        run = subprocess.run(
            [sys.executable, os.path.join(ROOT, "flex_template", "main.py"), *argv],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        iam.stop()
    assert run.returncode == 0, run.stderr[-4000:]
    assert run.stdout.strip().endswith(f"wrote the job file {job_file}; nothing submitted")
    ours = [ln for ln in run.stderr.splitlines() if ln.startswith("embed-stream: ")]
    # Every pre-flight check ran (roles/dataflow.worker carries storage.buckets.get
    # project-wide, so even the vectors bucket is checked) and none was refused.
    assert ours == [] and [str(d) for d in iam.denied] == []
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
    assert job.get("replaceJobId") == (RUNNING_ID if update else None)
