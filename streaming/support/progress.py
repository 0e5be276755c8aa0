"""What a local run shows while it works.

A folder run draws a progress bar on a terminal (done/total, images/s, dead letters)
and otherwise logs one line every `--progress_interval` seconds; `--watch` and
streaming runs log that line (embedded, dead letters by reason, images/s, and the
notification-to-row latency p50/p95 where known), and where images came from a
notification, a second line: how long after the event they passed each checkpoint.
The numbers come from `metrics.TALLY`, the process-local copy of the job's Beam counters.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Mapping, Sequence

from streaming import metrics

_LOG = logging.getLogger("embed-stream")
CHECKPOINT_WINDOW = 64  # images: the checkpoints line describes the latest this many


def dead_letters(counts: Mapping[str, int]) -> dict[str, int]:
    """Dead-letter counts by reason."""
    return {
        k[len(metrics.DEAD_PREFIX) :]: v
        for k, v in counts.items()
        if k.startswith(metrics.DEAD_PREFIX)
    }


def embedded(counts: Mapping[str, int]) -> int:
    """Images through the model (rows follow; some runners write them per stage)."""
    return max(counts.get(metrics.EMBEDDED, 0), counts.get(metrics.INFERRED, 0))


def done(counts: Mapping[str, int]) -> int:
    """Files finished one way or another: embedded, dead-lettered or skipped."""
    return (
        embedded(counts)
        + sum(dead_letters(counts).values())
        + sum(v for k, v in counts.items() if k.startswith(metrics.SKIPPED_PREFIX))
    )


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by nearest rank."""
    ordered = sorted(values)
    rank = max(1, int(round(q / 100.0 * len(ordered) + 0.4999)))
    return ordered[min(rank, len(ordered)) - 1]


def status_line(counts: Mapping[str, int], latencies: Sequence[float], images_per_s: float) -> str:
    """`embedded <n>, dead letters <d> (<reason>=<n>, ...), <r> images/s,
    latency p50 <s> s p95 <s> s` (latency only where known)."""
    dead = dead_letters(counts)
    text = f"embedded {embedded(counts)}, dead letters {sum(dead.values())}"
    if dead:
        text += " (" + ", ".join(f"{r}={n}" for r, n in sorted(dead.items())) + ")"
    text += f", {images_per_s:.2f} images/s"
    if latencies:
        text += (
            f", notification-to-row latency p50 {percentile(latencies, 50) / 1000:.1f} s"
            f" p95 {percentile(latencies, 95) / 1000:.1f} s"
        )
    return text


def checkpoints_line(checkpoints: Mapping[str, Sequence[float]]) -> str | None:
    """`since the event, ms p50/p95: accepted a/b, read c/d, ...` over the latest images,
    in the order they pass (metrics.CHECKPOINTS); None before any."""
    parts = [
        f"{name} {percentile(checkpoints[name], 50):.0f}/{percentile(checkpoints[name], 95):.0f}"
        for name in metrics.CHECKPOINTS
        if checkpoints.get(name)
    ]
    return "since the event, ms p50/p95: " + ", ".join(parts) if parts else None


def count_files(root: str) -> int:
    """Files under `root`, recursively: the bar's total for a folder run."""
    return sum(len(files) for _, _, files in os.walk(root))


class Reporter:
    """A daemon thread that shows progress until `stop()`.

    Args:
      interval: seconds between log lines.
      total: files to do (a folder run), or None (watch, streaming).
      bar: draw a tqdm bar instead of log lines (stderr is a terminal and total is known).
    """

    def __init__(self, interval: float, total: int | None = None, bar: bool = False):
        self._interval = max(0.1, interval)
        self._total, self._bar = total, None
        if bar and total is not None:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total,
                unit=" images",
                desc="embedding",
                file=sys.stderr,
                dynamic_ncols=True,
                mininterval=0.5,
            )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)

    def start(self) -> Reporter:
        self._thread.start()
        return self

    def _loop(self) -> None:
        last_t, last_embedded = time.monotonic(), embedded(metrics.TALLY.snapshot()[0])
        tick = 0.5 if self._bar else self._interval
        while not self._stop.wait(tick):
            counts, latencies = metrics.TALLY.snapshot()
            if self._bar is not None:
                self._update_bar(counts)
                continue
            now, n = time.monotonic(), embedded(counts)
            rate = (n - last_embedded) / max(now - last_t, 1e-9)
            last_t, last_embedded = now, n
            line = status_line(counts, latencies, rate)
            if self._total is not None:
                line = f"{done(counts)}/{self._total} files: {line}"
            _LOG.info("%s", line)
            stages = checkpoints_line(metrics.TALLY.checkpoints(CHECKPOINT_WINDOW))
            if stages:
                _LOG.info("%s", stages)

    def _update_bar(self, counts: Mapping[str, int]) -> None:
        self._bar.n = done(counts)
        self._bar.set_postfix(
            embedded=embedded(counts),
            dead_letters=sum(dead_letters(counts).values()),
            refresh=False,
        )
        self._bar.refresh()

    def stop(self) -> None:
        """Stops the thread; a bar shows its final counts, then closes."""
        self._stop.set()
        self._thread.join(timeout=5)
        if self._bar is not None:
            self._update_bar(metrics.TALLY.snapshot()[0])
            self._bar.close()
