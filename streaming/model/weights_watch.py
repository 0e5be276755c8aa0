"""New weights while the job runs: `--weights_watch LOCATION` (a folder or gs:// prefix).

Each process's shared model (`WatchedModel`, the object RunInference hands its threads)
polls LOCATION every `--weights_watch_interval` seconds for the newest weights file
(`.weights.h5`, `.h5`, `.keras`, by last-update time). When one appears, and is still
the same (time and size) at the next look, it builds the
next model beside the running one, off the element path: the weights are copied,
built into an ONNX graph once per weights for every worker sharing
`--model_cache_dir` (streaming/model/onnx_runtime.py claims the entry), loaded and warmed up,
while the batches keep going through the current model. Then one reference swap: every
batch runs on exactly one model, and each row names the fingerprint of the weights that
embedded it. A switch logs one line and counts `weights_switches`; weights that cannot
be loaded log why, count `weights_rejected` and leave the current model in place. A
process starts with the newest weights under LOCATION, if any (`starting_model`): a
worker started after a switch never embeds with the older `--weights`.

Beam's RunInference can update its model from a side input (`model_metadata_pcoll`,
`WatchFilePattern`), but it loads the new model inside `process()`, so the batch that
meets the update waits for the whole load, and on the local runner a global-window side
input holds every element back until its source ends; the swap here works the same on
every runner.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import numpy as np

WEIGHTS_SUFFIXES = (".weights.h5", ".h5", ".keras")
DEFAULT_INTERVAL_SECS = 60.0
# The tools' own logger: its INFO lines show in embed-stream's output and worker logs.
_LOG = logging.getLogger("embed-stream.weights")


def newest_weights(location: str) -> tuple[str, float, int] | None:
    """(path, last-update time, size) of the newest weights file directly under
    `location`, or None. Ties on time go to the later name."""
    from apache_beam.io.filesystems import FileSystems

    pattern = FileSystems.join(location.rstrip("/"), "*")
    found = [
        (m.last_updated_in_seconds or 0.0, m.path, m.size_in_bytes)
        for m in FileSystems.match([pattern])[0].metadata_list
        if m.path.endswith(WEIGHTS_SUFFIXES)
    ]
    if not found:
        return None
    updated, path, size = max(found)
    return path, updated, size


class WatchedModel:
    """A model that follows the newest weights under a location.

    Args:
      model: the model to start with (`starting_model`).
      location: the folder or gs:// prefix to watch.
      interval: seconds between looks.
      build: spec -> a new, warmed-up model (`model.build_embedding_model` with the
        job's runtime, cache and threads).
      seen: the weights file `model` came from, if any (not built again).
    """

    def __init__(
        self,
        model,
        location: str,
        interval: float,
        build: Callable[[str], object],
        seen: tuple[str, float, int] | None = None,
    ):
        self._current = model
        self._location, self._interval, self._build = location, interval, build
        self._seen = self._settling = seen
        self._switches = self._rejected = 0
        self._counted = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="weights-watch", daemon=True)
        self._thread.start()

    def current(self):
        """The model to run a whole batch on (one read: a switch never splits a batch)."""
        return self._current

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self._current(batch)

    def __getattr__(self, name: str):  # model_id, fingerprint, runtime_version...
        return getattr(self._current, name)

    def warm_up(self) -> None:
        self._current.warm_up()

    def take_counts(self) -> tuple[int, int]:
        """(switches, rejected weights) since the last call, for the job's counters."""
        with self._counted:
            counts, self._switches, self._rejected = (self._switches, self._rejected), 0, 0
        return counts

    def stop(self) -> None:
        self._stop.set()

    def check_now(self) -> bool:
        """One look at the location; switches if it holds new weights that were already
        there, unchanged, at the look before (a local file still being written is not
        read half-way; a gs:// object appears whole). True on a switch."""
        try:
            found = newest_weights(self._location)
        except Exception as e:  # noqa: BLE001 - a listing error must not stop the job
            _LOG.warning("Cannot list %s for new weights: %s", self._location, e)
            return False
        settled, self._settling = found == self._settling, found
        if found is None or found == self._seen or not settled:
            return False
        self._seen = found
        path, started = found[0], time.monotonic()
        old = self._current
        _LOG.info("New weights %s: building them next to %s", path, old.model_id)
        try:
            new = self._build(path)
        except Exception as e:  # noqa: BLE001 - bad weights keep the current model
            with self._counted:
                self._rejected += 1
            _LOG.error("Weights %s not used, %s stays: %s", path, old.model_id, e)
            return False
        if new.model_id == old.model_id:
            _LOG.info("Weights %s are the running ones (%s)", path, old.model_id)
            return False
        self._current = new
        with self._counted:
            self._switches += 1
        _LOG.info(
            "Switched weights: %s -> %s (%s), %.1f s after they were found",
            old.fingerprint,
            new.fingerprint,
            path,
            time.monotonic() - started,
        )
        return True

    def _watch(self) -> None:
        while not self._stop.wait(self._interval):
            self.check_now()


_WATCHED: dict[tuple, WatchedModel] = {}
_WATCHED_LOCK = threading.Lock()


def starting_model(
    load_default: Callable[[], object], location: str, build: Callable[[str], object]
) -> tuple[object, tuple[str, float, int] | None]:
    """The model a process starts with, and the weights file it came from (None for
    `--weights`): the newest weights under `location` if there are any, so a worker
    that starts after a switch embeds with the switched weights from its first batch,
    not with `--weights` until its watch catches up. Weights there that cannot be
    built log why and leave `--weights`."""
    try:
        found = newest_weights(location)
    except Exception as e:  # noqa: BLE001 - the watch tries again at each look
        _LOG.warning("Cannot list %s for weights at start: %s", location, e)
        found = None
    if found is not None:
        try:
            model = build(found[0])
        except Exception as e:  # noqa: BLE001 - bad weights keep --weights
            _LOG.error("Weights %s not used at start, --weights stays: %s", found[0], e)
        else:
            _LOG.info("Starting with the newest weights %s (%s)", found[0], model.model_id)
            return model, found
    return load_default(), None


def watched(
    load_default: Callable[[], object],
    location: str,
    interval: float,
    build: Callable[[str], object],
    key: tuple,
) -> WatchedModel:
    """The process's one `WatchedModel` for `key` (the handler's settings), made on
    first use around `starting_model`: every thread and DoFn instance of a process
    shares one watch."""
    with _WATCHED_LOCK:
        if key not in _WATCHED:
            for other in _WATCHED.values():
                other.stop()
            _WATCHED.clear()
            model, found = starting_model(load_default, location, build)
            _WATCHED[key] = WatchedModel(model, location, interval, build, seen=found)
        return _WATCHED[key]
