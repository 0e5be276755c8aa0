"""The embedding pipeline: source -> parse -> filter -> load+resize -> ResNet50 -> sinks.

`build_pipeline` takes the pipeline as an argument so tests can hand it a
`TestPipeline`; the same graph runs on the DirectRunner and on Dataflow, only the
edges (local folder or Pub/Sub in; files or BigQuery/GCS out) change with the options.
"""

from __future__ import annotations

import apache_beam as beam
from apache_beam.options.pipeline_options import DebugOptions, StandardOptions

from streaming import (
    coders,  # noqa: F401 - registers the records' versioned coders
    metrics,
)
from streaming.config.options import EmbedOptions
from streaming.config.runners import on_dataflow, requested_accelerator
from streaming.model import inference
from streaming.sinks import Sink, files, tables
from streaming.sinks import vectors as vectors_
from streaming.sources import catch_up
from streaming.sources.local_folder import ReadLocalFolder
from streaming.sources.notifications import ParseNotifications
from streaming.stages import batching, filters, load
from streaming.support import library_patches

# The local runner's Pub/Sub read: the most one pull may return, and how long a pull
# waits for a message before the runner gets on with its timers.
LOCAL_PULL_MESSAGES = 1000
LOCAL_PULL_WAIT_SECS = 0.5
# An empty pull takes at least this long: an idle job does not spin a core re-pulling,
# and a message waits at most this long to be pulled.
LOCAL_PULL_IDLE_SECS = 0.2


def filter_config(opts: EmbedOptions) -> filters.FilterConfig:
    return filters.FilterConfig(
        include_prefixes=tuple(opts.include_prefix or ()),
        exclude_prefixes=tuple(opts.exclude_prefix or ()),
        extensions=filters.split_list(opts.extensions, lower=True),
        content_types=filters.split_list(opts.content_types, lower=True),
        own_outputs=filters.output_prefixes([opts.output_dir, opts.output_gcs], opts.input_dir),
        allowed_buckets=filters.split_list(opts.buckets),
    )


def read_source(pipeline: beam.Pipeline, opts: EmbedOptions):
    """Returns (refs, dead letters) from the configured source."""
    if opts.input_dir:
        refs = pipeline | "Read local folder" >> ReadLocalFolder(
            opts.input_dir, watch=opts.watch, interval=opts.watch_interval
        )
        return refs, None
    if not on_dataflow(opts):
        library_patches.pull_more_locally(
            LOCAL_PULL_MESSAGES, LOCAL_PULL_WAIT_SECS, LOCAL_PULL_IDLE_SECS
        )
    messages = pipeline | "Read notifications" >> beam.io.ReadFromPubSub(
        subscription=opts.input_subscription, topic=opts.input_topic, with_attributes=True
    )
    parsed = messages | "Parse notifications" >> ParseNotifications()
    if not catch_up_enabled(opts):
        return parsed.refs, parsed.dead_letters
    missed = pipeline | "Catch up" >> catch_up.CatchUp(
        catch_up.scopes(filters.split_list(opts.buckets), opts.include_prefix),
        opts.output_table,
        opts.dead_letter_table,
        local=opts.local_endpoints,
        every_secs=opts.catch_up_every_minutes * 60 or None,
        accept=filter_config(opts),
        chunk=opts.catch_up_chunk,
        unbounded_ticks=on_dataflow(opts),
    )
    refs = (parsed.refs, missed) | "Notified and missed" >> beam.Flatten()
    return refs, parsed.dead_letters


def catch_up_enabled(opts: EmbedOptions) -> bool:
    """Whether a Pub/Sub job starts by embedding what the tables lack (see --catch_up).

    Needs --buckets (what to list) and --output_table (what is done). `auto` turns it
    on where the runner acknowledges messages before they are processed: the local
    runner; Dataflow acknowledges after a durable checkpoint.
    """
    if opts.input_dir or opts.catch_up == "never" or not (opts.buckets and opts.output_table):
        return False
    dataflow = on_dataflow(opts)
    if opts.catch_up_every_minutes and not dataflow:
        # The local streaming runner cannot expand PeriodicImpulse (a splittable DoFn).
        raise ValueError(
            "--catch_up_every_minutes runs on Dataflow; locally the catch-up "
            "runs at each start (or schedule embed-backfill --skip-existing)"
        )
    return opts.catch_up == "always" or not dataflow


def build_pipeline(pipeline: beam.Pipeline, opts: EmbedOptions, handler=None) -> dict:
    """Adds the whole job to `pipeline`.

    Args:
      pipeline: a Pipeline or TestPipeline.
      opts: the job's options.
      handler: a model handler to use instead of the one `--weights` names (tests).

    Returns:
      The named PCollections: `rows` (embedding rows) and `dead_letters` (DeadLetter).
    """
    refs, parse_dead = read_source(pipeline, opts)
    return embed_refs(refs, opts, handler, extra_dead=[parse_dead] if parse_dead else [])


BOUNDED_MIN_BATCH = 8


def min_batch_size(opts: EmbedOptions) -> int:
    """--min_batch_size, else 8 for a bounded run (BatchElements would otherwise ramp up
    from batches of 1) and 1 in streaming (no image waits for company)."""
    if opts.min_batch_size:
        return opts.min_batch_size
    if opts.view_as(StandardOptions).streaming:
        return 1
    return min(BOUNDED_MIN_BATCH, opts.max_batch_size)


def batch_duration_secs(opts: EmbedOptions) -> int:
    """--max_batch_duration_secs, else 1 on Dataflow (its bundles are small, so batches
    form across them) and 0 on the local runner: its bundles already hold what one pull
    brought, and each stateful step it runs is one more pass of its single thread, which
    every image in flight waits for."""
    if opts.max_batch_duration_secs is not None:
        return opts.max_batch_duration_secs
    return 1 if on_dataflow(opts) else 0


