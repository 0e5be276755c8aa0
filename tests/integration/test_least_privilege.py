"""Each identity of infra/ on its own paths, through proxies that answer 403 to every call
its roles would refuse (tools/iam.py): the backfill with each of its flags, and the
deployer's documented commands that run offline. (The job's paths run through them in
test_streaming_job.py, test_catch_up.py, test_weights_switch.py and test_outages.py; the
Flex Template launcher, which runs as the job's account, in test_launch.py.)"""

from __future__ import annotations

import json
import os
import re
import sys

import pytest

from tests import fixtures
from tests.integration.conftest import least_privilege
from tools.processes import ROOT, python_module, run


@pytest.fixture(scope="module")
def place(cloud):
    """infra/'s resources under the tests' names: the images bucket with objects under
    the notified prefix, the Dataflow and vectors buckets, the dataset with both tables,
    the notification topic and the job's subscription."""
    from google.cloud import bigquery

    import schemas

    rid = cloud.run_id
    p = {
        "images": f"lp-img-{rid}",
        "vectors": f"lp-vec-{rid}",
        "dataflow": f"lp-df-{rid}",
        "dataset": f"lp_{rid}",
        "topic": cloud.topic("lp-notify"),
        "subscription": cloud.subscription("lp-embed"),
    }
    for key in ("images", "vectors", "dataflow"):
        cloud.storage.create_bucket(p[key])
    images = cloud.storage.bucket(p["images"])
    for i in range(3):
        images.blob(f"uploads/{i}.jpg").upload_from_string(
            fixtures.jpeg(seed=70 + i), content_type="image/jpeg"
        )
    images.blob("uploads/notes.txt").upload_from_string(b"x", content_type="text/plain")
    # What a launch names as --weights (the one-time conversion's test writes real ones).
    cloud.storage.bucket(p["dataflow"]).blob("models/r50.weights.h5").upload_from_string(b"w")
    cloud.bq.create_dataset(p["dataset"])
    for table, schema in (
        ("embeddings", schemas.table_schema()),
        ("dead_letters", schemas.table_schema(schemas.DEAD_LETTERS)),
    ):
        cloud.bq.create_table(
            bigquery.Table(
                f"{cloud.project}.{p['dataset']}.{table}",
                schema=[bigquery.SchemaField.from_api_repr(f) for f in schema],
            )
        )
    cloud.publisher.create_topic(name=p["topic"])
    cloud.subscriber.create_subscription(name=p["subscription"], topic=p["topic"])
    return p


def _backfill(cloud, place, *flags: str, topic: str | None = None):
    iam = least_privilege(
        cloud,
        "backfill",
        images=place["images"],
        dataset=place["dataset"],
        topic=place["topic"],
    )
    try:
        code, out = run(
            python_module(
                "publisher.backfill",
                f"gs://{place['images']}/uploads/",
                "--topic",
                topic or place["topic"],
                "--local-endpoints",
                "--no-progress",
                *flags,
            ),
            timeout=300,
            env=iam.env,
        )
    finally:
        iam.stop()
    # check_targets asks for the topic (pubsub.topics.get) and goes on without it: the
    # backfill's roles grant publishing only.
    return code, out, [d for d in iam.refused() if "pubsub.topics.get" not in d]


@pytest.mark.parametrize(
    "flags",
    [
        ["--dry-run"],
        [
            "--rate",
            "500",
            "--content-type",
            "image/",
            "--extensions",
            ".jpg",
            "--updated-since",
            "2000-01-01T00:00:00Z",
            "--updated-until",
            "2100-01-01T00:00:00Z",
            "--max-in-flight",
            "10",
            "--page-size",
            "2",
            "--resume",
            "{resume}",
        ],
        [
            "--skip-existing",
            "--table",
            "{project}:{dataset}.embeddings",
            "--dead-letter-table",
            "{project}:{dataset}.dead_letters",
            "--retry-dead-letters",
            "--fingerprint",
            "resnet50-avgpool@0000",
        ],
    ],
    ids=["dry-run", "publish", "skip-existing"],
)
def test_the_backfill_runs_each_flag_under_its_own_roles(cloud, place, tmp_path, flags):
    values = dict(resume=str(tmp_path / "resume.json"), project=cloud.project, **place)
    code, out, denied = _backfill(cloud, place, *(f.format(**values) for f in flags))
    assert code == 0, out[-3000:]
    assert denied == []
    assert "error" not in out.lower()


