"""Catch-up: find the object generations that have neither a row nor a dead letter,
and the rows whose object is gone.

Two things leave an image without a row: a notification that was taken but never
finished (Beam's local runner acknowledges Pub/Sub messages when it pulls them, so a
killed job loses what it had in flight), and a notification that never arrived (a
bucket notification or subscription created after the uploads, retention expired).
Both are found the same way: list the watched buckets/prefixes and compare them with
what the tables already hold. The job does it when it starts (and, opt-in, every N
minutes) and embeds what it finds through the same pipeline; `embed-backfill
--skip-existing` does it for an operator, on any runner. Generations whose dead letters
are all retryable (a transient cause) are embedded again, up to
`failures.MAX_ATTEMPTS` tries. A deletion that never reached the job (acked at a kill,
a subscription created late) would leave its object current forever: every current
row whose generation the listing lacks gets a tombstone in the same pass.

The listing is compared in steps of `CHUNK` objects, each with one query for the same
name range, both in name order and merged as two sorted streams: memory holds one step
whatever the number of objects, and the job's live work runs between steps.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.coders import StrUtf8Coder
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.utils.timestamp import Duration, Timestamp

from streaming import failures, metrics
from streaming.config import names
from streaming.sources.contract import notification_for
from streaming.sources.notifications import parse_notification
from streaming.stages import filters
from streaming.support.library_patches import object_resource

_LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Scope:
    """One bucket and name prefix to reconcile."""

    bucket: str
    prefix: str = ""


def scopes(buckets: Sequence[str], prefixes: Sequence[str] | None) -> list[Scope]:
    """Every (bucket, include prefix) pair; the whole bucket where no prefix is given."""
    return [Scope(b, p) for b in buckets for p in (prefixes or [""])]


@dataclasses.dataclass(frozen=True)
class Known:
    """What the tables hold for one (name, generation)."""

    name: str
    generation: int
    embedded: bool = False  # a row (of the fingerprint asked for, if one was)
    finalized: bool = False  # any embedding row
    deleted: bool = False  # a tombstone row
    dead_final: bool = False  # a dead letter that no retry can fix
    attempts: int = 0  # tries that ended in retryable dead letters

    def merged(self, other: Known) -> Known:
        return Known(
            self.name,
            self.generation,
            self.embedded or other.embedded,
            self.finalized or other.finalized,
            self.deleted or other.deleted,
            self.dead_final or other.dead_final,
            max(self.attempts, other.attempts),
        )


_KNOWN_COLUMNS = ("embedded", "finalized", "deleted", "dead_final", "attempts")


def known_query(
    table: str,
    dead_letter_table: str | None = None,
    fingerprint: str | None = None,
    after: str | None = None,
    until: str | None = None,
) -> str:
    """One query, in (name, generation) order, for what the tables hold per generation
    (the `Known` columns): rows (embedded of `fingerprint` when given, finalized,
    deleted) and, with `dead_letter_table`, dead letters (final, attempts).
    Parameters: @bucket, @prefix (and @fingerprint, @after, @until when used)."""
    after_sql = (" AND name > @after" if after is not None else "") + (
        " AND name <= @until" if until is not None else ""
    )
    where = "WHERE bucket = @bucket AND STARTS_WITH(name, @prefix)" + after_sql
    finalize = "event_type = 'OBJECT_FINALIZE'"
    embedded = f"{finalize} AND model_fingerprint = @fingerprint" if fingerprint else finalize
    parts = [
        f"SELECT name, generation, LOGICAL_OR({embedded}) AS embedded, "
        f"LOGICAL_OR({finalize}) AS finalized, "
        "LOGICAL_OR(event_type = 'OBJECT_DELETE') AS deleted, "
        "FALSE AS dead_final, 0 AS attempts "
        f"FROM {names.table_ref(table)} {where} GROUP BY name, generation"
    ]
    if dead_letter_table:
        parts.append(
            "SELECT name, generation, FALSE AS embedded, FALSE AS finalized, "
            "FALSE AS deleted, LOGICAL_OR(NOT IFNULL(retryable, FALSE)) AS dead_final, "
            "MAX(IFNULL(attempt, 0)) + 1 AS attempts "
            f"FROM {names.table_ref(dead_letter_table)} {where} "
            "AND generation IS NOT NULL GROUP BY name, generation"
        )
    return " UNION ALL ".join(parts) + " ORDER BY name, generation"


def known_generations(
    bq_client,
    table: str,
    scope: Scope,
    *,
    dead_letter_table: str | None = None,
    fingerprint: str | None = None,
    after: str | None = None,
    until: str | None = None,
    page_size: int = 10_000,
) -> Iterator[Known]:
    """`Known` per (name, generation) from `known_query`, streamed page by page. A table
    that does not exist yet holds nothing."""
    from google.api_core.exceptions import NotFound
    from google.cloud import bigquery

    # A table not created yet holds nothing; one missing table must not void the query.
    if not _exists(bq_client, table):
        return
    if dead_letter_table and not _exists(bq_client, dead_letter_table):
        dead_letter_table = None
    params = [
        bigquery.ScalarQueryParameter("bucket", "STRING", scope.bucket),
        bigquery.ScalarQueryParameter("prefix", "STRING", scope.prefix),
    ]
    if fingerprint:
        params.append(bigquery.ScalarQueryParameter("fingerprint", "STRING", fingerprint))
    if after is not None:
        params.append(bigquery.ScalarQueryParameter("after", "STRING", after))
    if until is not None:
        params.append(bigquery.ScalarQueryParameter("until", "STRING", until))
    sql = known_query(table, dead_letter_table, fingerprint, after, until)
    try:
        result = bq_client.query(
            sql, job_config=bigquery.QueryJobConfig(query_parameters=params)
        ).result(page_size=page_size)
        for row in result:
            yield Known(
                row["name"],
                int(row["generation"]),
                **{c: row[c] or (0 if c == "attempts" else False) for c in _KNOWN_COLUMNS},
            )
    except NotFound as e:
        _LOG.info("reconcile: %s; treating it as empty", e)


def _exists(bq_client, table: str) -> bool:
    from google.api_core.exceptions import NotFound

    try:
        bq_client.get_table(names.standard_table_id(table))
    except NotFound:
        return False
    return True


def list_resources(
    storage_client, bucket: str, prefix: str, after: str | None = None, page_size: int = 1000
) -> Iterator[dict[str, Any]]:
    """Object resources (the JSON API shape a notification carries) in name order,
    strictly after `after`; folder placeholders (names ending in /) are left out."""
    blobs = storage_client.list_blobs(
        bucket, prefix=prefix or None, page_size=page_size, start_offset=after or None
    )
    for blob in blobs:
        if (after is not None and blob.name <= after) or blob.name.endswith("/"):
            continue
        yield object_resource(blob)


EMBED, DONE, GONE = "embed", "done", "gone"


@dataclasses.dataclass(frozen=True)
class Finding:
    """One outcome of the comparison: a listed generation to `EMBED` (its `attempt`-th
    try) or already `DONE`, or a generation with a current row that is `GONE` from the
    bucket (deleted while its notification could not reach the job): a tombstone."""

    resource: dict[str, Any]
    action: str
    attempt: int = 0


def compare(
    resources: Iterable[dict[str, Any]],
    known: Iterable[Known],
    bucket: str,
    retry_dead_letters: bool = False,
    max_attempts: int = failures.MAX_ATTEMPTS,
) -> Iterator[Finding]:
    """Merges a listing with what the tables hold, in one pass over both.

    Both inputs must be in name order (a listing and an ORDER BY name query); only the
    current name's generations are held. A listed generation is `DONE` if it has a row,
    or dead letters that are final or have used up `max_attempts` (unless
    `retry_dead_letters`); otherwise it is embedded (again). Every generation with an
    embedding row and no tombstone that the listing lacks is `GONE`.

    Raises:
      ValueError: if either input is out of name order (a merge would miss matches).
    """
    groups = _by_name(known)
    pending = next(groups, None)
    last_listed = None
    for resource in resources:
        name, generation = resource["name"], int(resource["generation"])
        if last_listed is not None and name < last_listed:
            raise ValueError(f"listing out of name order: {name!r} after {last_listed!r}")
        last_listed = name
        while pending is not None and pending[0] < name:
            yield from _gone(bucket, *pending, live=None)
            pending = next(groups, None)
        states: dict[int, Known] = {}
        if pending is not None and pending[0] == name:
            states = pending[1]
            yield from _gone(bucket, *pending, live=generation)
            pending = next(groups, None)
        yield _finding(resource, states.get(generation), retry_dead_letters, max_attempts)
    while pending is not None:
        yield from _gone(bucket, *pending, live=None)
        pending = next(groups, None)


def live_generation(storage_client, bucket: str, name: str) -> int | None:
    """The live generation of gs://bucket/name now (one GET of its metadata), or None
    if it has none (deleted; in a versioned bucket, only noncurrent versions left)."""
    blob = storage_client.bucket(bucket).get_blob(name)
    return int(blob.generation) if blob is not None and blob.generation else None


def confirmed(findings: Iterable[Finding], live: Callable[[str], int | None]) -> Iterator[Finding]:
    """The findings, less every `GONE` whose generation is live after all.

    A listing and a query are taken at two moments: an object uploaded (or overwritten)
    after the listing, whose row lands before the query, looks deleted to `compare`. Its
    tombstone would hide a live image for good (the next pass counts it as done), so
    each `GONE` is confirmed by `live(name)`, read after the query: a generation that is
    live is left alone (counted `catch_up.gone_live`); one that is not is gone, or
    replaced by a newer one whose own row ranks first.
    """
    for finding in findings:
        if finding.action == GONE and live(finding.resource["name"]) == int(
            finding.resource["generation"]
        ):
            metrics.count("catch_up.gone_live")
            continue
        yield finding


def step_findings(
    storage_client,
    bq_client,
    table: str,
    dead_letter_table: str | None,
    scope: Scope,
    after: str | None,
    chunk: int,
) -> tuple[list[Finding], str | None]:
    """One step of a pass: the next `chunk` listed objects after `after`, compared with
    the tables for the same name range (`compare`), each `GONE` confirmed (`confirmed`).
    Returns the findings and the last name compared, or None if the listing ended."""
    listed = list(
        itertools.islice(list_resources(storage_client, scope.bucket, scope.prefix, after), chunk)
    )
    until = listed[-1]["name"] if len(listed) == chunk else None
    known = known_generations(
        bq_client, table, scope, after=after, until=until, dead_letter_table=dead_letter_table
    )
    found = list(compare(listed, known, scope.bucket))
    return list(
        confirmed(found, lambda name: live_generation(storage_client, scope.bucket, name))
    ), until


def _finding(resource, state: Known | None, retry_dead_letters: bool, max_attempts: int) -> Finding:
    if state is None:
        return Finding(resource, EMBED)
    if state.embedded:
        return Finding(resource, DONE)
    if (
        state.attempts
        and not retry_dead_letters
        and (state.dead_final or state.attempts >= max_attempts)
    ):
        return Finding(resource, DONE)
    return Finding(resource, EMBED, state.attempts)


def _gone(bucket: str, name: str, states: dict[int, Known], live: int | None) -> Iterator[Finding]:
    for generation, state in sorted(states.items()):
        if generation != live and state.finalized and not state.deleted:
            yield Finding({"bucket": bucket, "name": name, "generation": str(generation)}, GONE)


def _by_name(known: Iterable[Known]) -> Iterator[tuple[str, dict[int, Known]]]:
    """(name, {generation: Known}) groups of a name-ordered stream."""
    name, states = None, {}
    for k in known:
        if name is not None and k.name < name:
            raise ValueError(f"query out of name order: {k.name!r} after {name!r}")
        if k.name != name:
            if name is not None:
                yield name, states
            name, states = k.name, {}
        states[k.generation] = states[k.generation].merged(k) if k.generation in states else k
    if name is not None:
        yield name, states


def ref_of(
    resource: dict[str, Any], source: str, event_type: str = "OBJECT_FINALIZE", attempt: int = 0
):
    """The ImageRef a notification for `resource` would give (one rule for both)."""
    ref = parse_notification(*notification_for(resource, event_type=event_type, attempt=attempt))
    return dataclasses.replace(ref, source=source)


def finding_ref(finding: Finding, source: str):
    """The ImageRef that acts on a finding: an OBJECT_DELETE (a tombstone) for a `GONE`
    generation, else the object's finalize at its attempt."""
    if finding.action == GONE:
        return ref_of(finding.resource, source, event_type="OBJECT_DELETE")
    return ref_of(finding.resource, source, attempt=finding.attempt)


