"""Which object events get embedded.

Only OBJECT_FINALIZE is embedded; names must pass the include/exclude prefixes and
carry an accepted extension or content type; and the job never embeds its own outputs
(any name under an output prefix in the same bucket or folder is excluded). A
NONE-format notification has no content type: its type is checked in the load stage,
with the same rule, once the object's metadata is read.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import threading
from collections.abc import Iterable

import apache_beam as beam
from apache_beam import pvalue

from streaming import failures, metrics

# The default of --extensions (embed-stream and embed-backfill), beside the rule that applies it.
from streaming.config.flags import DEFAULT_EXTENSIONS  # noqa: F401
from streaming.config.names import gcs_parts, is_gcs_uri
from streaming.records import DeadLetter, ImageRef

# Why an object is not embedded: the counters `metrics.skipped` names.
SKIPPED_OWN_OUTPUT = metrics.skipped("own_output")
SKIPPED_BY_PREFIX = metrics.skipped("prefix")
SKIPPED_TYPE = metrics.skipped("type")
SKIPPED_DUPLICATE = metrics.skipped("duplicate")


def skipped_event(event_type: str) -> str:
    """The counter of an event that is not OBJECT_FINALIZE (a deletion: a tombstone)."""
    return metrics.skipped(f"event_{event_type}")


SKIPPED_DELETE = skipped_event("OBJECT_DELETE")
# The events after which a generation is no longer the live one: a deletion, and in a
# versioned bucket the live version's deletion or replacement (it becomes noncurrent).
# Each writes a tombstone; the current view then hides that generation.
DELETION_EVENTS = ("OBJECT_DELETE", "OBJECT_ARCHIVE")

DELETES = "deletes"
DEAD = "dead_letters"


def split_list(value: str | None, lower: bool = False) -> tuple[str, ...]:
    """The items of a comma-separated flag, stripped, empty ones dropped ('' -> ())."""
    items = (x.strip() for x in (value or "").split(","))
    return tuple(x.lower() if lower else x for x in items if x)


def type_accepted(
    name: str, content_type: str | None, extensions: tuple[str, ...], content_types: tuple[str, ...]
) -> bool:
    """An object is an image to embed if its name ends with an accepted extension OR
    its content type starts with an accepted prefix; with neither list, anything is.

    Both lists are lower-case (`split_list(..., lower=True)`); the job and the backfill
    apply this same rule, so a backfill publishes exactly what the job would embed.
    """
    if not (extensions or content_types):
        return True
    return (bool(extensions) and name.lower().endswith(extensions)) or (
        bool(content_types) and (content_type or "").lower().startswith(content_types)
    )


@dataclasses.dataclass(frozen=True)
class FilterConfig:
    include_prefixes: tuple[str, ...] = ()
    exclude_prefixes: tuple[str, ...] = ()
    extensions: tuple[str, ...] = ()
    content_types: tuple[str, ...] = ()
    # (bucket, prefix) pairs the job writes to; never read back.
    own_outputs: tuple[tuple[str, str], ...] = ()
    # If set, the only buckets the job reads; anything else is dead-lettered.
    allowed_buckets: tuple[str, ...] = ()


def output_prefixes(outputs: Iterable[str | None], local_root: str | None) -> tuple:
    """(bucket, prefix) of each output location, so it can be excluded.

    For gs://B/P the pair is (B, P); for a local folder inside the watched folder it is
    (watched folder, relative path).
    """
    pairs = []
    for out in outputs:
        if not out:
            continue
        if is_gcs_uri(out):
            pairs.append(gcs_parts(out))
        elif local_root:
            root, path = os.path.abspath(local_root), os.path.abspath(out)
            if os.path.commonpath([root, path]) == root:
                rel = os.path.relpath(path, root).replace(os.sep, "/")
                pairs.append((root, "" if rel == "." else rel.rstrip("/") + "/"))
    return tuple(pairs)


def skip_reason(ref: ImageRef, config: FilterConfig) -> str | None:
    """None if the object should be embedded, else the counter name of why not.

    The object filters come first: an event about an object the job would never embed
    (its own .npy outputs, other prefixes or types) is dropped whatever its type, so a
    deletion of such an object writes no tombstone.
    """
    reason = object_skip_reason(ref, config)
    if reason is None and ref.event_type != "OBJECT_FINALIZE":
        reason = skipped_event(ref.event_type)
    return reason


def own_output(ref: ImageRef, config: FilterConfig) -> bool:
    """Whether the object is one the job wrote (under one of its output prefixes)."""
    return any(
        ref.bucket == bucket and ref.name.startswith(prefix)
        for bucket, prefix in config.own_outputs
    )


def object_skip_reason(ref: ImageRef, config: FilterConfig) -> str | None:
    """Why the object (whatever the event) is not one the job embeds, or None."""
    if own_output(ref, config):
        return SKIPPED_OWN_OUTPUT
    if config.include_prefixes and not ref.name.startswith(config.include_prefixes):
        return SKIPPED_BY_PREFIX
    if config.exclude_prefixes and ref.name.startswith(config.exclude_prefixes):
        return SKIPPED_BY_PREFIX
    reason = type_skip_reason(ref, config)
    if reason is not None and awaits_metadata(ref):
        return None  # the load stage decides once it has read the content type
    if reason is not None and untyped_deletion(ref):
        return None  # the row it hides was accepted once; a tombstone of none hides nothing
    return reason


def type_skip_reason(ref: ImageRef, config: FilterConfig) -> str | None:
    """`skipped.type` unless the name has an accepted extension or the content type
    is an accepted one, else None. The filter and the load stage (after it fetched a
    NONE-format notification's metadata) both decide with this rule."""
    if type_accepted(ref.name, ref.content_type, config.extensions, config.content_types):
        return None
    return SKIPPED_TYPE


def awaits_metadata(ref: ImageRef) -> bool:
    """A NONE-format notification carries no content type: the object's metadata,
    read in the load stage, has it. (A deletion's object cannot be read any more: its
    tombstone is written whatever the type, and the current view hides the object.)"""
    return ref.payload_format == "NONE" and ref.content_type is None and not ref.is_local


def untyped_deletion(ref: ImageRef) -> bool:
    """A deletion that says nothing of the object's type: the catch-up's and
    `embed-backfill --skip-existing`'s findings of a generation gone from the bucket.
    Its object cannot be read any more, so its type cannot decide; it passes the type
    rule (an image accepted by its content type alone must lose its row too)."""
    return ref.event_type in DELETION_EVENTS and ref.content_type is None


def bucket_allowed(ref: ImageRef, config: FilterConfig) -> bool:
    """A message may name any bucket; the job reads only the configured ones."""
    return ref.is_local or not config.allowed_buckets or ref.bucket in config.allowed_buckets


class Claims:
    """Which source (a notification or the catch-up) first brought each object
    generation into this process, so the other is not embedded a second time.

    At a restart the same upload arrives twice: its notification (still in the
    subscription) and the catch-up's listing (no row yet). Whichever comes second is
    skipped (`skipped.duplicate`). That is safe: the first is retried by the runner
    until it has a row or a dead letter, and a killed process forgets its claims with
    the work it had in flight, which the next catch-up finds. Redeliveries of one
    source are not skipped (they are how at-least-once works), nor are retries after
    retryable dead letters (`ImageRef.attempt` > 0). Bounded: the oldest claims are
    forgotten first.
    """

    def __init__(self, limit: int = 100_000):
        self._limit, self._lock = limit, threading.Lock()
        self._claims: collections.OrderedDict[str, str] = collections.OrderedDict()

    def first(self, key: str, source: str) -> bool:
        """True unless `key` was already claimed by another source."""
        source = "catchup" if source == "catchup" else "notification"
        with self._lock:
            holder = self._claims.get(key)
            if holder is None:
                self._claims[key] = source
                if len(self._claims) > self._limit:
                    self._claims.popitem(last=False)
                return True
            return holder == source


CLAIMS = Claims()


ACCEPTED = "accepted"
SKIPPED = "skipped"


@dataclasses.dataclass(frozen=True)
class Route:
    """Where the filter sends one ref: `ACCEPTED` (to embed), `DELETES` (a tombstone),
    `DEAD` (a dead letter with `reason`) or `SKIPPED` (counted under `reason`)."""

    output: str
    reason: str | None = None


def route(ref: ImageRef, config: FilterConfig, claims: Claims) -> Route:
    """The filter's one decision for a ref (the stage and the protocol tests call it).

    A deletion that passes the object filters goes to `DELETES` (and is counted under
    its event's `skipped_event` counter, as before the tombstones existed)."""
    if own_output(ref, config):
        # Whichever bucket: the job's own .npy notifications are no one's fault.
        return Route(SKIPPED, SKIPPED_OWN_OUTPUT)
    if not bucket_allowed(ref, config):
        return Route(DEAD, failures.BUCKET_NOT_ALLOWED)
    reason = skip_reason(ref, config)
    if reason is None and not ref.attempt and not claims.first(ref.key, ref.source):
        reason = SKIPPED_DUPLICATE
    if reason is None:
        return Route(ACCEPTED)
    if ref.event_type in DELETION_EVENTS and reason == skipped_event(ref.event_type):
        return Route(DELETES, reason)
    return Route(SKIPPED, reason)


class _FilterFn(beam.DoFn):
    def __init__(self, config: FilterConfig):
        self._config = config

    def process(self, ref: ImageRef):
        where = route(ref, self._config, CLAIMS)
        if where.output == ACCEPTED:
            metrics.checkpoint("accepted", ref)
            yield ref
        elif where.output == DEAD:
            metrics.dead_letter(where.reason)
            yield pvalue.TaggedOutput(
                DEAD,
                DeadLetter(
                    "filter", where.reason, f"bucket {ref.bucket!r} is not in --buckets", ref=ref
                ),
            )
        else:
            metrics.count(where.reason)
            if where.output == DELETES:
                yield pvalue.TaggedOutput(DELETES, ref)


class FilterObjects(beam.PTransform):
    """Keeps the objects to embed; deletions (`DELETION_EVENTS`) go to the `deletes` output,
    everything else skipped is counted by reason."""

    def __init__(self, config: FilterConfig):
        super().__init__()
        self._config = config

    def expand(self, refs):
        return refs | "Filter" >> beam.ParDo(_FilterFn(self._config)).with_outputs(
            DELETES, DEAD, main="accepted"
        )
