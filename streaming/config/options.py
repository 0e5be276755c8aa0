"""Command-line options of the embedding job (one PipelineOptions subclass) and the
checks that need no network: option combinations and the syntax of every name."""

from __future__ import annotations

import os

from apache_beam.options.pipeline_options import (
    GoogleCloudOptions,
    PipelineOptions,
)

from streaming.config import flags, names, runners
from streaming.config.cli import UsageError


class EmbedOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        flags.add_job_arguments(parser)


def validate(opts: EmbedOptions) -> None:
    """Cross-field checks and the syntax of every name; completes short names with
    --project (a table `D.T`, a bare subscription or topic name). Raises UsageError
    (a ValueError) with a message naming the option and its value."""
    sources = [s for s in ("input_dir", "input_subscription", "input_topic") if getattr(opts, s)]
    if len(sources) != 1:
        raise UsageError(
            "give exactly one of --input_dir, --input_subscription, --input_topic"
            f" (got {', '.join('--' + s for s in sources) or 'none'})"
        )
    if opts.watch and not opts.input_dir:
        raise UsageError("--watch needs --input_dir")
    if not (opts.output_dir or opts.output_table or opts.output_gcs):
        raise UsageError("give at least one of --output_dir, --output_table, --output_gcs")
    if (opts.min_batch_size is not None and opts.min_batch_size < 1) or opts.max_batch_size < (
        opts.min_batch_size or 1
    ):
        raise UsageError("need 1 <= --min_batch_size <= --max_batch_size")
    if opts.catch_up == "always" and not (opts.buckets and opts.output_table):
        raise UsageError("--catch_up always needs --buckets and --output_table")
    if opts.catch_up_chunk < 1:
        raise UsageError(f"--catch_up_chunk must be >= 1, not {opts.catch_up_chunk}")
    if opts.catch_up_every_minutes < 0:
        raise UsageError(
            f"--catch_up_every_minutes must be >= 0, not {opts.catch_up_every_minutes}"
        )
    if opts.decode_threads < 1 or opts.decode_window < 1:
        raise UsageError("--decode_threads and --decode_window must be at least 1")
    for option in ("intra_op_threads", "inter_op_threads"):
        if getattr(opts, option) < 0:
            raise UsageError(
                f"--{option} must be >= 0 (0: the runtime's default), not {getattr(opts, option)}"
            )
    if opts.row_embedding == "none" and not (opts.output_gcs or opts.output_dir):
        raise UsageError(
            "--row_embedding none needs --output_gcs or --output_dir: rows without "
            "their embedding must name a .npy that holds it"
        )
    for option in ("vectors_per_shard", "shard_keys"):
        if getattr(opts, option) < 1:
            raise UsageError(f"--{option} must be at least 1, not {getattr(opts, option)}")
    for option in ("shard_wait_secs", "shard_idle_secs"):  # a shard must have a deadline
        if not getattr(opts, option) > 0:
            raise UsageError(f"--{option} must be positive, not {getattr(opts, option)}")
    if (
        opts.local_endpoints
        and (opts.output_table or opts.dead_letter_table)
        and opts.bigquery_write_method == "storage_write_api"
        and not os.environ.get("BIGQUERY_EMULATOR_GRPC_HOST")
    ):
        raise UsageError(
            "--bigquery_write_method storage_write_api with --local_endpoints needs "
            "BIGQUERY_EMULATOR_GRPC_HOST (the emulator's gRPC host:port), or pass "
            "--bigquery_write_method insert_all"
        )
    if opts.weights_watch_interval <= 0:
        raise UsageError(
            f"--weights_watch_interval must be positive, not {opts.weights_watch_interval}"
        )
    watch = opts.weights_watch
    if watch and "://" not in watch:
        if runners.on_dataflow(opts):
            raise UsageError(
                f"--weights_watch {watch}: Dataflow workers cannot see a local "
                "folder; pass a gs:// prefix"
            )
        if not os.path.isdir(watch):
            raise UsageError(f"--weights_watch {watch}: not a folder (or gs:// prefix)")
    if opts.max_pixels < 1 or opts.max_bytes < 1:
        raise UsageError("--max_pixels and --max_bytes must be positive")
    check_names(opts)


def check_names(opts: EmbedOptions) -> None:
    """Table ids, Pub/Sub paths and gs:// URIs parse; short forms get --project."""
    project = opts.view_as(GoogleCloudOptions).project

    def checked(option: str, parse):
        value = getattr(opts, option)
        if value:
            try:
                setattr(opts, option, parse(value))
            except ValueError as e:
                raise UsageError(f"--{option}: {e}") from None

    checked("output_table", lambda v: names.full_table_id(v, project))
    checked("dead_letter_table", lambda v: names.full_table_id(v, project))
    checked("input_subscription", lambda v: names.pubsub_path(v, "subscriptions", project))
    checked("input_topic", lambda v: names.pubsub_path(v, "topics", project))
    for option in ("output_gcs", "output_dir", "weights", "model_cache_dir", "weights_watch"):
        value = getattr(opts, option)
        if option == "output_gcs" or names.is_gcs_uri(value):
            checked(option, lambda v: names.split_gcs_uri(v) and v)
