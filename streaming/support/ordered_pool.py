"""Per-element I/O on a thread pool, ahead of the bundle's own thread.

Reading an object, decoding it and writing a vector each wait on the network or the
disk; a DoFn that does them one element at a time leaves the cores idle meanwhile (on
Beam's local runner, which runs a streaming job on one thread, the whole job waits).
`WorkAhead` runs `work(element)` on `threads` threads, at most `window` elements ahead,
and emits the results in input order from the bundle's thread, where Beam's metrics
are counted.
"""

from __future__ import annotations

import collections
import concurrent.futures
from collections.abc import Iterable
from typing import Any

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.utils.windowed_value import WindowedValue


class WorkAhead(beam.DoFn):
    """Subclasses define `work(element)` (runs on the pool: no Beam metrics there) and
    `emit(result)` (yields outputs, plain or `TaggedOutput`, for one element)."""

    def __init__(self, threads: int, window: int, name: str):
        self._threads, self._window, self._name = max(1, threads), max(1, window), name

    def setup(self):
        self._pool = concurrent.futures.ThreadPoolExecutor(
            self._threads, thread_name_prefix=self._name
        )

    def teardown(self):
        self._pool.shutdown(wait=False, cancel_futures=True)

    def start_bundle(self):
        self._inflight: collections.deque = collections.deque()

    def work(self, element) -> Any:
        raise NotImplementedError

    def emit(self, result) -> Iterable:
        raise NotImplementedError

    def process(
        self, element, timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam
    ) -> Iterable:
        self._inflight.append((self._pool.submit(self.work, element), timestamp, window))
        while len(self._inflight) > self._window:
            yield from self._emit_oldest()

    def finish_bundle(self) -> Iterable:
        while self._inflight:
            yield from self._emit_oldest()

    def _emit_oldest(self) -> Iterable:
        # Each output carries its own element's timestamp and window, as finish_bundle
        # must (and process may) emit them.
        future, timestamp, window = self._inflight.popleft()
        for out in self.emit(future.result()):
            if isinstance(out, pvalue.TaggedOutput):
                yield pvalue.TaggedOutput(out.tag, WindowedValue(out.value, timestamp, [window]))
            else:
                yield WindowedValue(out, timestamp, [window])
