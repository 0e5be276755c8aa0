"""`embed-stream`: run the embedding job locally (the embedded default) or on Dataflow.

  embed-stream --input_dir images/ --output_dir out/            # embed a folder, exit
  embed-stream --input_dir images/ --output_dir out/ --watch    # keep embedding new files
  embed-stream --input_subscription projects/P/subscriptions/S \
      --output_table P:D.T --output_gcs gs://B/vectors/ --runner DataflowRunner ...
"""
from __future__ import annotations

import logging
import os
import sys
import time
from typing import Optional, Sequence

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import SetupOptions, StandardOptions

from streaming import endpoints, metrics, model
from streaming.options import EmbedOptions, validate
from streaming.pipeline import build_pipeline

_LOG = logging.getLogger("embed-stream")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's C++ start-up chatter


def counters(result) -> dict[str, int]:
    """The job's own counters (namespace `embeddings`), committed values."""
    query = result.metrics().query(MetricsFilter().with_namespace(metrics.NAMESPACE))
    totals: dict[str, int] = {}
    for c in query["counters"]:
        value = c.committed if c.committed is not None else c.attempted
        totals[c.key.metric.name] = totals.get(c.key.metric.name, 0) + int(value or 0)
    return totals


def summary(totals: dict[str, int], seconds: float) -> str:
    """A short human summary: images embedded, dead letters by reason, images/s."""
    embedded = totals.get("images_embedded", 0)
    dead = {k[len(metrics.DEAD_PREFIX):]: v for k, v in totals.items()
            if k.startswith(metrics.DEAD_PREFIX)}
    skipped = {k: v for k, v in totals.items() if k.startswith("skipped.")}
    lines = [f"images embedded: {embedded}",
             f"dead letters: {sum(dead.values())}"
             + "".join(f"\n  {reason}: {n}" for reason, n in sorted(dead.items()))]
    if skipped:
        lines.append("skipped: " + ", ".join(f"{k[8:]}={v}" for k, v in sorted(skipped.items())))
    lines.append(f"wall time: {seconds:.1f} s, {embedded / seconds if seconds else 0:.2f} images/s")
    return "\n".join(lines)


def make_options(argv: Optional[Sequence[str]]) -> EmbedOptions:
    opts = EmbedOptions(argv)
    validate(opts)
    std = opts.view_as(StandardOptions)
    if opts.input_subscription or opts.input_topic:
        std.streaming = True
    if std.runner is None:
        # Locally, --watch runs on the DirectRunner's FnApiRunner, which polls
        # MatchContinuously's unbounded splittable DoFn without streaming mode (the
        # bundle-based streaming runner cannot expand it). Pub/Sub needs the streaming
        # DirectRunner; a bounded folder runs on the bundle-based runner, which skips
        # Beam's attempt to download the Prism runner.
        std.runner = "DirectRunner" if (opts.watch or std.streaming) else "BundleBasedDirectRunner"
    opts.view_as(SetupOptions).save_main_session = False
    return opts


def run(argv: Optional[Sequence[str]] = None) -> dict[str, int]:
    """Builds and runs the job; returns its counters (empty for Dataflow)."""
    opts = make_options(argv)
    if opts.local_endpoints:
        endpoints.use_local_endpoints()
    # Fail fast, once: an unloadable model must stop the job here, not per element.
    # A local run's RunInference then reuses this copy (load_embedding_model caches it).
    preflight = model.load_embedding_model(opts.weights)
    print(f"model: {preflight.model_id} (weights {opts.weights})", file=sys.stderr)
    started = time.monotonic()
    pipeline = beam.Pipeline(options=opts)
    build_pipeline(pipeline, opts)
    result = pipeline.run()
    if opts.view_as(StandardOptions).runner.endswith("DataflowRunner"):
        print(f"submitted Dataflow job {getattr(result, 'job_id', lambda: '?')()}")
        return {}
    result.wait_until_finish()
    totals = counters(result)
    print(summary(totals, time.monotonic() - started))
    return totals


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        run(argv)
    except (ValueError, model.WeightsUnavailableError) as e:
        print(f"embed-stream: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
