"""Which runner a job is on, from `--runner`: one rule for every place that asks.

A local runner (the DirectRunner family, Prism) executes in this process or on this
machine: the job catches up on start, pulls Pub/Sub itself and checks local paths. Any
other runner submits the job; Dataflow is the one whose worker layout, model cache,
accelerators and acknowledgement the job knows.
"""

from __future__ import annotations

from apache_beam.options.pipeline_options import (
    DebugOptions,
    GoogleCloudOptions,
    PipelineOptions,
    StandardOptions,
)

# Beam's runners that execute on this machine (names as --runner takes them, lower-case,
# without "runner").
LOCAL_RUNNERS = ("direct", "bundlebaseddirect", "switchingdirect", "prism")
# The service option (or experiment) that attaches GPUs to Dataflow workers.
WORKER_ACCELERATOR = "worker_accelerator"


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


def requested_accelerator(opts: PipelineOptions) -> str | None:
    """The accelerator a Dataflow job asks for, as given (`worker_accelerator=type:...;
    count:...`), or None.

    Dataflow takes it as a service option (`--dataflow_service_options`) or, the older
    spelling it still accepts, as an experiment (`--experiments`, which a Flex Template's
    `--additional-experiments` becomes); either asks for the same workers. Only Dataflow
    attaches GPUs, so a job on any other runner asks for none, whatever its flags say.
    """
    if not on_dataflow(opts):
        return None
    given = (opts.view_as(GoogleCloudOptions).dataflow_service_options or []) + (
        opts.view_as(DebugOptions).experiments or []
    )
    for option in given:
        if option.partition("=")[0].strip() == WORKER_ACCELERATOR:
            return option.strip()
    return None