# Objects listed (and compared) per step of the catch-up. Each step is its own timer
# firing, so its findings go down the pipeline at once and the job's other work (live
# notifications) runs between steps; memory holds one step.
CHUNK = 1000
# The pause between steps. Beam's local runner reads its sources only in a moment when
# no timer fires: a step set for "now" again and again would hold back every live
# notification until the whole catch-up is done.
STEP_PAUSE_SECS = 0.5
# A step that fails (Cloud Storage or BigQuery away past their clients' retries, a
# permission missing) is tried again after STEP_RETRY_SECS, doubling up to
# MAX_STEP_RETRY_SECS, STEP_TRIES times in all; then the pass is abandoned with an
# error line, and the next pass starts it again. A failure never fails the job
# (locally: after four bundle retries) nor retries one timer forever.
STEP_RETRY_SECS = failures.CATCH_UP_RETRY_SECS
MAX_STEP_RETRY_SECS = failures.CATCH_UP_MAX_RETRY_SECS
STEP_TRIES = failures.CATCH_UP_TRIES
# A pass whose last step is older than this lost its timer (a worker moved, a runner
# that dropped it): the next tick starts it again instead of skipping for good.
STALE_SECS = 1800.0
# The interval of the single tick that starts the one pass of a Dataflow job without
# --catch_up_every_minutes (see `CatchUp`): in effect, never again.
ONCE_SECS = 100 * 365 * 86_400.0


