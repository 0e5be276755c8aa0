"""Beam metrics of the pipeline: one namespace, one counter per outcome and reason,
a distribution of notification-to-row latency, and where that time goes: one
distribution per checkpoint an image passes, in milliseconds since its event
(`since_event.accepted`, `.read`, `.decoded`, `.embedded`, `.vector_written`,
`.row_written`), so that the difference of two neighbours is a stage's share.

On Dataflow these are the job's numbers (the console's "Job metrics"). A local run
also keeps the same counts in a process-local tally (`TALLY`) for its progress lines:
a DirectRunner's Beam metrics can only be read once the pipeline has finished.
"""

from __future__ import annotations

import collections
import datetime as dt
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from apache_beam.metrics import Metrics

NAMESPACE = "embeddings"
DEAD_PREFIX = "dead_letter."
SKIPPED_PREFIX = "skipped."
EMBEDDED = "images_embedded"
# Local tally only (Beam's RunInference counts its own `num_inferences`): a runner that
# hands whole bundles from stage to stage writes rows only at the end, so a folder
# run's progress is measured where the time goes, at the model.
INFERRED = "images_inferred"
LATENCY = "notification_to_row_ms"
SINCE_EVENT = "since_event."
# The checkpoints in the order an image passes them (docs/reliability.md, "Latency").
CHECKPOINTS = ("accepted", "read", "decoded", "embedded", "vector_written", "row_written")


def skipped(why: str) -> str:
    """The counter of objects skipped for `why`: `skipped.<why>`."""
    return SKIPPED_PREFIX + why


class Tally:
    """Thread-safe counts and the latest latencies of this process."""

    def __init__(self, keep: int = 4096):
        self._lock = threading.Lock()
        self._counts: collections.Counter = collections.Counter()
        self._latencies: collections.deque = collections.deque(maxlen=keep)
        self._keep = keep
        self._checkpoints: dict[str, collections.deque] = {}

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def observe(self, ms: float) -> None:
        with self._lock:
            self._latencies.append(ms)

    def checkpoint(self, name: str, ms: float) -> None:
        with self._lock:
            self._checkpoints.setdefault(name, collections.deque(maxlen=self._keep)).append(ms)

    def snapshot(self) -> tuple[dict[str, int], list[float]]:
        with self._lock:
            return dict(self._counts), list(self._latencies)

    def checkpoints(self, last: int) -> dict[str, list[float]]:
        """The latest `last` values of each checkpoint, in milliseconds since the event."""
        with self._lock:
            return {k: list(v)[-last:] for k, v in self._checkpoints.items()}


TALLY = Tally()


def count(name: str, n: int = 1) -> None:
    Metrics.counter(NAMESPACE, name).inc(n)
    TALLY.add(name, n)


def dead_letter(reason: str) -> None:
    """Counts a dead letter under its reason (the stage is in the row)."""
    count(DEAD_PREFIX + reason)


def ms_since(event_time: str | None, now: dt.datetime | None = None) -> float | None:
    """Milliseconds from an RFC 3339 event time to now; None without a valid one."""
    if not event_time:
        return None
    try:
        then = dt.datetime.fromisoformat(str(event_time).replace("Z", "+00:00"))
    except ValueError:
        return None
    if then.tzinfo is None:
        then = then.replace(tzinfo=dt.UTC)
    now = now or dt.datetime.now(dt.UTC)
    return max(0.0, (now - then).total_seconds() * 1000.0)


def latency_ms(row: Mapping[str, Any], now: dt.datetime | None = None) -> float | None:
    """Milliseconds from the notification's event time to now, for rows that came
    from a notification; None for local files (their mtime is no notification)."""
    if row.get("source") == "local":
        return None
    return ms_since(row.get("event_time"), now)


def checkpoint(name: str, ref, now: dt.datetime | None = None) -> None:
    """Records that the image of `ref` (an ImageRef) passed checkpoint `name` (one of
    CHECKPOINTS): milliseconds since its notification's event. Local files have no
    event and record nothing. Call it on the DoFn's own thread (Beam's metrics are
    per bundle); `now` is when it happened, if that was earlier."""
    if ref is None or ref.source == "local":
        return
    _record_checkpoint(name, ms_since(ref.event_time, now))


def row_checkpoint(name: str, row: Mapping[str, Any]) -> None:
    """`checkpoint` for an embedding row (a dict with its event time); other rows
    (tombstones, dead letters) record nothing."""
    if "embedding" not in row or row.get("source") == "local":
        return
    _record_checkpoint(name, ms_since(row.get("event_time")))


def _record_checkpoint(name: str, ms: float | None) -> None:
    if ms is not None:
        Metrics.distribution(NAMESPACE, SINCE_EVENT + name).update(int(ms))
        TALLY.checkpoint(name, ms)


def observe_row(row: Mapping[str, Any]) -> Iterable:
    """Records a written row's latency (a Beam Distribution); emits nothing."""
    ms = latency_ms(row)
    if ms is not None:
        Metrics.distribution(NAMESPACE, LATENCY).update(int(ms))
        TALLY.observe(ms)
    return ()
