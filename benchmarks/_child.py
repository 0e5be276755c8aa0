"""Runs `streaming.main` exactly as `python -m streaming.main ARGS` does, optionally
recording when the model is loaded and every forward pass (batch size, start, duration).

Used by throughput.py / latency.py as the pipeline subprocess. With EMBED_BENCH_TRACE=PATH
the events are appended to PATH as JSON lines as they happen; the recording is one time.time() pair
per batch, nothing else changes. (With --direct_running_mode multi_processing the
forward passes run in worker processes and are not recorded.)
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time

_TRACE = os.environ.get("EMBED_BENCH_TRACE")


def _install_trace(path: str) -> None:
    from streaming import model

    sink = open(path, "a", buffering=1)  # one JSON object per line, written as it happens
    lock = threading.Lock()

    def record(event: dict) -> None:
        with lock:
            sink.write(json.dumps(event) + "\n")
    local = threading.local()  # .loading: this thread is loading a model (warm-up call)
    original_call = model.EmbeddingModel.__call__
    original_load = model.load_embedding_model

    def traced_call(self, batch):
        t = time.time()
        out = original_call(self, batch)
        record({"event": "warmup" if getattr(local, "loading", False) else "batch",
                "n": int(len(batch)), "t": t, "dur": time.time() - t})
        return out

    def traced_load(spec):
        t = time.time()
        local.loading = True
        try:
            out = original_load(spec)
        finally:
            local.loading = False
        record({"event": "load", "t": t, "dur": time.time() - t})
        return out

    model.EmbeddingModel.__call__ = traced_call
    model.load_embedding_model = traced_load

    record({"event": "start", "t": time.time()})


if __name__ == "__main__":
    if _TRACE:
        _install_trace(_TRACE)
    from streaming.main import main
    sys.exit(main(sys.argv[1:]))
