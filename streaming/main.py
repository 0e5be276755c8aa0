"""`embed-stream`: run the embedding job locally (the embedded default) or on Dataflow.

  embed-stream --input_dir images/ --output_dir out/            # embed a folder, exit
  embed-stream --input_dir images/ --output_dir out/ --watch    # keep embedding new files
  embed-stream --input_subscription projects/P/subscriptions/S \\
      --output_table P:D.T --output_gcs gs://B/vectors/ --runner DataflowRunner ...

Every option is checked before the model loads; a wrong one is one line on stderr
(exit 2). Ctrl-C prints the summary so far (exit 130); SIGTERM stops the same way
(exit 0).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Sequence

from streaming.config import cli, flags

PROG = "embed-stream"
BEAM_NOTE = (
    "Beam and Dataflow pipeline options (--runner, --project, --region, "
    "--temp_location, --max_num_workers, ...) are accepted too."
)
_LOG = logging.getLogger(PROG)
# Flags every Dataflow job starts with; a flag given at launch wins (they come first).
# docs/performance.md, "Worker layout", says why: one SDK process per VM (one model,
# shared by its bundle threads), bundle threads x decode threads = the vCPUs of the
# documented machine: n2-standard-4 for CPU workers; n1-standard-8 + one GPU, with
# batches of 64 on TensorFlow (whose CUDA wheels the GPU image carries), for a job
# that asks for a worker_accelerator (runners.requested_accelerator, either spelling).
# They live here, not in the image, so a launch from a checkout and a Flex Template
# launch are one job.
WORKER_DEFAULTS = {
    "cpu": (
        "--experiments=no_use_multiple_sdk_containers",
        "--number_of_worker_harness_threads=2",
        "--decode_threads=2",
    ),
    "gpu": (
        "--experiments=no_use_multiple_sdk_containers",
        "--number_of_worker_harness_threads=4",
        "--decode_threads=2",
        "--max_batch_size=64",
        "--runtime=tensorflow",
    ),
}
# Converted models of a Dataflow job without --model_cache_dir: this prefix at the root of
# its temp (else staging) location's bucket, so the first worker converts and every later
# one loads. Not under tmp/ or staging/: the bucket's lifecycle rule deletes tmp/ object
# by object after 7 days, and a cache entry must outlive the weights' first week.
MODEL_CACHE_PREFIX = "image-embeddings/onnx"


class Terminated(BaseException):
    """SIGTERM: stop like Ctrl-C, but exit 0 (a deliberate stop, e.g. a service manager)."""


def help_parser() -> cli.ArgumentParser:
    """The job's own options; `--help` prints them without importing Beam."""
    parser = cli.ArgumentParser(
        prog=PROG, description=__doc__, epilog=BEAM_NOTE + " " + cli.SPELLING_NOTE
    )
    flags.add_job_arguments(parser)
    return parser


def counters(result) -> dict[str, int]:
    """The job's own counters (namespace `embeddings`), committed values."""
    from apache_beam.metrics.metric import MetricsFilter

    from streaming import metrics

    query = result.metrics().query(MetricsFilter().with_namespace(metrics.NAMESPACE))
    totals: dict[str, int] = {}
    for c in query["counters"]:
        value = c.committed if c.committed is not None else c.attempted
        totals[c.key.metric.name] = totals.get(c.key.metric.name, 0) + int(value or 0)
    return totals


def summary(totals: dict[str, int], seconds: float) -> str:
    """A short human summary: images embedded, dead letters by reason, images/s."""
    from streaming import metrics

    embedded = totals.get(metrics.EMBEDDED, 0)
    dead = {
        k[len(metrics.DEAD_PREFIX) :]: v
        for k, v in totals.items()
        if k.startswith(metrics.DEAD_PREFIX)
    }
    skipped = {k: v for k, v in totals.items() if k.startswith(metrics.SKIPPED_PREFIX)}
    lines = [
        f"images embedded: {embedded}",
        f"dead letters: {sum(dead.values())}"
        + "".join(f"\n  {reason}: {n}" for reason, n in sorted(dead.items())),
    ]
    if skipped:
        lines.append(
            "skipped: "
            + ", ".join(
                f"{k.removeprefix(metrics.SKIPPED_PREFIX)}={v}" for k, v in sorted(skipped.items())
            )
        )
    lines.append(f"wall time: {seconds:.1f} s, {embedded / seconds if seconds else 0:.2f} images/s")
    return "\n".join(lines)


def unknown_options(opts, argv: Sequence[str]) -> list[str]:
    """Options no PipelineOptions class defines (Beam would drop them with a log line),
    as the user typed them."""
    known = opts.get_all_options(drop_default=False)
    every = opts.get_all_options(drop_default=False, retain_unknown_options=True)
    typed = {
        t.partition("=")[0].lstrip("-").replace("-", "_"): t.partition("=")[0]
        for t in argv
        if t.startswith("--")
    }
    return [typed.get(k, "--" + k) for k in every if k not in known]