def step_retry_secs(tries: int) -> float | None:
    """The wait before the next try of a step that failed `tries` times in a row, or
    None when the pass is to be abandoned."""
    if tries >= STEP_TRIES:
        return None
    return min(STEP_RETRY_SECS * 2 ** (tries - 1), MAX_STEP_RETRY_SECS)


def new_pass(now: float) -> dict[str, Any]:
    """The cursor of a pass that starts at `now` (seconds since the epoch)."""
    return {"after": None, "found": 0, "gone": 0, "steps": 0, "tries": 0, "at": now}


def running(cursor: str | None, now: float) -> bool:
    """Whether a tick finds a pass running: a cursor whose last step is recent."""
    if cursor is None:
        return False
    return now - json.loads(cursor).get("at", 0.0) < STALE_SECS


class _CatchUpFn(beam.DoFn):
    """(scope key, Scope) -> ImageRef of every listed generation the job would embed that
    has no row (nor a final dead letter), and a deletion for every current row whose
    generation is gone, one `CHUNK` of the listing per timer firing.

    The cursor (the last name compared, the counts, the time of the last step) is the
    key's state: on Dataflow a pass survives a worker's restart; a tick that arrives
    while a pass is running is ignored, unless the pass has gone stale (`STALE_SECS`).
    """

    CURSOR = ReadModifyWriteStateSpec("cursor", StrUtf8Coder())
    NEXT = TimerSpec("next", TimeDomain.REAL_TIME)

    def __init__(
        self,
        table: str,
        dead_letter_table: str | None,
        local: bool,
        accept: filters.FilterConfig | None,
        chunk: int = CHUNK,
    ):
        self._table, self._dead_letter_table, self._local = table, dead_letter_table, local
        self._accept = accept or filters.FilterConfig()
        self._chunk = chunk

    def setup(self):
        from streaming.support import clients

        project = names.parse_table_id(self._table)[0]
        self._storage = clients.storage_client(self._local, project)
        self._bq = clients.bigquery_client(self._local, project)

    def process(
        self, element, cursor=beam.DoFn.StateParam(CURSOR), next_step=beam.DoFn.TimerParam(NEXT)
    ) -> Iterator:
        _, scope = element
        now, held = time.time(), cursor.read()
        if running(held, now):
            _LOG.info(
                "catch-up gs://%s/%s is still running; this tick is skipped",
                scope.bucket,
                scope.prefix,
            )
            return
        if held is not None:
            metrics.count("catch_up.restarted")
            _LOG.warning(
                "catch-up gs://%s/%s: its last step was %.0f s ago; starting the pass again",
                scope.bucket,
                scope.prefix,
                now - json.loads(held).get("at", 0.0),
            )
        cursor.write(json.dumps(new_pass(now)))
        next_step.set(Timestamp.now())

    @on_timer(NEXT)
    def step(
        self,
        key=beam.DoFn.KeyParam,
        cursor=beam.DoFn.StateParam(CURSOR),
        next_step=beam.DoFn.TimerParam(NEXT),
    ) -> Iterator:
        held = cursor.read()
        if held is None:  # the pass was abandoned or ended; a stray firing
            return
        scope = Scope(*json.loads(key))
        progress = json.loads(held)
        progress["steps"] += 1
        progress["at"] = time.time()
        metrics.count("catch_up.steps")
        try:
            todo, until = step_findings(
                self._storage,
                self._bq,
                self._table,
                self._dead_letter_table,
                scope,
                progress["after"],
                self._chunk,
            )
        except Exception as e:  # noqa: BLE001 - any service error: tried again, then dropped
            self._failed(scope, progress, cursor, next_step, e)
            return
        progress["tries"] = 0
        for finding in todo:
            if finding.action == DONE:
                continue
            if finding.action == GONE:
                progress["gone"] += 1
                metrics.count("catch_up.gone")
            elif not wanted(finding.resource, self._accept):
                continue
            else:
                progress["found"] += 1
                metrics.count("catch_up.found")
            yield finding_ref(finding, "catchup")
        if until is not None:
            progress["after"] = until
            cursor.write(json.dumps(progress))
            next_step.set(Timestamp.now() + Duration(seconds=STEP_PAUSE_SECS))
            return
        cursor.clear()
        _LOG.warning(
            "catch-up gs://%s/%s: %d object generation(s) to embed, %d deleted "
            "while the job could not see it (%d step(s))",
            scope.bucket,
            scope.prefix,
            progress["found"],
            progress["gone"],
            progress["steps"],
        )

    def _failed(self, scope: Scope, progress: dict, cursor, next_step, error: Exception) -> None:
        """A step's service error: the step again after a backoff, the cursor kept, or
        the pass abandoned once `STEP_TRIES` are spent; one line each, never a raise."""
        metrics.count("catch_up.errors")
        progress["tries"] = progress.get("tries", 0) + 1
        wait = step_retry_secs(progress["tries"])
        where = f"gs://{scope.bucket}/{scope.prefix}"
        text = f"{type(error).__name__}: {error}"[:300]
        if wait is None:
            cursor.clear()
            metrics.count("catch_up.abandoned")
            _LOG.error(
                "catch-up %s abandoned after %d failed tries of one step (%s); the next "
                "pass (a restart, --catch_up_every_minutes, or embed-backfill "
                "--skip-existing) covers it",
                where,
                progress["tries"],
                text,
            )
            return
        _LOG.warning(
            "catch-up %s: a step failed (%s); trying it again in %.0f s (%d of %d)",
            where,
            text,
            wait,
            progress["tries"],
            STEP_TRIES,
        )
        cursor.write(json.dumps(progress))
        next_step.set(Timestamp.now() + Duration(seconds=wait))


