"""Runs `streaming.main` exactly as `python -m streaming.main ARGS` does, optionally
recording when the model is loaded and every forward pass (batch size, start, duration).

EMBED_BENCH_PROTO (comma-separated) swaps in *prototypes of changes recommended for
streaming/*, to measure them before anyone edits the project (off unless set):
  decode_threads=N  LoadImages reads+decodes N images at once on a thread pool (Pillow
                    releases the GIL), keeping 2N in flight; metrics and outputs stay
                    on the DoFn's thread. Same outputs, same dead letters.
  signature         EmbeddingModel's tf.function gets input_signature (None,224,224,3)
                    uint8: traced once, at warm-up, instead of again (seconds) on the
                    first batch of a second size.
  reuse_model       load_embedding_model caches by weights spec in the process: the
                    job's start-up check and RunInference share one loaded model.

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
_PROTO = os.environ.get("EMBED_BENCH_PROTO", "")


def _install_protos(spec: str) -> None:
    protos = dict((p.split("=", 1) + [""])[:2] for p in spec.split(",") if p.strip())
    from streaming import images, model
    if "decode_threads" in protos:
        _parallel_decode(images, int(protos["decode_threads"] or 2))
    if "signature" in protos:
        original_init = model.EmbeddingModel.__init__

        def init(self, keras_model):
            original_init(self, keras_model)
            import tensorflow as tf
            from keras.applications.resnet50 import preprocess_input

            @tf.function(input_signature=[tf.TensorSpec([None, 224, 224, 3], tf.uint8)])
            def embed(batch_uint8):
                x = preprocess_input(tf.cast(batch_uint8, tf.float32))
                return keras_model(x, training=False)
            self._embed = embed
        model.EmbeddingModel.__init__ = init
    if "reuse_model" in protos:
        original_load = model.load_embedding_model
        cache, lock = {}, threading.Lock()

        def load(spec):
            with lock:
                if spec not in cache:
                    cache[spec] = original_load(spec)
                return cache[spec]
        model.load_embedding_model = load


def _parallel_decode(images, threads: int) -> None:
    import collections
    import concurrent.futures

    import apache_beam as beam
    from apache_beam import pvalue
    from apache_beam.utils.windowed_value import WindowedValue
    from streaming import metrics
    from streaming.records import DeadLetter, ImageInfo, Rejected

    class ParallelLoadFn(beam.DoFn):
        def __init__(self, policy, max_pixels, max_bytes):
            self._policy, self._max_pixels, self._max_bytes = policy, max_pixels, max_bytes

        def setup(self):
            self._pool = concurrent.futures.ThreadPoolExecutor(threads)

        def teardown(self):
            self._pool.shutdown(wait=False)

        def start_bundle(self):
            self._inflight = collections.deque()

        def _work(self, ref):  # pool thread: I/O and decoding only
            stage = "load"
            try:
                if ref.size is not None and ref.size > self._max_bytes:
                    raise Rejected("too_large", f"size {ref.size} > {self._max_bytes}-byte limit")
                data = images.read_bytes(ref.uri, self._max_bytes)
                stage = "decode"
                return stage, images.decode_image(data, policy=self._policy,
                                                  max_pixels=self._max_pixels), None
            except Rejected as e:
                return stage, None, e

        def _emit(self, ref, future):  # DoFn thread: metrics and outputs, as _LoadFn
            stage, decoded, error = future.result()
            if error is not None:
                metrics.dead_letter(stage, error.reason)
                yield pvalue.TaggedOutput(images.DEAD, DeadLetter(stage, error.reason,
                                                                  str(error), ref=ref))
                return
            metrics.count("images_decoded")
            yield ImageInfo(ref, decoded.width, decoded.height, decoded.format), decoded.pixels

        def process(self, ref, timestamp=beam.DoFn.TimestampParam,
                    window=beam.DoFn.WindowParam):
            self._inflight.append((ref, self._pool.submit(self._work, ref), timestamp, window))
            while len(self._inflight) > 2 * threads:
                ref0, fut, _, _ = self._inflight.popleft()
                yield from self._emit(ref0, fut)

        def finish_bundle(self):
            while self._inflight:
                ref, fut, ts, win = self._inflight.popleft()
                for out in self._emit(ref, fut):
                    if isinstance(out, pvalue.TaggedOutput):
                        yield pvalue.TaggedOutput(out.tag, WindowedValue(out.value, ts, [win]))
                    else:
                        yield WindowedValue(out, ts, [win])

    images._LoadFn = ParallelLoadFn


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
    if _PROTO:
        _install_protos(_PROTO)
    if _TRACE:
        _install_trace(_TRACE)
    from streaming.main import main
    sys.exit(main(sys.argv[1:]))
