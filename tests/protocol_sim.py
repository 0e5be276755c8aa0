"""A deterministic model of the whole reconciliation protocol, for stateful tests.

Services are fakes (a bucket with generations, versioned or not; a subscription that
loses, duplicates and reorders; BigQuery as DuckDB tables; faults of each class); every
decision is the job's own code: the notification contract and parser, the filter's
`route`, the load stage's `load_image` and `GcsReader`, the row builders and row keys,
the dead letters and their retry rules, the writer's failure classes, the catch-up's
DoFn (its listing, query, comparison, confirmation and step retries), the backfill's
comparison, the weights a process starts with, and the shipped current view
(`schemas/sql/current_embeddings.sql`, transpiled to DuckDB).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import os
import types
from typing import Any

import duckdb
import numpy as np
import sqlglot
from google.api_core import exceptions as gexc

import schemas
from publisher.backfill import Filters
from streaming import failures
from streaming.config import names
from streaming.config.flags import DEFAULT_EXTENSIONS
from streaming.model import weights_watch
from streaming.records import DeadLetter, ImageInfo, Rejected, Skipped
from streaming.sinks import bigquery as bq_sink
from streaming.sinks import files
from streaming.sources import catch_up
from streaming.sources.contract import notification_for
from streaming.sources.notifications import parse_notification, raw_prefix
from streaming.stages import filters, load
from tests import fixtures

BUCKET = "photos"
TABLE = "sim-project:sim.embeddings"
DEAD_TABLE = "sim-project:sim.dead_letters"
CHUNK = 2  # small, so a pass takes several steps
# Names and content types: images by extension, one by content type alone, one not an
# image, one whose bytes are not an image.
OBJECTS = {
    "a.jpg": "image/jpeg",
    "c": "image/jpeg",
    "notes.txt": "text/plain",
    "zz-broken.jpg": "image/jpeg",
}
BROKEN = {"zz-broken.jpg"}
CONFIG = filters.FilterConfig(
    extensions=filters.split_list(DEFAULT_EXTENSIONS, lower=True),
    content_types=("image/",),
)
BACKFILL_FILTERS = Filters(extensions=CONFIG.extensions, content_types=CONFIG.content_types)
IMAGE = fixtures.jpeg(8, 8, seed=1)
MAX_BYTES = 1 << 20

# Faults, each as the service would answer.
READ_FAULTS = {
    "unavailable": lambda: gexc.ServiceUnavailable("storage backend"),
    "forbidden": lambda: gexc.Forbidden("storage.objects.get denied"),
}
BIGQUERY_FAULTS = {
    "unavailable": lambda: gexc.ServiceUnavailable("backend error"),
    "forbidden": lambda: gexc.Forbidden("bigquery.tables.updateData denied"),
    "schema": lambda: gexc.BadRequest("Input schema has more fields than BigQuery schema"),
    "table_gone": lambda: gexc.NotFound("Not found: Table sim-project:sim.embeddings"),
}
QUERY_FAULTS = {
    "unavailable": lambda: gexc.ServiceUnavailable("backend error"),
    "forbidden": lambda: gexc.Forbidden("bigquery.jobs.create denied"),
    "bad_request": lambda: gexc.BadRequest("Query error"),
}


@dataclasses.dataclass
class Version:
    generation: int
    content_type: str
    data: bytes
    live: bool = True


class Bucket:
    """Objects with generations; a versioned bucket keeps noncurrent versions. Every
    change returns the notifications Cloud Storage sends for it."""

    def __init__(self, versioned: bool):
        self.versioned = versioned
        self.objects: dict[str, list[Version]] = {}
        self._next = 1_000
        self.read_fault: str | None = None
        self.list_fault: str | None = None
        self.write_fault = False  # the vectors' bucket

    def live(self, name: str) -> Version | None:
        return next((v for v in self.objects.get(name, []) if v.live), None)

    def upload(self, name: str) -> list[tuple[bytes, dict]]:
        self._next += 1
        old = self.live(name)
        data = b"not an image" if name in BROKEN else IMAGE
        if old is not None:
            old.live = False
        versions = self.objects.setdefault(name, [])
        if not self.versioned:
            versions.clear()
        new = Version(self._next, OBJECTS[name], data)
        versions.append(new)
        sent = [self.notification(name, new, "OBJECT_FINALIZE")]
        if old is not None:
            sent.append(
                self.notification(
                    name, old, "OBJECT_ARCHIVE" if self.versioned else "OBJECT_DELETE"
                )
            )
        return sent

    def delete(self, name: str) -> list[tuple[bytes, dict]]:
        old = self.live(name)
        if old is None:
            return []
        old.live = False
        if not self.versioned:
            self.objects[name].remove(old)
        return [
            self.notification(name, old, "OBJECT_ARCHIVE" if self.versioned else "OBJECT_DELETE")
        ]

    def resource(self, name: str, version: Version) -> dict[str, Any]:
        return {
            "kind": "storage#object",
            "bucket": BUCKET,
            "name": name,
            "generation": str(version.generation),
            "metageneration": "1",
            "contentType": version.content_type,
            "size": str(len(version.data)),
            "timeCreated": "2026-12-01T00:00:00.000Z",
            "updated": "2026-12-01T00:00:00.000Z",
        }

    def notification(self, name: str, version: Version, event: str) -> tuple[bytes, dict]:
        data, attributes = notification_for(self.resource(name, version), event_type=event)
        del attributes["backfill"]  # the bucket's own notification
        return data, attributes


class _Blob:
    def __init__(self, bucket: Bucket, name: str, version: Version | None, generation=None):
        self._bucket, self.name, self._version = bucket, name, version
        self._generation = generation
        self._properties = bucket.resource(name, version) if version else {}
        self.generation = version.generation if version else None

    def download_as_bytes(self, start=0, end=None, retry=None, checksum=None) -> bytes:
        if self._bucket.read_fault:
            raise READ_FAULTS[self._bucket.read_fault]()
        found = next(
            (
                v
                for v in self._bucket.objects.get(self.name, [])
                if v.generation == self._generation
            ),
            None,
        )
        if found is None:
            raise gexc.NotFound(f"gs://{BUCKET}/{self.name}#{self._generation}")
        return found.data[start : (end + 1) if end is not None else None]


class _BucketHandle:
    def __init__(self, bucket: Bucket):
        self._bucket = bucket

    def get_blob(self, name: str, generation=None, retry=None):
        if self._bucket.read_fault:
            raise READ_FAULTS[self._bucket.read_fault]()
        versions = self._bucket.objects.get(name, [])
        if generation is None:
            version = self._bucket.live(name)
        else:
            version = next((v for v in versions if v.generation == generation), None)
        return _Blob(self._bucket, name, version) if version else None

    def blob(self, name: str, generation=None):
        return _Blob(self._bucket, name, None, generation)


class Storage:
    """The google-cloud-storage client surface the job uses, over a `Bucket`."""

    def __init__(self, bucket: Bucket):
        self._bucket = bucket

    def bucket(self, name: str) -> _BucketHandle:
        assert name == BUCKET
        return _BucketHandle(self._bucket)

    def list_blobs(self, bucket, prefix=None, page_size=None, start_offset=None):
        if self._bucket.list_fault:
            raise READ_FAULTS[self._bucket.list_fault]()
        for name in sorted(self._bucket.objects):
            version = self._bucket.live(name)
            if version is not None and (start_offset is None or name >= start_offset):
                yield _Blob(self._bucket, name, version)


_VIEW = sqlglot.transpile(
    schemas.sql("current_embeddings.sql").format(
        current="current_embeddings", embeddings="embeddings"
    ),
    read="bigquery",
    write="duckdb",
)[0]


@functools.cache
def _duckdb_sql(bigquery_sql: str) -> str:
    return sqlglot.transpile(bigquery_sql, read="bigquery", write="duckdb")[0]


class Tables:
    """BigQuery as DuckDB: the embeddings and dead-letter tables, the shipped current
    view, and the google-cloud-bigquery surface the catch-up uses (get_table, query)."""

    def __init__(self):
        self.db = duckdb.connect()
        self.db.execute(
            "CREATE TABLE embeddings (row_key VARCHAR, bucket VARCHAR, name VARCHAR, "
            "generation BIGINT, event_type VARCHAR, source VARCHAR, processing_time VARCHAR, "
            "model_fingerprint VARCHAR, vector_uri VARCHAR, event_time TIMESTAMP)"
        )
        self.db.execute(
            "CREATE TABLE dead_letters (row_key VARCHAR, bucket VARCHAR, name VARCHAR, "
            "generation BIGINT, stage VARCHAR, reason VARCHAR, retryable BOOLEAN, attempt BIGINT, "
            "event_time TIMESTAMP)"
        )
        self.db.execute(_VIEW)
        self.query_fault: str | None = None
        self.before_query = None  # what happens while a query runs
        self.clock = 0

    def insert(self, table: str, rows: list[dict]) -> list[tuple[str, dict, list]]:
        """Appends rows; returns those refused (a value its column cannot hold), as the
        writer hands them on: (table, row, errors)."""
        columns = [c[0] for c in self.db.execute(f"DESCRIBE {table}").fetchall()]
        refused = []
        for row in rows:
            self.clock += 1
            values = dict(row, processing_time=f"{self.clock:012d}")
            try:
                self.db.execute(
                    f"INSERT INTO {table} VALUES ({', '.join('?' * len(columns))})",
                    [values.get(c) for c in columns],
                )
            except duckdb.ConversionException as e:
                refused.append((table, row, [{"reason": "invalid", "message": str(e)[:200]}]))
        return refused

    def current(self) -> dict[str, dict]:
        cursor = self.db.execute("SELECT * FROM current_embeddings")
        columns = [c[0] for c in cursor.description]
        return {row[columns.index("name")]: dict(zip(columns, row)) for row in cursor.fetchall()}

    def dead_letters(self) -> list[dict]:
        cursor = self.db.execute("SELECT * FROM dead_letters")
        columns = [c[0] for c in cursor.description]
        return [dict(zip(columns, row)) for row in cursor.fetchall()]

    # google-cloud-bigquery's surface
    def get_table(self, table_id):
        return table_id

    def query(self, sql: str, job_config=None):
        if self.before_query is not None:
            hook, self.before_query = self.before_query, None
            hook()
        if self.query_fault:
            raise QUERY_FAULTS[self.query_fault]()
        for table in (TABLE, DEAD_TABLE):
            sql = sql.replace(names.table_ref(table), names.parse_table_id(table)[2])
        params = {p.name: p.value for p in job_config.query_parameters}
        cursor = self.db.execute(_duckdb_sql(sql), params)
        columns = [c[0] for c in cursor.description]
        rows = [dict(zip(columns, r)) for r in cursor.fetchall()]
        return types.SimpleNamespace(result=lambda page_size=None: rows)


class _State:
    """A ReadModifyWriteState and a timer, for driving the catch-up's DoFn."""

    def __init__(self):
        self.value = None
        self.timer = None

    def read(self):
        return self.value

    def write(self, value):
        self.value = value

    def clear(self):
        self.value = None

    def set(self, when):
        self.timer = when


