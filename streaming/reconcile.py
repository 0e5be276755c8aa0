"""Catch-up: find the object generations that have neither a row nor a dead letter.

Two things leave an image without a row: a notification that was taken but never
finished (Beam's local runner acknowledges Pub/Sub messages when it pulls them, so a
killed job loses what it had in flight), and a notification that never arrived (a
bucket notification or subscription created after the uploads, retention expired).
Both are found the same way: list the watched buckets/prefixes and compare them with
what the tables already hold. The job does it when it starts (and, opt-in, every N
minutes) and embeds what it finds through the same pipeline; `embed-backfill
--skip-existing` does it for an operator, on any runner.

One listing pass and one query per prefix, both in name order, merged as two sorted
streams: memory stays bounded whatever the number of objects.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Iterable, Iterator, Optional, Sequence

import apache_beam as beam

from streaming import metrics, names
from streaming.adapters import object_resource

_LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Scope:
    """One bucket and name prefix to reconcile."""
    bucket: str
    prefix: str = ""


def scopes(buckets: Sequence[str], prefixes: Optional[Sequence[str]]) -> list[Scope]:
    """Every (bucket, include prefix) pair; the whole bucket where no prefix is given."""
    return [Scope(b, p) for b in buckets for p in (prefixes or [""])]


def known_query(table: str, dead_letter_table: Optional[str] = None,
                fingerprint: Optional[str] = None, after: Optional[str] = None) -> str:
    """One query, in name order, for the (name, generation) pairs that need no work:
    an embedding row (of `fingerprint` when given) or, with `dead_letter_table`, a
    dead letter. Parameters: @bucket, @prefix (and @fingerprint, @after when used)."""
    from analysis.sql import table_ref
    after_sql = " AND name > @after" if after is not None else ""
    rows = (f"SELECT name, generation FROM {table_ref(table)} "
            "WHERE bucket = @bucket AND STARTS_WITH(name, @prefix) "
            "AND event_type = 'OBJECT_FINALIZE'" + after_sql)
    if fingerprint:
        rows += " AND model_fingerprint = @fingerprint"
    parts = [rows]
    if dead_letter_table:
        parts.append(f"SELECT name, generation FROM {table_ref(dead_letter_table)} "
                     "WHERE bucket = @bucket AND STARTS_WITH(name, @prefix) "
                     "AND generation IS NOT NULL" + after_sql)
    return " UNION ALL ".join(parts) + " ORDER BY name, generation"


def known_generations(bq_client, table: str, scope: Scope, *,
                      dead_letter_table: Optional[str] = None,
                      fingerprint: Optional[str] = None,
                      after: Optional[str] = None,
                      page_size: int = 10_000) -> Iterator[tuple[str, int]]:
    """(name, generation) pairs from `known_query`, streamed page by page. A table that
    does not exist yet holds nothing."""
    from google.api_core.exceptions import NotFound
    from google.cloud import bigquery
    # A table not created yet holds nothing; one missing table must not void the query.
    if not _exists(bq_client, table):
        return
    if dead_letter_table and not _exists(bq_client, dead_letter_table):
        dead_letter_table = None
    params = [bigquery.ScalarQueryParameter("bucket", "STRING", scope.bucket),
              bigquery.ScalarQueryParameter("prefix", "STRING", scope.prefix)]
    if fingerprint:
        params.append(bigquery.ScalarQueryParameter("fingerprint", "STRING", fingerprint))
    if after is not None:
        params.append(bigquery.ScalarQueryParameter("after", "STRING", after))
    sql = known_query(table, dead_letter_table, fingerprint, after)
    try:
        result = bq_client.query(sql, job_config=bigquery.QueryJobConfig(
            query_parameters=params)).result(page_size=page_size)
        for row in result:
            yield row["name"], int(row["generation"])
    except NotFound as e:
        _LOG.info("reconcile: %s; treating it as empty", e)


def _exists(bq_client, table: str) -> bool:
    from google.api_core.exceptions import NotFound
    try:
        bq_client.get_table(names.standard_table_id(table))
    except NotFound:
        return False
    return True


def list_resources(storage_client, bucket: str, prefix: str, after: Optional[str] = None,
                   page_size: int = 1000) -> Iterator[dict[str, Any]]:
    """Object resources (the JSON API shape a notification carries) in name order,
    strictly after `after`; folder placeholders (names ending in /) are left out."""
    blobs = storage_client.list_blobs(bucket, prefix=prefix or None, page_size=page_size,
                                      start_offset=after or None)
    for blob in blobs:
        if (after is not None and blob.name <= after) or blob.name.endswith("/"):
            continue
        yield object_resource(blob)


def mark_known(resources: Iterable[dict[str, Any]], known: Iterable[tuple[str, int]]
               ) -> Iterator[tuple[dict[str, Any], bool]]:
    """Each resource with whether its (name, generation) is in `known`.

    Both inputs must be in name order (a listing and an ORDER BY name query): they are
    merged in one pass, holding only the generations of the current name.

    Raises:
      ValueError: if either input is out of name order (a merge would miss matches).
    """
    known = iter(known)
    pending = next(known, None)
    name_seen, generations = None, set()
    last_listed, last_known = None, None
    for resource in resources:
        name, generation = resource["name"], int(resource["generation"])
        if last_listed is not None and name < last_listed:
            raise ValueError(f"listing out of name order: {name!r} after {last_listed!r}")
        last_listed = name
        while pending is not None and pending[0] <= name:
            if last_known is not None and pending[0] < last_known:
                raise ValueError(f"query out of name order: {pending[0]!r} after "
                                 f"{last_known!r}")
            last_known = pending[0]
            if pending[0] != name_seen:
                name_seen, generations = pending[0], set()
            generations.add(pending[1])
            pending = next(known, None)
        yield resource, name == name_seen and generation in generations


def unprocessed(resources: Iterable[dict[str, Any]],
                known: Iterable[tuple[str, int]]) -> Iterator[dict[str, Any]]:
    """The resources whose (name, generation) is not in `known` (see `mark_known`)."""
    return (resource for resource, done in mark_known(resources, known) if not done)


def ref_of(resource: dict[str, Any], source: str):
    """The ImageRef a notification for `resource` would give (one rule for both)."""
    from publisher.messages import notification_for
    from streaming.notifications import parse_notification
    ref = parse_notification(*notification_for(resource))
    return dataclasses.replace(ref, source=source)


class _CatchUpFn(beam.DoFn):
    """Scope -> ImageRef of every listed generation with no row and no dead letter."""

    def __init__(self, table: str, dead_letter_table: Optional[str], local: bool):
        self._table, self._dead_letter_table, self._local = table, dead_letter_table, local

    def setup(self):
        from streaming import endpoints
        project = names.parse_table_id(self._table)[0]
        self._storage = endpoints.storage_client(self._local, project)
        self._bq = endpoints.bigquery_client(self._local, project)

    def process(self, scope: Scope) -> Iterator:
        known = known_generations(self._bq, self._table, scope,
                                  dead_letter_table=self._dead_letter_table)
        found = 0
        for resource in unprocessed(list_resources(self._storage, scope.bucket, scope.prefix),
                                    known):
            found += 1
            metrics.count("catch_up.found")
            yield ref_of(resource, "catchup")
        _LOG.warning("catch-up gs://%s/%s: %d object generation(s) with no row or dead "
                     "letter, embedding them", scope.bucket, scope.prefix, found)


class CatchUp(beam.PTransform):
    """ImageRefs for what the tables lack under each scope: once at start, and every
    `every_secs` seconds if given (a streaming job's periodic reconciliation)."""

    def __init__(self, scope_list: Sequence[Scope], table: str,
                 dead_letter_table: Optional[str] = None, local: bool = False,
                 every_secs: Optional[float] = None):
        super().__init__()
        self._scopes, self._every = list(scope_list), every_secs
        self._fn = _CatchUpFn(table, dead_letter_table, local)

    def expand(self, pbegin):
        scope_list = self._scopes
        if self._every:
            from apache_beam.transforms.periodicsequence import PeriodicImpulse
            ticks = pbegin | "Every interval" >> PeriodicImpulse(fire_interval=self._every)
            todo = ticks | "Scopes" >> beam.FlatMap(lambda _: scope_list)
        else:
            todo = pbegin | "Scopes" >> beam.Create(scope_list)
        return todo | "Find unprocessed" >> beam.ParDo(self._fn)
