"""The role of infra/ that grants each permission the job, the backfill and the launcher
use, so that a refusal names what to grant, not only what was refused.

tests/checks/test_infra.py checks each row against the roles' permissions
(tools/iam_roles.json, and infra/'s custom roles).
"""

from __future__ import annotations

import re

WRITER = "the custom role embeddingsWriter (infra/iam.tf)"
GRANTED_BY = {
    "storage.objects.get": "roles/storage.objectViewer",
    "storage.objects.list": "roles/storage.objectViewer",
    "storage.objects.create": "roles/storage.objectCreator",
    "storage.objects.delete": "roles/storage.objectAdmin",
    "storage.buckets.get": "roles/storage.legacyBucketReader",
    "pubsub.topics.publish": "roles/pubsub.publisher",
    "pubsub.subscriptions.consume": "roles/pubsub.subscriber",
    "pubsub.subscriptions.get": "roles/pubsub.viewer",
    "bigquery.jobs.create": "roles/bigquery.jobUser",
    "bigquery.tables.get": "roles/bigquery.dataViewer",
    "bigquery.tables.getData": "roles/bigquery.dataViewer",
    "bigquery.tables.updateData": WRITER,
    "bigquery.tables.create": WRITER,
    "bigquery.tables.update": "the custom role embeddingsSchemaUpgrader (infra/iam.tf)",
    "dataflow.jobs.list": "roles/dataflow.viewer",
    "dataflow.jobs.create": "roles/dataflow.developer",
}
_NAMED = re.compile(r"\b((?:storage|bigquery|pubsub|dataflow)\.\w+\.\w+)\b")


def needed(text: str, permission: str | None = None) -> str:
    """`permission P (granted by ROLE)` for the permission a refusal's `text` names
    (else `permission`, what the caller knows it was doing); '' when neither is known."""
    found = _NAMED.search(text)
    name = found.group(1) if found else permission
    if not name:
        return ""
    role = GRANTED_BY.get(name)
    return f"needs {name}" + (f", granted by {role}" if role else "")