def wanted(resource: dict[str, Any], accept: filters.FilterConfig) -> bool:
    """The job's own filters, before anything is emitted: non-images and the job's own
    outputs are never sent down the pipeline."""
    if filters.object_skip_reason(ref_of(resource, "catchup"), accept) is None:
        return True
    metrics.count("catch_up.skipped")
    return False


def scope_key(scope: Scope) -> tuple[str, Scope]:
    """A scope keyed for the catch-up's state (its bucket and prefix as JSON)."""
    return json.dumps([scope.bucket, scope.prefix]), scope


class CatchUp(beam.PTransform):
    """ImageRefs for what the tables lack under each scope: once at start, and every
    `every_secs` seconds if given (a streaming job's periodic reconciliation).

    Where the catch-up's timers must outlive its input (`unbounded_ticks`: Dataflow),
    the scopes come from a `PeriodicImpulse`, every `every_secs` or once (`ONCE_SECS`),
    never from a `Create`: a bounded branch's watermark is at the end of the global window
    at once, and a runner may drop or never fire the processing-time timers of a window
    its input watermark has passed (Beam's runner core drops such timers); the
    impulse's watermark stays at its last tick. The local runner cannot expand a
    `PeriodicImpulse` (a splittable DoFn) and fires those timers: it starts from
    `Create`, once.
    """

    def __init__(
        self,
        scope_list: Sequence[Scope],
        table: str,
        dead_letter_table: str | None = None,
        local: bool = False,
        every_secs: float | None = None,
        accept: filters.FilterConfig | None = None,
        chunk: int = CHUNK,
        unbounded_ticks: bool = False,
    ):
        super().__init__()
        self._scopes, self._every, self._unbounded = list(scope_list), every_secs, unbounded_ticks
        self._fn = _CatchUpFn(table, dead_letter_table, local, accept, chunk)

    def expand(self, pbegin):
        scope_list = self._scopes
        if self._every or self._unbounded:
            from apache_beam.transforms.periodicsequence import PeriodicImpulse, RebaseMode

            # The first tick when the job runs (not when its graph was built); no stop,
            # so the watermark never reaches the end of the window.
            ticks = pbegin | "Every interval" >> PeriodicImpulse(
                fire_interval=self._every or ONCE_SECS, rebase=RebaseMode.REBASE_START
            )
            todo = ticks | "Scopes" >> beam.FlatMap(lambda _: scope_list)
        else:
            todo = pbegin | "Scopes" >> beam.Create(scope_list)
        return (
            todo
            | "Key by scope" >> beam.Map(scope_key)
            | "Find unprocessed" >> beam.ParDo(self._fn)
        )