def test_a_topic_the_backfill_may_not_publish_to_is_one_line_naming_the_permission(cloud, place):
    other = cloud.topic("lp-other")
    cloud.publisher.create_topic(name=other)
    code, out, denied = _backfill(cloud, place, topic=other)
    assert code == 1, out[-3000:]
    assert denied and all("pubsub.topics.publish" in d for d in denied), denied
    errors = [ln for ln in out.splitlines() if "error" in ln.lower()]
    assert len(errors) == 1, out[-3000:]
    assert "pubsub.topics.publish" in errors[0] and "roles/pubsub.publisher" in errors[0]


def _deployer(cloud, place, **extra):
    return least_privilege(
        cloud,
        "deployer",
        images=place["images"],
        vectors=place["vectors"],
        dataflow=place["dataflow"],
        dataset=place["dataset"],
        images_prefix="uploads/",
        **extra,
    )


def _doc_sh_commands(prefix: str) -> list[str]:
    doc = open(os.path.join(ROOT, "docs", "dataflow.md")).read()
    found = []
    for block in re.findall(r"```sh\n(.*?)```", doc, re.S):
        for cmd in re.sub(r"\\\n\s*", " ", block).splitlines():
            if cmd.strip().startswith(prefix):
                found.append(cmd.strip())
    assert found, f"no `{prefix}` command in docs/dataflow.md"
    return found


def _clients(cloud, iam):
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import bigquery, storage

    anon = AnonymousCredentials()
    gcs = storage.Client(
        project=cloud.project,
        credentials=anon,
        client_options=ClientOptions(api_endpoint=iam.storage.url),
    )
    bq = bigquery.Client(
        project=cloud.project,
        credentials=anon,
        client_options=ClientOptions(api_endpoint=iam.bigquery.url),
    )
    return gcs, bq


def test_the_deployers_smoke_tests_and_schema_upgrades_run_under_their_roles(cloud, place):
    """docs/dataflow.md: the test upload under the notified prefix, the query of its
    row, the weights upload, and every `ALTER TABLE` of the schema upgrades, as the
    deployer (the doc's `gcloud storage cp` and `bq query`, through the clients)."""
    from google.api_core.exceptions import Forbidden

    iam = _deployer(cloud, place)
    try:
        gcs, bq = _clients(cloud, iam)
        env = {
            "$IMAGES_BUCKET": place["images"],
            "$DATAFLOW_BUCKET": place["dataflow"],
            "$PROJECT.images": f"{cloud.project}.{place['dataset']}",
            "${TABLE/:/.}": f"{cloud.project}.{place['dataset']}.embeddings",
        }

        def expand(text: str) -> str:
            for key, value in env.items():
                text = text.replace(key, value)
            return text

        for cmd in _doc_sh_commands("gcloud storage cp"):
            source, target = expand(cmd).split()[3:5]
            bucket, _, name = target.removeprefix("gs://").partition("/")
            if name.endswith("/"):
                name += os.path.basename(source)
            gcs.bucket(bucket).blob(name).upload_from_string(b"x")
        for cmd in _doc_sh_commands("bq query"):
            sql = re.search(r'"(.*)"', expand(cmd)).group(1).replace("\\`", "`")
            list(bq.query(sql).result())
        assert iam.refused() == []
        # What the roles leave out: writing outside the notified prefix, deleting rows.
        with pytest.raises(Forbidden, match="storage.objects.create"):
            gcs.bucket(place["images"]).blob("elsewhere/x.jpg").upload_from_string(b"x")
        with pytest.raises(Forbidden, match="bigquery.tables.delete"):
            bq.delete_table(f"{cloud.project}.{place['dataset']}.embeddings")
    finally:
        iam.stop()