def worker_kind(opts) -> str:
    """`gpu` when the job asks for a worker_accelerator (as a Dataflow service option or
    an experiment), else `cpu`."""
    from streaming.config.runners import requested_accelerator

    return "gpu" if requested_accelerator(opts) else "cpu"


def worker_defaults(opts) -> list[str]:
    """The WORKER_DEFAULTS of a Dataflow job (none for any other runner)."""
    from streaming.config.runners import on_dataflow

    return list(WORKER_DEFAULTS[worker_kind(opts)]) if on_dataflow(opts) else []


def default_model_cache(opts) -> str | None:
    """Where a Dataflow job's workers find converted models when --model_cache_dir is
    not given: `MODEL_CACHE_PREFIX` in the bucket of --temp_location (else of
    --staging_location, from which Beam defaults the temp location). None elsewhere,
    and for weights baked into the image (an absolute path), whose conversion the
    image's own cache holds."""
    from apache_beam.options.pipeline_options import GoogleCloudOptions

    from streaming.config.names import gcs_parts, is_gcs_uri
    from streaming.config.runners import on_dataflow

    gcp = opts.view_as(GoogleCloudOptions)
    temp = gcp.temp_location or gcp.staging_location
    if (
        not on_dataflow(opts)
        or opts.runtime != "onnx"
        or opts.model_cache_dir
        or not is_gcs_uri(temp)
        or opts.weights.startswith("/")
    ):
        return opts.model_cache_dir
    return f"gs://{gcs_parts(temp)[0]}/{MODEL_CACHE_PREFIX}"


def parse(argv: Sequence[str], warn: bool = True):
    """EmbedOptions of `argv`; raises UsageError for an option nobody defines, where the
    job runs here. For a remote runner an unknown option is one warning line, as Beam
    gives: a Flex Template launcher may pass a flag of a later Beam or Dataflow release,
    and refusing it would stop every launch."""
    from streaming.config.options import EmbedOptions
    from streaming.config.runners import on_dataflow

    argv = cli.respell(list(argv), help_parser().long_options())
    opts = EmbedOptions(argv)
    unknown = unknown_options(opts, argv)
    if unknown:
        known = ["--" + k for k in opts.get_all_options(drop_default=False)]
        message = cli.unknown_option_message(unknown, known)
        if not on_dataflow(opts):
            raise cli.UsageError(message)
        if warn:
            print(f"{PROG}: warning: {message} (ignored by this job)", file=sys.stderr)
    return opts


def make_options(argv: Sequence[str] | None):
    """Parses and validates the options (no network); picks the local runner.

    Raises:
      cli.UsageError: an unknown option, a bad combination, a name that does not parse.
    """
    from apache_beam.options.pipeline_options import SetupOptions, StandardOptions

    from streaming.config.options import validate

    argv = list(argv or ())
    opts = parse(argv, warn=False)
    opts = parse(worker_defaults(opts) + argv)
    validate(opts)
    opts.model_cache_dir = default_model_cache(opts)
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


def check_before_start(opts) -> None:
    """Everything that can fail before the model loads (see streaming/preflight.py).
    What the caller may not read (a 403) is skipped, named in one warning line."""
    from apache_beam.options.pipeline_options import TestOptions

    from streaming import preflight
    from streaming.config.runners import is_remote
    from streaming.model.spec import is_fixed
    from streaming.support import clients

    remote = is_remote(opts)
    if remote:
        for option in ("weights", "model_cache_dir"):
            value = getattr(opts, option) or ""
            if (
                value
                and "://" not in value
                and not value.startswith("/")
                and not (option == "weights" and is_fixed(value))
            ):
                raise cli.UsageError(
                    f"--{option} {value}: Dataflow workers cannot read this machine's "
                    "files; pass a gs:// URI, or an absolute path inside the worker image"
                )
    if remote and (opts.input_dir or (opts.output_dir and "://" not in opts.output_dir)):
        raise cli.UsageError(
            "--input_dir and a local --output_dir work only locally; "
            "use Pub/Sub and gs:// with a remote runner"
        )
    if opts.local_endpoints:
        clients.use_local_endpoints()
    skipped = preflight.check(
        opts,
        local=opts.local_endpoints,
        remote=remote,
        dry_run=remote and bool(opts.view_as(TestOptions).dry_run),
    )
    if skipped:
        print(f"{PROG}: warning: not checked: " + "; ".join(skipped), file=sys.stderr, flush=True)