def batches_refs(opts: EmbedOptions) -> bool:
    """Whether streaming batches are formed across bundles (batch_duration_secs), from
    refs before the load stage (see streaming/stages/batching.py)."""
    return bool(opts.view_as(StandardOptions).streaming and batch_duration_secs(opts))


def model_handler(opts: EmbedOptions) -> inference.EmbeddingModelHandler:
    """RunInference's handler for `--weights`, batching within bundles.

    RunInference never batches across bundles: that would key, shuffle and hold decoded
    pixels in state. Where refs were batched upstream, a bundle's images make full
    batches and the rest flushes at the bundle's end. A job that asks for an
    accelerator hands it on: its workers refuse to embed on the CPU.
    """
    smallest = opts.max_batch_size if batches_refs(opts) else min_batch_size(opts)
    return inference.make_model_handler(
        opts.weights,
        min_batch_size=smallest,
        max_batch_size=opts.max_batch_size,
        max_batch_duration_secs=None,
        runtime=opts.runtime,
        cache_dir=opts.model_cache_dir,
        threads=model_threads(opts),
        weights_watch=opts.weights_watch,
        weights_watch_interval=opts.weights_watch_interval,
        accelerator=requested_accelerator(opts),
    )


def model_threads(opts: EmbedOptions) -> tuple[int, int]:
    """The model runtime's (intra-op, inter-op) threads for the job's worker layout.

    A flag left at 0 takes the layout's default: on Dataflow with one SDK process per
    vCPU (its own default, without `--experiments=no_use_multiple_sdk_containers`),
    1, so that as many models as vCPUs do not each size their pools to every core;
    elsewhere (a local run, or one SDK process per VM as the worker images set) 0, the
    runtime's default, one thread per core for the one model. docs/options.md says what
    each size does on each runtime.
    """
    per_vcpu = on_dataflow(opts) and not opts.view_as(DebugOptions).lookup_experiment(
        "no_use_multiple_sdk_containers"
    )
    default = 1 if per_vcpu else 0
    return opts.intra_op_threads or default, opts.inter_op_threads or default


def embed_refs(refs, opts: EmbedOptions, handler=None, extra_dead=()) -> dict:
    """The stages after the source, on a PCollection of ImageRef."""
    handler = handler or model_handler(opts)
    accept = filter_config(opts)
    kept = refs | "Filter objects" >> filters.FilterObjects(accept)
    to_load = kept.accepted
    if batches_refs(opts):
        to_load = to_load | "Batch references" >> batching.BatchRefs(
            min_batch_size(opts), opts.max_batch_size, batch_duration_secs(opts)
        )
    loaded = to_load | "Load and resize" >> load.LoadImages(
        opts.resize_policy,
        opts.max_pixels,
        opts.max_bytes,
        threads=opts.decode_threads,
        window=opts.decode_window,
        accept=accept,
    )
    results, embed_dead = loaded.images | "Embed with ResNet50" >> inference.EmbedImages(handler)
    vector_root = files.vector_root(opts.output_gcs, opts.output_dir)
    in_rows = opts.row_embedding == "full"
    # Only the vector travels on, as float32 bytes (vectors.EmbeddedCoder).
    vectors = results | "Drop pixels" >> beam.MapTuple(vectors_.embedded).with_output_types(
        vectors_.Embedded
    )
    streaming = bool(opts.view_as(StandardOptions).streaming)
    if opts.vector_layout == vectors_.OBJECTS:
        if streaming:
            # Spreads the .npy uploads and BigQuery inserts over keys, off the model's step.
            vectors = vectors | "Spread writes" >> beam.Reshuffle()
        written = vectors | "Write vectors" >> files.WriteVectors(vector_root, in_rows)
    else:
        # Streaming: the same one shuffle, grouping vectors into shards on the way.
        groups = vectors | "Spread writes" >> vectors_.GroupForShards(
            opts.vectors_per_shard,
            opts.shard_wait_secs,
            opts.shard_keys,
            streaming,
            idle_secs=opts.shard_idle_secs,
        )
        written = groups | "Write vectors" >> vectors_.WriteShards(vector_root, in_rows)
    _ = written.rows | "Measure latency" >> beam.FlatMap(metrics.observe_row)
    tombstones = kept.deletes | "Tombstones for deletes" >> beam.Map(files.tombstone_row)
    rows = {"rows": written.rows, "tombstones": tombstones}
    dead = {
        "filter": kept.dead_letters,
        "load": loaded.dead_letters,
        "embed": embed_dead,
        "write": written.dead_letters,
    }
    if extra_dead:
        dead["parse"] = extra_dead[0]
    outputs = sinks_for(opts)
    for sink in outputs:
        dead.update(sink.write_rows(rows))
    all_dead = tuple(dead.values()) | "Gather dead letters" >> beam.Flatten()
    for sink in outputs:
        sink.write_dead_letters(dead, all_dead)
    return {"rows": written.rows, "tombstones": tombstones, "dead_letters": all_dead}


def sinks_for(opts) -> list[Sink]:
    """The outputs `opts` (EmbedOptions) name, in the order they are written."""
    outputs: list[Sink] = []
    if opts.output_table:
        outputs.append(
            tables.BigQueryRows(opts.output_table, opts.local_endpoints, opts.bigquery_write_method)
        )
    if opts.dead_letter_table:
        outputs.append(
            tables.BigQueryDeadLetters(
                opts.dead_letter_table, opts.local_endpoints, opts.bigquery_write_method
            )
        )
    if opts.output_dir:
        outputs.append(files.LocalFiles(opts.output_dir))
    return outputs