def test_the_deployers_one_time_conversion_runs_under_their_roles(cloud, place):
    """`python -m streaming.model.prepare` as documented, as the deployer, into the model
    cache in the Dataflow bucket (random weights: what is checked is where it writes,
    and with which roles; the weights file's own read is `storage.objects.get`, which
    the launch above needs too)."""
    from streaming import main

    (cmd,) = _doc_sh_commands("python -m streaming.model.prepare")
    assert "--model_cache_dir $MODEL_CACHE" in cmd
    cache = f"gs://{place['dataflow']}/{main.MODEL_CACHE_PREFIX}"
    iam = _deployer(cloud, place)
    try:
        code, out = run(
            python_module(
                "streaming.model.prepare", "--weights", "random:0", "--model_cache_dir", cache
            ),
            timeout=600,
            env=iam.env,
        )
    finally:
        iam.stop()
    assert code == 0, out[-3000:]
    assert iam.refused() == []
    written = [
        b.name for b in cloud.storage.list_blobs(place["dataflow"], prefix=main.MODEL_CACHE_PREFIX)
    ]
    assert any(n.endswith("model.onnx") for n in written), written


def test_the_deployers_direct_launch_stages_and_submits_under_their_roles(
    cloud, place, tmp_path, service_account
):
    """The doc's `embed-stream --runner DataflowRunner ...`, as the deployer: Beam stages
    to the Dataflow bucket and creates the job on a local Dataflow API (which checks
    dataflow.jobs.create and actAs on the job's account)."""
    (cmd,) = _doc_sh_commands("embed-stream --runner DataflowRunner")
    project = cloud.project
    account = f"embedder@{project}.iam.gserviceaccount.com"
    env = {
        "$PROJECT": project,
        "$REGION": "us-central1",
        "$SA": account,
        "$DATAFLOW_BUCKET": place["dataflow"],
        "$IMAGE": f"us-central1-docker.pkg.dev/{project}/embeddings/embed:abc",
        "$SUBSCRIPTION": place["subscription"],
        "$TABLE": f"{project}:{place['dataset']}.embeddings",
        "$DEAD_LETTER_TABLE": f"{project}:{place['dataset']}.dead_letters",
        "$VECTORS": f"gs://{place['vectors']}/embeddings/",
        "$WEIGHTS": f"gs://{place['dataflow']}/models/r50.weights.h5",
        "$MODEL_CACHE": f"gs://{place['dataflow']}/image-embeddings/onnx",
    }
    for key in sorted(env, key=len, reverse=True):
        cmd = cmd.replace(key, env[key])
    argv = cmd.split()[1:]
    iam = _deployer(
        cloud,
        place,
        subscription=place["subscription"],
        embedder_account=f"projects/{project}/serviceAccounts/{account}",
    )
    try:
        code, out = run(
            [
                sys.executable,
                "-m",
                "streaming.main",
                *argv,
                "--dataflow_endpoint",
                iam.dataflow_endpoint,
            ],
            timeout=600,
            env={**iam.env, "GOOGLE_APPLICATION_CREDENTIALS": service_account},
        )
    finally:
        iam.stop()
    assert code == 0, out[-4000:]
    assert iam.refused() == []
    (job,) = iam.dataflow.created
    # The client sends enums as numbers: 2 is JOB_TYPE_STREAMING.
    assert job["name"] == "image-embeddings" and job["type"] in ("JOB_TYPE_STREAMING", 2)
    assert job["environment"]["serviceAccountEmail"] == account
    staged = [b.name for b in cloud.storage.list_blobs(place["dataflow"], prefix="staging/")]
    assert staged, "nothing staged"
    assert json.dumps(job)  # a job the service would take