def launch_summary(opts, result) -> str:
    """What a remote runner's launch did: submitted a job, wrote a template's job file
    (--template_location: the Flex Template launcher submits it; there is no job yet),
    or built the job offline (--dry_run)."""
    from apache_beam.options.pipeline_options import GoogleCloudOptions, TestOptions

    if opts.view_as(TestOptions).dry_run:
        job = getattr(result, "job", None)
        transforms = len(job.proto_pipeline.components.transforms) if job else 0
        return f"built the job ({transforms} transforms); nothing submitted (dry run)"
    template = opts.view_as(GoogleCloudOptions).template_location
    if template:
        return f"wrote the job file {template}; nothing submitted"
    if getattr(result, "has_job", True):
        return f"submitted job {result.job_id()}"
    return "submitted the job"


class Run:
    """One run of the job: options, timing, and what to say when it stops."""

    def __init__(self):
        self.started: float | None = None
        self.result = None
        self.reporter = None

    def seconds(self) -> float:
        return time.monotonic() - self.started if self.started else 0.0

    def execute(self, argv: Sequence[str]) -> dict[str, int]:
        """Checks, builds and runs the job; returns its counters (empty when submitted)."""
        import apache_beam as beam

        from streaming.config.runners import is_remote
        from streaming.model import inference
        from streaming.pipeline import build_pipeline, catch_up_enabled, model_threads
        from streaming.support import progress

        opts = make_options(argv)
        check_before_start(opts)
        if (
            (opts.input_subscription or opts.input_topic)
            and not is_remote(opts)
            and not catch_up_enabled(opts)
        ):
            print(
                f"{PROG}: warning: no catch-up at start (--catch_up needs --buckets and "
                "--output_table): images in flight if this job is killed are not "
                "embedded again",
                file=sys.stderr,
                flush=True,
            )
        pipeline = beam.Pipeline(options=opts)
        build_pipeline(pipeline, opts)
        if is_remote(opts):
            # The launcher never builds the model: workers load it (RunInference).
            print(launch_summary(opts, pipeline.run()), flush=True)
            return {}
        # Fail fast, once: an unloadable model must stop the job here, not per element.
        # RunInference then reuses this copy (load_embedding_model caches it).
        with cli.quiet_native_stderr(enabled=not opts.verbose):
            loaded = inference.load_embedding_model(
                opts.weights, opts.runtime, opts.model_cache_dir, threads=model_threads(opts)
            )
        print(
            f"model: {loaded.model_id} (weights {opts.weights}, {loaded.runtime_version} "
            f"on {getattr(loaded, 'device', 'CPU')})",
            file=sys.stderr,
            flush=True,
        )
        bounded = not (opts.watch or opts.input_subscription or opts.input_topic)
        total = progress.count_files(opts.input_dir) if bounded else None
        self.started = time.monotonic()
        self.reporter = progress.Reporter(
            opts.progress_interval, total=total, bar=bounded and sys.stderr.isatty()
        ).start()
        self.result = pipeline.run()
        self.result.wait_until_finish()
        self.reporter.stop()
        totals = counters(self.result)
        print(summary(totals, self.seconds()), flush=True)
        return totals

    def stop(self, why: str) -> None:
        """After Ctrl-C or SIGTERM: cancel what runs, print the summary so far."""
        from streaming import metrics

        if self.reporter is not None:
            self.reporter.stop()
        if self.result is not None:
            try:
                self.result.cancel()
            except Exception:  # noqa: BLE001 - some runners cannot cancel; we exit anyway
                _LOG.debug("cancel failed", exc_info=True)
        print(
            summary(metrics.TALLY.snapshot()[0], self.seconds())
            + f"\n{why}: stopped before the end (summary so far)",
            flush=True,
        )


def run(argv: Sequence[str] | None = None) -> dict[str, int]:
    """Checks, builds and runs the job in this process; returns its counters (empty
    when submitted to a remote runner). Raises on errors (`main` reports them)."""
    return Run().execute(list(sys.argv[1:] if argv is None else argv))


def _terminate(*_):
    raise Terminated


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = help_parser()
    if {"-h", "--help"} & set(cli.respell(argv, parser.long_options())):
        parser.print_help()
        return cli.EXIT_OK
    cli.setup_logging("--verbose" in argv)
    run = Run()
    previous = signal.signal(signal.SIGTERM, _terminate)
    code, stopped = None, False
    try:
        run.execute(argv)
        code = cli.EXIT_OK
    except KeyboardInterrupt:
        run.stop("interrupted")
        code, stopped = cli.EXIT_INTERRUPTED, True
    except Terminated:
        run.stop("terminated")
        code, stopped = cli.EXIT_OK, True
    except Exception as e:  # noqa: BLE001 - one line, the traceback at debug level
        from streaming.model.inference import WeightsUnavailableError

        usage = run.started is None and isinstance(e, (ValueError, WeightsUnavailableError))
        code = cli.fail(PROG, e, usage=usage)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if stopped or (run.result is not None and code != cli.EXIT_OK):
        # Beam's local runners keep non-daemon worker threads after a cancel; the
        # summary is out, so leave now rather than wait for them.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
