"""Runs `streaming.main` exactly as `python -m streaming.main ARGS` does, optionally
recording when the model is loaded and every forward pass (batch size, start, duration).
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time

_TRACE = os.environ.get("EMBED_BENCH_TRACE")


def _install_trace(path: str) -> None:
    """Records, as JSON lines: model loads, forward passes (marking those that traced a
    new graph), and each object read, decode and file write (start, duration)."""
    from streaming import images, model, onnx_model, sinks

    sink = open(path, "a", buffering=1)  # one JSON object per line, written as it happens
    lock = threading.Lock()

    def record(event: dict) -> None:
        with lock:
            sink.write(json.dumps(event) + "\n")
    local = threading.local()  # .loading: this thread is loading a model (warm-up call)

    def timed(kind, fn):
        def wrapper(*args, **kwargs):
            t = time.time()
            try:
                return fn(*args, **kwargs)
            finally:
                record({"event": kind, "t": t, "dur": time.time() - t})
        return wrapper

    original_load = model.load_embedding_model

    def traced(original_call):
        def traced_call(self, batch):
            embed = getattr(self, "_embed", None)  # the TensorFlow runtime's tf.function
            count = getattr(embed, "experimental_get_tracing_count", lambda: 0)
            before = count()
            t = time.time()
            result = original_call(self, batch)
            record({"event": "warmup" if getattr(local, "loading", False) else "batch",
                    "n": int(len(batch)), "t": t, "dur": time.time() - t,
                    "traced": count() > before})
            return result
        return traced_call

    def traced_load(*args, **kwargs):
        t = time.time()
        local.loading = True
        try:
            result = original_load(*args, **kwargs)
        finally:
            local.loading = False
        record({"event": "load", "t": t, "dur": time.time() - t})
        return result

    for cls in (model.EmbeddingModel, onnx_model.OnnxEmbeddingModel):
        cls.__call__ = traced(cls.__call__)
    model.load_embedding_model = traced_load
    images.read_bytes = timed("read", images.read_bytes)
    images.decode_image = timed("decode", images.decode_image)
    sinks.write_atomically = timed("write", sinks.write_atomically)
    record({"event": "start", "t": time.time()})


if __name__ == "__main__":
    if _TRACE:
        _install_trace(_TRACE)
    from streaming.main import main
    sys.exit(main(sys.argv[1:]))
