"""The least-privilege proxy's tables (tools/iam.py): each API call maps to the permission
Google documents for it, on the right resource, and infra/'s grants decide as IAM would,
IAM conditions included. The proxies themselves run in tests/integration."""

import json

import pytest

from tools import iam
from tools.iam import Check, Policy

PROJECT = "projects/p"
BINDINGS = {
    "var.project_id": PROJECT,
    "var.images_bucket": "projects/_/buckets/img",
    "var.images_prefix": "uploads/",
    "google_storage_bucket.vectors": "projects/_/buckets/vec",
    "google_storage_bucket.dataflow": "projects/_/buckets/df",
    "google_bigquery_dataset.images": "projects/p/datasets/images",
    "google_pubsub_topic.notifications": "projects/p/topics/notify",
    "google_pubsub_subscription.embed": "projects/p/subscriptions/embed",
}


def never(_bucket, _name):
    return False


@pytest.mark.parametrize(
    "method, path, query, permission, resource",
    [
        ("GET", "/storage/v1/b/img", {}, "storage.buckets.get", "projects/_/buckets/img"),
        ("GET", "/storage/v1/b/img/o", {}, "storage.objects.list", "projects/_/buckets/img"),
        ("GET", "/download/storage/v1/b/img/o/a%2Fb.jpg", {}, "storage.objects.get", None),
        ("DELETE", "/storage/v1/b/img/o/a%2Fb.jpg", {}, "storage.objects.delete", None),
        ("PATCH", "/storage/v1/b/img/o/a%2Fb.jpg", {}, "storage.objects.update", None),
        ("POST", "/upload/storage/v1/b/img/o", {"name": "a/b.jpg"}, "storage.objects.create", None),
    ],
)
def test_each_storage_call_needs_its_documented_permission(
    method, path, query, permission, resource
):
    (check,) = iam.storage_checks(method, path, query, b"", never)
    assert check.permission == permission
    assert check.resource == (resource or "projects/_/buckets/img/objects/a/b.jpg")


def test_replacing_an_object_needs_delete_unless_the_upload_is_create_only():
    exists = lambda _b, _n: True
    plain = iam.storage_checks("POST", "/upload/storage/v1/b/v/o", {"name": "x"}, b"", exists)
    assert [c.permission for c in plain] == ["storage.objects.create", "storage.objects.delete"]
    only = iam.storage_checks(
        "POST", "/upload/storage/v1/b/v/o", {"name": "x", "ifGenerationMatch": "0"}, b"", exists
    )
    assert [c.permission for c in only] == ["storage.objects.create"]


def test_a_batch_is_checked_request_by_request():
    body = (
        b"--b\r\nContent-Type: application/http\r\n\r\n"
        b"DELETE /storage/v1/b/df/o/tmp%2Fa HTTP/1.1\r\n\r\n\r\n"
        b"--b\r\nContent-Type: application/http\r\n\r\n"
        b"DELETE /storage/v1/b/df/o/models%2Fw.h5 HTTP/1.1\r\n\r\n\r\n--b--"
    )
    checks = iam.storage_checks("POST", "/batch/storage/v1", {}, body, never)
    assert [c.resource.rsplit("/objects/", 1)[1] for c in checks] == ["tmp/a", "models/w.h5"]
    job = Policy("job", BINDINGS)
    assert job.denial(checks).check.resource.endswith("models/w.h5")


def test_an_unknown_call_is_refused_not_passed():
    for checks in (
        iam.storage_checks("POST", "/storage/v1/projects/p/hmacKeys", {}, b"", never),
        iam.bigquery_checks("POST", "/bigquery/v2/projects/p/datasets/d/routines", b""),
        iam.dataflow_checks("POST", "/v1b3/projects/p/templates", b""),
    ):
        assert Policy("job", BINDINGS).denial(checks) is not None


def test_a_query_needs_jobs_create_and_each_tables_own_permission():
    read = iam.query_checks("p", "SELECT e.name FROM `p.images.embeddings` AS e WHERE e.x = 1")
    assert read == [
        Check("bigquery.jobs.create", PROJECT),
        Check("bigquery.tables.getData", "projects/p/datasets/images/tables/embeddings"),
    ]
    alter = iam.query_checks("p", "ALTER TABLE `p.images.dead_letters` ADD COLUMN x INT64")
    assert (
        Check("bigquery.tables.update", "projects/p/datasets/images/tables/dead_letters") in alter
    )
    body = json.dumps({"configuration": {"query": {"query": "DELETE FROM `p.images.t` WHERE 1=1"}}})
    dml = iam.bigquery_checks("POST", "/bigquery/v2/projects/p/jobs", body.encode())
    assert Check("bigquery.tables.updateData", "projects/p/datasets/images/tables/t") in dml


def test_grants_apply_to_their_resource_and_below_and_conditions_narrow_them():
    deployer = Policy("deployer", BINDINGS)
    assert deployer.allows(
        Check("storage.objects.create", "projects/_/buckets/img/objects/uploads/a")
    )
    assert not deployer.allows(Check("storage.objects.create", "projects/_/buckets/img/objects/b"))
    backfill = Policy("backfill", BINDINGS)
    assert backfill.allows(Check("pubsub.topics.publish", "projects/p/topics/notify"))
    assert not backfill.allows(Check("pubsub.topics.publish", "projects/p/topics/other"))
    assert not backfill.allows(Check("pubsub.topics.get", "projects/p/topics/notify"))
    denial = backfill.denial([Check("pubsub.topics.get", "projects/p/topics/notify")])
    assert "roles/pubsub.viewer" in denial.granted_by


def test_every_role_infra_grants_is_in_the_table():
    known = iam.role_permissions()
    from tools import infra

    assert {g.role for g in infra.iam_grants()} <= set(known)
