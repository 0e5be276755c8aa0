"""infra/ declares everything the job needs, with least-privilege grants.

Terraform cannot download its provider here, so `terraform validate`/`plan` cannot run;
these checks read the .tf files as text instead (plus `terraform fmt -check` when the
binary is installed).
"""

import json
import pathlib
import re
import shutil
import subprocess

import pytest

from tools import infra

ROOT = pathlib.Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
TEXT = infra.TEXT
_body, blocks, attr, nested = infra.body, infra.blocks, infra.attr, infra.nested


def default(var: str):
    return json.loads(attr(blocks("variable")[var], "default"))


def only(kind_type: str) -> tuple[str, str]:
    found = blocks("resource", kind_type)
    assert len(found) == 1, f"{kind_type}: {sorted(found)}"
    return next(iter(found.items()))


def topic_ref(value: str) -> str:
    return re.fullmatch(r"google_pubsub_topic\.(\w+)\.id", value).group(1)


@pytest.mark.skipif(shutil.which("terraform") is None, reason="terraform is not installed")
def test_terraform_fmt():
    run = subprocess.run(
        ["terraform", "fmt", "-check", "-diff", str(INFRA)], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout


def test_bucket_notifies_the_topic_for_the_images_prefix_only():
    _, note = only("google_storage_notification")
    assert attr(note, "bucket") == "var.images_bucket"
    assert topic_ref(attr(note, "topic")) in blocks("resource", "google_pubsub_topic")
    assert attr(note, "payload_format") == '"JSON_API_V1"'
    # OBJECT_ARCHIVE: a versioned bucket's deletion of the live version.
    assert json.loads(attr(note, "event_types")) == [
        "OBJECT_FINALIZE",
        "OBJECT_DELETE",
        "OBJECT_ARCHIVE",
    ]
    assert attr(note, "object_name_prefix") == "var.images_prefix"
    assert (
        default("images_prefix")
        and "length(var.images_prefix) > 0" in blocks("variable")["images_prefix"]
    )
    # Vectors go elsewhere: the job's own writes never notify.
    outputs = blocks("output")
    assert "google_storage_bucket.vectors.name" in attr(outputs["output_gcs"], "value")
    assert "images_bucket" not in attr(outputs["output_gcs"], "value")


def test_subscription_has_deadline_and_retention_and_no_pubsub_dead_letters():
    """Dataflow reads the subscription itself: Pub/Sub's dead-letter topics and retry
    policies never act on it, so none is declared (the job dead-letters to BigQuery)."""
    _, note = only("google_storage_notification")
    subs = blocks("resource", "google_pubsub_subscription")
    main_topic = topic_ref(attr(note, "topic"))
    ((name, sub),) = [(n, b) for n, b in subs.items() if topic_ref(attr(b, "topic")) == main_topic]
    assert 60 <= int(attr(sub, "ack_deadline_seconds")) <= 600
    assert int(attr(sub, "message_retention_duration").strip('"s')) >= 86400
    for block in ("dead_letter_policy", "retry_policy"):
        assert not re.search(rf"^\s*{block}\s*\{{", sub, re.M), f"{name} declares {block}"
    assert set(blocks("resource", "google_pubsub_topic")) == {main_topic}
    assert "max_delivery_attempts" not in blocks("variable")


@pytest.mark.parametrize(
    "table, schema_file", [("embeddings", "embeddings.json"), ("dead_letters", "dead_letters.json")]
)
def test_tables_come_from_the_schema_files(table, schema_file):
    tables = blocks("resource", "google_bigquery_table")
    body = tables[table]
    assert attr(body, "dataset_id") == "google_bigquery_dataset.images.dataset_id"
    path = re.fullmatch(
        r'jsonencode\(jsondecode\(file\("\$\{path\.module\}/(.+)"\)\)\)', attr(body, "schema")
    ).group(1)
    schema_path = (INFRA / path).resolve()
    assert schema_path == ROOT / "schemas" / schema_file
    fields = {f["name"] for f in json.loads(schema_path.read_text())}
    assert set(json.loads(attr(body, "clustering"))) <= fields
    assert attr(nested(body, "time_partitioning"), "field").strip('"') in fields
    assert set(tables) == {"embeddings", "dead_letters"}


def iam_grants() -> set[tuple[str, str, str]]:
    """(member, role, target resource) of every *_iam_member grant."""
    return {(g.member, g.role, g.target) for g in infra.iam_grants()}


def test_job_service_account_has_exactly_its_least_privilege_roles():
    job = {(g.role, g.target, bool(g.condition)) for g in infra.iam_grants() if g.identity == "job"}
    assert job == {
        ("roles/dataflow.worker", "var.project_id", False),
        # Beam's --update, in the Flex Template launcher, finds the job by name.
        ("roles/dataflow.viewer", "var.project_id", False),
        ("roles/pubsub.subscriber", "google_pubsub_subscription.embed", False),
        ("roles/pubsub.viewer", "google_pubsub_subscription.embed", False),
        ("roles/storage.objectViewer", "var.images_bucket", False),
        ("roles/storage.objectCreator", "google_storage_bucket.vectors", False),
        # Reads the whole Dataflow bucket, writes under its own prefixes only.
        ("roles/storage.objectViewer", "google_storage_bucket.dataflow", False),
        ("roles/storage.objectAdmin", "google_storage_bucket.dataflow", True),
        # Beam's launcher reads the staging bucket's metadata before it stages.
        ("roles/storage.legacyBucketReader", "google_storage_bucket.dataflow", False),
        # Rows, a missing table, the catch-up's reads: no delete, no schema change.
        (
            "google_project_iam_custom_role.embeddings_writer",
            "google_bigquery_dataset.images",
            False,
        ),
        # --catch_up always on Dataflow runs a query job.
        ("roles/bigquery.jobUser", "var.project_id", False),
        ("roles/artifactregistry.reader", "google_artifact_registry_repository.images", False),
    }


def test_the_job_cannot_delete_tables_nor_replace_weights():
    """The two grants narrower than a predefined role: what they leave out is what a
    worker must not do."""
    from tools.iam import Check, Policy

    job = Policy(
        "job",
        {
            "var.project_id": "projects/p",
            "google_storage_bucket.dataflow": "projects/_/buckets/df",
            "google_bigquery_dataset.images": "projects/p/datasets/images",
        },
    )
    table = "projects/p/datasets/images/tables/embeddings"
    assert job.allows(Check("bigquery.tables.updateData", table))
    assert not job.allows(Check("bigquery.tables.delete", table))
    assert not job.allows(Check("bigquery.tables.update", table))
    live = "projects/_/buckets/df/objects/models/live/r50.weights.h5"
    assert job.allows(Check("storage.objects.get", live))
    assert not job.allows(Check("storage.objects.delete", live))  # no replacing
    from streaming import main

    cache = f"projects/_/buckets/df/objects/{main.MODEL_CACHE_PREFIX}/x/model.onnx"
    for permission in ("storage.objects.create", "storage.objects.delete"):
        assert job.allows(Check(permission, cache))
        assert job.allows(Check(permission, "projects/_/buckets/df/objects/tmp/x"))


def test_someone_can_run_as_the_backfill_service_account():
    holders = {
        (member, role)
        for member, role, target in iam_grants()
        if target == "google_service_account.backfill"
    }
    roles = {role for _, role in holders}
    assert "roles/iam.serviceAccountTokenCreator" in roles  # impersonation from a laptop
    assert {member for member, _ in holders} == {"each.value"}  # the deployers
    deployers = {
        target
        for member, role, target in iam_grants()
        if member == "each.value" and role.startswith("roles/iam.")
    }
    assert "google_service_account.backfill" in deployers


def references(body: str) -> set[str]:
    """Resources (`google_x.name`) and data sources (`data.google_x.name`) a block names,
    in expressions and depends_on."""
    return set(re.findall(r"(?<![\w.])((?:data\.)?google_\w+\.\w+)", body))


def test_every_resource_waits_for_the_apis():
    """Each resource and data source depends on google_project_service.apis, directly
    or through one that does: nothing is created before its API is enabled."""
    nodes = {}
    for kind in ("resource", "data"):
        for m in re.finditer(rf'^{kind}\s+"(\w+)"\s+"(\w+)"\s*\{{', TEXT, re.M):
            name = f"{m.group(1)}.{m.group(2)}"
            nodes[name if kind == "resource" else f"data.{name}"] = _body(TEXT, m.end())
    local_blocks = [_body(TEXT, m.end()) for m in re.finditer(r"^locals\s*\{", TEXT, re.M)]
    locals_ = dict(re.findall(r"^\s*(\w+)\s*=\s*(.+)$", "\n".join(local_blocks), re.M))
    root = "google_project_service.apis"

    def reaches(name, seen=()):
        if name == root:
            return True
        body = nodes.get(name, "")
        for local in re.findall(r"\blocal\.(\w+)", body):
            body += " " + locals_.get(local, "")
        return any(
            reaches(r, seen + (name,)) for r in references(body) if r in nodes and r not in seen
        )

    late = sorted(n for n in nodes if n != root and not reaches(n))
    assert late == []


@pytest.mark.parametrize(
    "path",
    [
        "infra/terraform.tfstate",
        "infra/terraform.tfstate.backup",
        "infra/.terraform/providers/x",
        "infra/terraform.tfvars",
        "infra/plan.tfplan",
        "terraform.tfstate",
    ],
)
def test_terraform_state_and_values_are_never_committed(path):
    run = subprocess.run(["git", "check-ignore", "--no-index", "-q", path], cwd=ROOT)
    assert run.returncode == 0, f"{path} is not ignored by git"


def test_no_broad_roles():
    for member, role, target in iam_grants():
        assert role not in {"roles/owner", "roles/editor", "roles/viewer"}, (member, role)
        if target == "var.project_id":  # project-wide only where no narrower grant exists
            assert role in {
                "roles/dataflow.worker",
                "roles/dataflow.viewer",
                "roles/dataflow.developer",
                "roles/bigquery.jobUser",
            }, (member, role)


def test_service_accounts_and_image_repository():
    assert {"embedder", "backfill"} <= set(blocks("resource", "google_service_account"))
    _, repo = only("google_artifact_registry_repository")
    assert attr(repo, "format") == '"DOCKER"'


def test_outputs_named_for_job_options_are_job_options():
    from apache_beam.options.pipeline_options import PipelineOptions

    from streaming.config.options import EmbedOptions  # noqa: F401 - registers the job's options

    known = PipelineOptions().get_all_options()
    for name in (
        "input_subscription",
        "output_table",
        "dead_letter_table",
        "output_gcs",
        "service_account_email",
    ):
        assert name in blocks("output") and name in known


def test_no_lifecycle_rule_deletes_the_default_model_cache():
    """A Dataflow job without --model_cache_dir keeps its converted models in the Dataflow
    bucket: no rule of that bucket may delete them object by object."""
    from streaming import main

    bucket = blocks("resource", "google_storage_bucket")["dataflow"]
    prefixes = [
        p
        for rule in re.findall(r"matches_prefix\s*=\s*(\[[^\]]*\])", bucket)
        for p in json.loads(rule)
    ]
    assert prefixes, "the Dataflow bucket's temp files should expire"
    assert not any(main.MODEL_CACHE_PREFIX.startswith(p) for p in prefixes)


def test_each_refusal_names_a_role_that_grants_the_permission():
    """streaming/config/permissions.py names, for each permission, the role to grant: that
    role holds it (Google's reference in tools/iam_roles.json, or infra/'s custom role),
    and infra/ grants it to someone."""
    from streaming.config.permissions import GRANTED_BY
    from tools.iam import role_permissions

    roles = role_permissions()
    custom = {
        attr(body, "role_id").strip('"'): f"google_project_iam_custom_role.{name}"
        for name, body in blocks("resource", "google_project_iam_custom_role").items()
    }
    granted = {role for _, role, _ in iam_grants()}
    for permission, named in GRANTED_BY.items():
        m = re.search(r"custom role (\w+)", named)
        role = custom[m.group(1)] if m else named
        assert permission in roles[role], (permission, named)
        assert role in granted, f"{named} is granted to no one in infra/"


def test_a_refusal_is_one_line_naming_the_permission_and_its_role():
    from google.api_core import exceptions as gexc

    from streaming.config import cli

    line = cli.describe(gexc.Forbidden("Permission bigquery.tables.updateData denied on t"))
    assert "needs bigquery.tables.updateData, granted by the custom role embeddingsWriter" in line
    pubsub = gexc.PermissionDenied("User not authorized to perform this action.")
    assert cli.describe(pubsub, "pubsub.topics.publish").endswith(
        "(needs pubsub.topics.publish, granted by roles/pubsub.publisher)"
    )
    assert "\n" not in line


def test_only_the_apis_something_uses_are_enabled():
    """Cloud Build is not one: the image is built with Docker (docs/dataflow.md step 3)."""
    services = set(re.findall(r'"([\w.]+\.googleapis\.com)"', nested_locals("services")))
    assert "cloudbuild.googleapis.com" not in services
    assert {"dataflow.googleapis.com", "bigquerystorage.googleapis.com"} <= services


def nested_locals(name: str) -> str:
    m = re.search(rf"^\s*{name}\s*=\s*\[(.*?)\]", TEXT, re.M | re.S)
    assert m, f"no local {name}"
    return m.group(1)