class Model:
    def __init__(self, fingerprint: str):
        self.model_id = f"resnet50@{fingerprint}+onnx"
        self.fingerprint = fingerprint


@dataclasses.dataclass
class Process:
    """One run of the job: what it pulled and has not finished, the rows its writer
    holds, the filter's claims, the catch-up's cursor, the model it embeds with."""

    model: Model
    newest: str  # the fingerprint of the newest weights when it started
    inflight: list = dataclasses.field(default_factory=list)
    rows: list = dataclasses.field(default_factory=list)
    dead: list = dataclasses.field(default_factory=list)
    claims: filters.Claims = dataclasses.field(default_factory=filters.Claims)
    cursor: _State = dataclasses.field(default_factory=_State)


class World:
    """The bucket, the subscription, the tables, the vectors and one job process."""

    def __init__(self, versioned: bool, weights_dir: str, catch_up_on: bool = True):
        # Without the catch-up (Dataflow's default: it acknowledges a message only
        # once its bundle is durable), nothing but notifications reaches the job.
        self.catch_up_on = catch_up_on
        self.bucket = Bucket(versioned)
        self.storage = Storage(self.bucket)
        self.tables = Tables()
        self.subscription: list[tuple[bytes, dict]] = []
        self.vectors: set[str] = set()
        self.bigquery_fault: str | None = None
        self.weights_dir = weights_dir
        self.weights_made = 0
        self.excused: dict[tuple[str, int], set[str]] = collections.defaultdict(set)
        self.outcomes: collections.Counter = collections.Counter()
        self.delivered = 0
        self.dead_letters_lost = 0
        self.lossless = True
        self.fingerprints: list[tuple[str, str]] = []
        self.catch_up = catch_up._CatchUpFn(TABLE, DEAD_TABLE, False, CONFIG, CHUNK)
        self.catch_up._storage, self.catch_up._bq = self.storage, self.tables
        self.process = self.start()

    # --- the job's process
    def start(self) -> Process:
        """A process starts: its model (the newest watched weights, else --weights) and,
        as the job does locally, a catch-up pass."""
        model, _ = weights_watch.starting_model(
            lambda: Model("default"), self.weights_dir, self._build
        )
        newest = f"w{self.weights_made:03d}" if self.weights_made else "default"
        process = Process(model, newest)
        self.process = process
        self.start_pass()
        return process

    def _build(self, path: str) -> Model:
        return Model(os.path.basename(path).split(".")[0])

    def switch_weights(self) -> None:
        self.weights_made += 1
        path = os.path.join(self.weights_dir, f"w{self.weights_made:03d}.weights.h5")
        with open(path, "wb") as f:
            f.write(b"weights")
        os.utime(path, (1_000_000 + self.weights_made, 1_000_000 + self.weights_made))

    def kill(self) -> None:
        """SIGKILL: what was pulled (acknowledged) and not written is gone."""
        self.lost()
        self.start()

    def start_pass(self) -> None:
        if not self.catch_up_on:
            return
        state = self.process.cursor
        self.catch_up.process(catch_up.scope_key(catch_up.Scope(BUCKET)), state, state)

    def pass_running(self) -> bool:
        return self.process.cursor.value is not None

    def step(self, between=None) -> None:
        """One step of the catch-up's pass (the real DoFn's timer callback); `between`
        runs after its listing and before its query."""
        self.tables.before_query = between
        found = list(
            self.catch_up.step(json.dumps([BUCKET, ""]), self.process.cursor, self.process.cursor)
        )
        self.tables.before_query = None
        self.process.inflight.extend(("ref", ref) for ref in found)

    # --- the subscription
    def notify(self, sent) -> None:
        self.subscription.extend(sent)

    def pull(self, index: int) -> None:
        """One message reaches the process (any order); the local runner acks it at pull."""
        self.process.inflight.append(("message",) + self.subscription.pop(index))

    def work(self, index: int) -> None:
        """One pulled message or catch-up ref, through parse, filter, load, embed and the
        vector write, to a row or dead letter in the writer's hands."""
        item = self.process.inflight.pop(index)
        process = self.process
        if item[0] == "message":
            self.delivered += 1
            data, attributes = item[1], item[2]
            try:
                ref = parse_notification(data, attributes)
            except Rejected as e:
                self._dead(DeadLetter("parse", e.reason, str(e), raw=raw_prefix(data, attributes)))
                return
        else:
            ref = item[1]
        where = filters.route(ref, CONFIG, process.claims)
        self.outcomes[where.output] += 1
        if where.output == filters.DELETES:
            process.rows.append(files.tombstone_row(ref))
            return
        if where.output == filters.DEAD:
            self._dead(DeadLetter("filter", where.reason, "", ref=ref))
            return
        if where.output != filters.ACCEPTED:
            return
        reader = load.GcsReader.__new__(load.GcsReader)
        reader._client, reader._retry = self.storage, None
        fault = self.bucket.read_fault
        loaded, stage, decoded, error = load.load_image(
            ref, lambda r: (r, reader.read(r, MAX_BYTES)), "center_crop", 10**8, MAX_BYTES
        )
        if fault and error is not None:
            self.excused[(ref.name, ref.generation)].add(error.reason)
        if isinstance(error, Skipped):
            return
        if error is not None:
            self._dead(DeadLetter(stage, error.reason, str(error), ref=ref))
            return
        info = ImageInfo(loaded, decoded.width, decoded.height, decoded.format)
        uri = files.vector_path("gs://vectors", info, process.model.model_id)
        self.fingerprints.append((process.newest, process.model.fingerprint))
        if self.bucket.write_fault:
            self.excused[(ref.name, ref.generation)].add(failures.VECTOR_WRITE_ERROR)
            self._dead(DeadLetter("write", failures.VECTOR_WRITE_ERROR, "503", ref=ref))
            return
        self.vectors.add(uri)
        process.rows.append(
            files.embedding_row(info, np.zeros(4, np.float32), process.model.model_id, uri)
        )

    def _dead(self, letter: DeadLetter) -> None:
        self.process.dead.append(letter.to_row())

    def flush(self) -> None:
        """The row writer's request: written, or kept by its failure class."""
        process = self.process
        if self.bigquery_fault:
            action = bq_sink.insert_action(BIGQUERY_FAULTS[self.bigquery_fault]())
            # Rows wait (retry, stall, re-create the table); none is dead-lettered for
            # a fault of the service or of its configuration.
            assert action in (bq_sink.RETRY, bq_sink.STALL, bq_sink.MISSING), (
                self.bigquery_fault,
                action,
            )
            return
        rows, dead = process.rows, process.dead
        process.rows, process.dead = [], []
        for failure in self.tables.insert("embeddings", rows):
            dead.append(bq_sink.rejected_row_to_dead_letter(failure).to_row())
        for failure in self.tables.insert("dead_letters", dead):
            again = self.tables.insert("dead_letters", [bq_sink.reduced_dead_letter(failure)])
            self.dead_letters_lost += len(again)

    # --- backfill --skip-existing: its query, then its listing
    def backfill_query(self) -> list | None:
        """The backfill's query; None where it fails (the CLI then stops with an error
        line and publishes nothing)."""
        try:
            return list(
                catch_up.known_generations(
                    self.tables, TABLE, catch_up.Scope(BUCKET), dead_letter_table=DEAD_TABLE
                )
            )
        except gexc.GoogleAPICallError:
            return None

    def backfill_publish(self, known: list) -> None:
        try:
            listing = list(catch_up.list_resources(self.storage, BUCKET, ""))
        except gexc.GoogleAPICallError:
            return
        for finding in catch_up.compare(listing, known, BUCKET):
            gone = finding.action == catch_up.GONE
            if finding.action == catch_up.DONE:
                continue
            if not gone and not BACKFILL_FILTERS.accepts(finding.resource):
                continue
            self.notify(
                [
                    notification_for(
                        finding.resource,
                        event_type="OBJECT_DELETE" if gone else "OBJECT_FINALIZE",
                        attempt=finding.attempt,
                    )
                ]
            )

    # --- settling
    def fault(self, service: str, fault) -> None:
        """`service` answers with `fault` (a key of its faults; None heals it)."""
        if fault and service in ("storage_reads", "vector_writes"):
            self.lost()  # its dead letters are retryable: the catch-up's to repair
        if service == "storage_reads":
            self.bucket.read_fault = fault
        elif service == "storage_listing":
            self.bucket.list_fault = fault
        elif service == "vector_writes":
            self.bucket.write_fault = bool(fault)
        elif service == "bigquery_writes":
            self.bigquery_fault = fault
        else:
            self.tables.query_fault = fault

    def heal(self) -> None:
        self.bucket.read_fault = self.bucket.list_fault = None
        self.bucket.write_fault = False
        self.bigquery_fault = self.tables.query_fault = None

    def drain(self) -> None:
        """Every message and pulled item processed, every row written."""
        while self.subscription or self.process.inflight:
            while self.subscription:
                self.pull(0)
            while self.process.inflight:
                self.work(0)
        self.flush()

    def settle(self) -> None:
        """Services heal, the subscription drains, a running pass ends, and fresh
        catch-up passes run until one finds nothing (a bounded number: the protocol
        must converge)."""
        self.heal()
        self.drain()
        if self.lossless:
            # Every notification arrived: they alone must have got everything right,
            # before any catch-up repairs it (Dataflow's default runs none).
            self.check(final=False)
        self._finish_pass()
        for _ in range(failures.MAX_ATTEMPTS + 3):
            self.start_pass()
            written = self.tables.clock
            if not self._finish_pass() and written == self.tables.clock:
                self.lossless = True
                return
        raise AssertionError("catch-up passes keep finding work once everything settled")

    def _finish_pass(self) -> bool:
        """Steps the running pass to its end and drains what it found; whether it
        found anything."""
        steps, found = 0, False
        while self.pass_running():
            self.step()
            steps += 1
            assert steps < 100, "a catch-up pass does not end"
            found = found or bool(self.process.inflight)
            self.drain()
        return found

    # --- what must hold once settled
    def lost(self) -> None:
        """Something the notifications alone cannot repair happened (a notification lost,
        a kill, a read or write that failed): only the catch-up's next pass makes it
        right. A settled world starts lossless again."""
        self.lossless = False

    def check(self, final: bool = True) -> None:
        current = self.tables.current()
        dead = self.tables.dead_letters()
        for name in OBJECTS:
            version = self.bucket.live(name)
            if version is None:
                assert name not in current, f"{name} is deleted but current: {current[name]}"
                continue
            resource = self.bucket.resource(name, version)
            ref = catch_up.ref_of(resource, "catchup")
            if filters.object_skip_reason(ref, CONFIG) is not None:
                assert name not in current, f"{name} is not an image but current"
                continue
            if name in current:
                row = current[name]
                assert row["generation"] == version.generation, (
                    f"{name}: current at generation {row['generation']}, "
                    f"live is {version.generation}"
                )
                assert row["vector_uri"] in self.vectors, f"{name}: vector does not resolve"
                continue
            letters = [
                d for d in dead if d["name"] == name and d["generation"] == version.generation
            ]
            reasons = {d["reason"] for d in letters}
            expected = {failures.NOT_AN_IMAGE} if name in BROKEN else set()
            excused = self.excused[(name, version.generation)] | expected
            final_letter = any(not d["retryable"] for d in letters) or (
                len(letters) >= failures.MAX_ATTEMPTS
            )
            assert letters and (final_letter or not (self.catch_up_on and final)), (
                f"{name}#{version.generation} exists with neither a current row nor a final "
                f"dead letter (dead letters: {reasons or 'none'})"
            )
            assert reasons <= excused, (
                f"{name}#{version.generation}: dead letters {reasons} that no fault explains"
            )
        for name in current:
            assert self.bucket.live(name) is not None, f"{name} is current but gone"
        assert self.dead_letters_lost == 0, "BigQuery refused dead letters, even reduced"
        stale = [(newest, used) for newest, used in self.fingerprints if newest != used]
        assert not stale, f"embedded with older weights than the newest at start: {stale[:3]}"
        if final:
            assert not self.pass_running(), "a catch-up pass is still running after settling"


def bad_time_notification(bucket: Bucket, name: str) -> list[tuple[bytes, dict]]:
    """The live generation's notification with an `eventTime` that is no time."""
    version = bucket.live(name)
    if version is None:
        return []
    data, attributes = bucket.notification(name, version, "OBJECT_FINALIZE")
    return [(data, dict(attributes, eventTime="not-a-time"))]
