"""Which runner a job is on, from `--runner`: one rule for every place that asks.

A local runner (the DirectRunner family, Prism) executes in this process or on this
machine: the job catches up on start, pulls Pub/Sub itself and checks local paths. Any
other runner submits the job; Dataflow is the one whose worker layout, model cache and
acknowledgement the job knows.
"""

from __future__ import annotations

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

# Beam's runners that execute on this machine (names as --runner takes them, lower-case,
# without "runner").
LOCAL_RUNNERS = ("direct", "bundlebaseddirect", "switchingdirect", "prism")


def runner_name(opts: PipelineOptions) -> str:
    """`--runner` lower-case without the "Runner" suffix (a runner object: its class)."""
    runner = opts.view_as(StandardOptions).runner or ""
    name = runner if isinstance(runner, str) else type(runner).__name__
    return name.lower().removesuffix("runner")


def is_remote(opts: PipelineOptions) -> bool:
    """Whether the runner submits the job elsewhere instead of running it here."""
    return runner_name(opts) not in LOCAL_RUNNERS


def on_dataflow(opts: PipelineOptions) -> bool:
    """Whether the job runs on Dataflow (DataflowRunner, or a test's subclass of it)."""
    return runner_name(opts).endswith("dataflow")
