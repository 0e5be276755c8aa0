"""Where an upload's time goes: the job counts, at each checkpoint an image passes, the
milliseconds since its notification's event (Beam distributions `since_event.*`, and a
local progress line), so that neighbouring checkpoints' difference is a stage's share."""

from __future__ import annotations

import datetime as dt

from streaming import metrics
from streaming.records import ImageRef
from streaming.support import progress


def ref(source="notification", event_time="2026-12-07T10:00:00.250000Z"):
    return ImageRef(bucket="b", name="a.jpg", generation=1, source=source, event_time=event_time)


def test_a_checkpoint_counts_milliseconds_since_the_event():
    tally = metrics.Tally()
    original, metrics.TALLY = metrics.TALLY, tally
    try:
        at = dt.datetime(2026, 12, 7, 10, 0, 1, tzinfo=dt.UTC)
        metrics.checkpoint("read", ref(), at)
        metrics.checkpoint("read", ref(source="local"), at)  # a file's mtime is no event
        metrics.checkpoint("read", ref(event_time=None), at)
        metrics.row_checkpoint("row_written", {"source": "notification"})  # a tombstone
    finally:
        metrics.TALLY = original
    assert tally.checkpoints(10) == {"read": [750.0]}


def test_the_progress_line_lists_checkpoints_in_the_order_images_pass_them():
    line = progress.checkpoints_line(
        {"row_written": [900.0, 1100.0], "accepted": [100.0], "embedded": [500.0, 700.0]}
    )
    assert line == (
        "since the event, ms p50/p95: accepted 100/100, embedded 500/700, row_written 900/1100"
    )
    assert progress.checkpoints_line({}) is None
