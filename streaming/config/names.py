"""Names of the cloud resources the tools take, one grammar each: BigQuery table ids,
Pub/Sub topic and subscription paths, gs:// URIs.

Pure functions: they run before anything is contacted, so a typo fails in the first
second with a message naming the value, not at the first image.
"""

from __future__ import annotations

import re

# GCP project ids: 6-30 lowercase letters, digits, hyphens, starting with a letter.
PROJECT = r"[a-z][a-z0-9-]{4,28}[a-z0-9]"
# Datasets: letters, digits, underscores. Tables: letters, digits, underscores, hyphens
# (BigQuery allows more, e.g. Unicode letters and spaces; refused here), no "--".
_DATASET_TABLE = r"(?P<dataset>[A-Za-z0-9_]{1,1024})\.(?P<table>[A-Za-z0-9_]+(?:-[A-Za-z0-9_]+)*)"
_TABLE_ID = re.compile(rf"(?P<project>{PROJECT})[:.]{_DATASET_TABLE}")
_SHORT_TABLE_ID = re.compile(_DATASET_TABLE)
# Pub/Sub: 3-255 characters, starting with a letter.
_PUBSUB_NAME = r"[A-Za-z][A-Za-z0-9._~%+-]{2,254}"
_PUBSUB_PATH = re.compile(
    rf"projects/(?P<project>{PROJECT})/(?P<kind>topics|subscriptions)/"
    rf"(?P<name>{_PUBSUB_NAME})"
)
# Bucket names: 3-63 lowercase letters, digits, -, _ and dots, starting and ending
# with a letter or digit.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]")


def parse_table_id(table: str) -> tuple[str, str, str]:
    """(project, dataset, table) of `P:D.T` or `P.D.T`; ValueError for anything else."""
    m = _TABLE_ID.fullmatch(table or "")
    if not m or len(m.group("table")) > 1024:
        raise ValueError(f"not a BigQuery table id (PROJECT:DATASET.TABLE): {table!r}")
    return m.group("project"), m.group("dataset"), m.group("table")


class Fragment(str):
    """SQL text made from a checked name or by the code (a quoted table id, a view's
    query), never raw user input: `analysis.sql.render` inserts it as is."""


def table_ref(table: str) -> Fragment:
    """`project.dataset.table`, back-quoted for SQL, from a validated table id."""
    project, dataset, name = parse_table_id(table)
    return Fragment(f"`{project}.{dataset}.{name}`")


def standard_table_id(table: str) -> str:
    """`P.D.T`, the form google-cloud-bigquery takes, of `P:D.T` or `P.D.T`."""
    return ".".join(parse_table_id(table))


def full_table_id(table: str, project: str | None = None) -> str:
    """`P:D.T` for `P:D.T`, `P.D.T`, or `D.T` when `project` is given.

    Raises:
      ValueError: naming the value and what was expected.
    """
    short = _SHORT_TABLE_ID.fullmatch(table or "")
    if short and "." not in (table or "").partition(".")[2]:
        if not project:
            raise ValueError(f"{table!r} has no project: write PROJECT:{table} or pass --project")
        table = f"{project}:{table}"
    project_id, dataset, name = parse_table_id(table)
    return f"{project_id}:{dataset}.{name}"


def pubsub_path(value: str, kind: str, project: str | None = None) -> str:
    """`projects/P/<kind>/NAME` for a full path, or for a bare NAME when `project` is given.

    Args:
      value: the option's value.
      kind: `topics` or `subscriptions`.
      project: the project for a bare name (--project).

    Raises:
      ValueError: naming the value and the expected form.
    """
    if project and re.fullmatch(_PUBSUB_NAME, value or "") and not value.startswith("goog"):
        value = f"projects/{project}/{kind}/{value}"
    m = _PUBSUB_PATH.fullmatch(value or "")
    if not m or m.group("kind") != kind or m.group("name").startswith("goog"):
        raise ValueError(f"not a Pub/Sub {kind[:-1]} (projects/PROJECT/{kind}/NAME): {value!r}")
    return value


GCS_SCHEME = "gs://"


def is_gcs_uri(path: str | None) -> bool:
    """Whether `path` (None for an option left out) names Cloud Storage."""
    return (path or "").startswith(GCS_SCHEME)


def gcs_parts(uri: str) -> tuple[str, str]:
    """(bucket, object name or prefix) of a gs:// URI the job made itself; unchecked
    (`split_gcs_uri` checks what a user typed)."""
    bucket, _, name = uri[len(GCS_SCHEME) :].partition("/")
    return bucket, name


def split_gcs_uri(uri: str) -> tuple[str, str]:
    """(bucket, prefix) of `gs://BUCKET[/prefix]`; ValueError for anything else."""
    if not is_gcs_uri(uri):
        raise ValueError(f"expected gs://BUCKET[/prefix], got {uri!r}")
    bucket, prefix = gcs_parts(uri)
    if not _BUCKET.fullmatch(bucket):
        raise ValueError(f"not a Cloud Storage bucket name in {uri!r}")
    return bucket, prefix
