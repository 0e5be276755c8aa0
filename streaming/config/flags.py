"""The embedding job's own command-line options, as plain argparse.

`EmbedOptions` (Beam's PipelineOptions) and `embed-stream --help` both read them from
here; this module imports neither Beam nor TensorFlow, so `--help` answers at once.
"""

from __future__ import annotations

import argparse

# The load stage's settings (`streaming/stages/preprocess.py` and `load.py` apply them).
RESIZE_POLICIES = ("center_crop", "squash", "pad")
DEFAULT_MAX_PIXELS = 100_000_000
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
# --decode_threads / --decode_window: on 2 cores, 2 threads keep both cores decoding.
DEFAULT_DECODE_THREADS = 2
DEFAULT_DECODE_WINDOW = 8

DEFAULT_EXTENSIONS = ".jpg,.jpeg,.png,.gif,.webp,.bmp,.tif,.tiff"
DEFAULT_PROGRESS_INTERVAL = 10.0
RUNTIMES = ("onnx", "tensorflow")
DEFAULT_RUNTIME = "onnx"
VECTOR_LAYOUTS = ("shards", "objects")
ROW_EMBEDDINGS = ("full", "none")
DEFAULT_VECTORS_PER_SHARD = 500  # 500 x 8 KiB of float32: a 4 MiB object
DEFAULT_SHARD_WAIT_SECS = 2.0
DEFAULT_SHARD_IDLE_SECS = 0.01
DEFAULT_SHARD_KEYS = 16
BIGQUERY_WRITE_METHODS = ("storage_write_api", "insert_all")


def add_job_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds every option of the job (not Beam's) to `parser`."""
    src = parser.add_argument_group("source (exactly one)")
    src.add_argument(
        "--input_dir",
        type=str,
        default=None,
        help="Local folder of images (the embedded default). Every file "
        "under it is embedded; the folder is the bucket, the "
        "relative path the name, the mtime in ns the generation.",
    )
    src.add_argument(
        "--watch",
        action="store_true",
        default=False,
        help="With --input_dir: keep running and embed files that appear later.",
    )
    src.add_argument(
        "--watch_interval",
        type=float,
        default=2.0,
        help="Seconds between scans of --input_dir with --watch.",
    )
    src.add_argument(
        "--input_subscription",
        type=str,
        default=None,
        help="projects/P/subscriptions/S receiving storage notifications.",
    )
    src.add_argument(
        "--input_topic",
        type=str,
        default=None,
        help="projects/P/topics/T of storage notifications (Beam creates "
        "a temporary subscription; prefer --input_subscription).",
    )
    src.add_argument(
        "--catch_up",
        type=str,
        default="auto",
        choices=("auto", "always", "never"),
        help="At start, embed every object under --buckets (and "
        "--include_prefix) that has neither a row in --output_table "
        "nor a dead letter: what a killed local job had in flight, or "
        "notifications that never arrived. auto: on the local runner, "
        "which acknowledges Pub/Sub messages when it pulls them; "
        "always: on Dataflow too.",
    )
    src.add_argument(
        "--catch_up_every_minutes",
        type=int,
        default=0,
        help="With a Dataflow job: also catch up every N minutes while "
        "streaming (0: only at start).",
    )
    src.add_argument(
        "--catch_up_chunk",
        type=int,
        default=1000,
        help="Objects the catch-up lists and compares per step (one "
        "BigQuery query each); the job's live work runs between steps.",
    )
    out = parser.add_argument_group("sinks")
    out.add_argument(
        "--output_dir",
        type=str,
        default=None,
        help="Local folder (or gs:// prefix) for vectors/, rows/ and dead_letters/.",
    )
    out.add_argument(
        "--output_gcs",
        type=str,
        default=None,
        help="gs://B/prefix/ for the .npy vectors (cloud path).",
    )
    out.add_argument(
        "--vector_layout",
        type=str,
        default="shards",
        choices=VECTOR_LAYOUTS,
        help="shards (default): many vectors per .npy, each row says which "
        "object and row (vector_uri, vector_index); objects: one .npy per "
        "image, named after it (one storage write per image). See "
        "docs/options.md.",
    )
    out.add_argument(
        "--row_embedding",
        type=str,
        default="full",
        choices=ROW_EMBEDDINGS,
        help="full (default): each row carries its 2,048 values, for searches "
        "inside BigQuery (VECTOR_SEARCH); none: rows name their vector "
        "(vector_uri, vector_index) and carry none, a fraction of the "
        "BigQuery bytes (needs --output_gcs or --output_dir). See docs/options.md.",
    )
    out.add_argument(
        "--vectors_per_shard",
        type=int,
        default=DEFAULT_VECTORS_PER_SHARD,
        help="Most vectors in one shard (default %(default)s: 4 MiB).",
    )
    out.add_argument(
        "--shard_wait_secs",
        type=float,
        default=DEFAULT_SHARD_WAIT_SECS,
        help="Streaming: the longest a vector (and its row) waits for its shard "
        "to fill (default %(default)s s).",
    )
    out.add_argument(
        "--shard_idle_secs",
        type=float,
        default=DEFAULT_SHARD_IDLE_SECS,
        help="Streaming: a shard closes when no vector has joined it for this "
        "long (default %(default)s s) while its key gets under 5 vectors a "
        "second: a lone upload waits only this.",
    )
    out.add_argument(
        "--shard_keys",
        type=int,
        default=DEFAULT_SHARD_KEYS,
        help="Streaming: the most shards filled at once (default %(default)s); "
        "the job uses one per vectors_per_shard / shard_wait_secs images a "
        "second it sees.",
    )
    out.add_argument(
        "--output_table",
        type=str,
        default=None,
        help="BigQuery table P:D.T (or P.D.T) for the embedding rows.",
    )
    out.add_argument(
        "--dead_letter_table", type=str, default=None, help="BigQuery table for dead letters."
    )
    out.add_argument(
        "--bigquery_write_method",
        type=str,
        default=BIGQUERY_WRITE_METHODS[0],
        choices=BIGQUERY_WRITE_METHODS,
        help="How rows reach BigQuery: storage_write_api (default): binary rows on "
        "the Storage Write API's default stream, half insertAll's price; insert_all: "
        "streaming inserts with the row key as insert id. See docs/options.md.",
    )
    out.add_argument(
        "--local_endpoints",
        action="store_true",
        default=False,
        help="Use the emulators named by PUBSUB_EMULATOR_HOST, "
        "STORAGE_EMULATOR_HOST and BIGQUERY_EMULATOR_HOST with "
        "anonymous credentials (see emulators/README.md).",
    )
    model = parser.add_argument_group("model")
    model.add_argument(
        "--weights",
        type=str,
        default="imagenet",
        help="imagenet (default, downloaded by Keras), a local or gs:// "
        ".weights.h5/.keras file, or random:SEED (offline smoke test).",
    )
    model.add_argument(
        "--runtime",
        type=str,
        default=DEFAULT_RUNTIME,
        choices=RUNTIMES,
        help="What runs ResNet50. onnx (default): ONNX Runtime on a graph "
        "built from the same weights (streaming/model/resnet50.py), cached per "
        "weights under --model_cache_dir, so a cached start imports no "
        "TensorFlow and builds no Keras layers; faster on CPU, vectors "
        "within cosine 0.99999 of TensorFlow's (docs/performance.md). "
        "tensorflow: the reference; choose it on GPU workers.",
    )
    model.add_argument(
        "--model_cache_dir",
        type=str,
        default=None,
        help="Folder or gs:// prefix of converted models for --runtime onnx "
        "(default: image-embeddings/onnx under $XDG_CACHE_HOME or "
        "~/.cache). On Dataflow put it next to the weights in gs:// "
        "(the first worker converts, the others load) or bake it "
        "into the worker image.",
    )
    model.add_argument(
        "--weights_watch",
        type=str,
        default=None,
        help="Folder or gs:// prefix to watch for new weights (.weights.h5, "
        ".h5, .keras): the running job switches to the newest one there "
        "without a restart, each row naming the fingerprint of the "
        "weights that embedded it (docs/dataflow.md, Rolling out new "
        "weights).",
    )
    model.add_argument(
        "--weights_watch_interval",
        type=float,
        default=60.0,
        help="Seconds between looks at --weights_watch.",
    )
    model.add_argument(
        "--min_batch_size",
        type=int,
        default=None,
        help="RunInference minimum batch size (default: 8 for a "
        "folder, where BatchElements would otherwise start at 1 "
        "and double; 1 in streaming, where a lone image must not "
        "wait for company).",
    )
    model.add_argument(
        "--max_batch_size",
        type=int,
        default=8,
        help="RunInference maximum batch size: 8 for CPU workers; raise it on GPU workers.",
    )
    model.add_argument(
        "--max_batch_duration_secs",
        type=int,
        default=None,
        help="Longest a partial batch waits in streaming before it is "
        "flushed (0 disables stateful batching; default 1 on Dataflow, 0 on "
        "the local runner, whose bundles already hold what one pull brought).",
    )
    img = parser.add_argument_group("images")
    img.add_argument(
        "--resize_policy",
        type=str,
        default="center_crop",
        choices=RESIZE_POLICIES,
        help="center_crop (ResNet evaluation crop, default), squash or pad.",
    )
    img.add_argument(
        "--max_pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help="Images with more pixels are dead-lettered before decoding.",
    )
    img.add_argument(
        "--max_bytes",
        type=int,
        default=DEFAULT_MAX_BYTES,
        help="Objects larger than this are dead-lettered unread.",
    )
    img.add_argument(
        "--decode_threads",
        type=int,
        default=DEFAULT_DECODE_THREADS,
        help="Threads per DoFn that read and decode images while the "
        "model runs (Pillow releases the GIL).",
    )
    img.add_argument(
        "--decode_window",
        type=int,
        default=DEFAULT_DECODE_WINDOW,
        help="Images read and decoded ahead of the model; only decoded 224x224 arrays wait in it.",
    )
    img.add_argument(
        "--extensions",
        type=str,
        default=DEFAULT_EXTENSIONS,
        help="Comma-separated accepted name suffixes ('' accepts all). "
        "An object passes if its suffix OR its content type is accepted.",
    )
    img.add_argument(
        "--content_types",
        type=str,
        default="image/",
        help="Comma-separated accepted content-type prefixes.",
    )
    img.add_argument(
        "--buckets",
        type=str,
        default=None,
        help="Comma-separated buckets the job may read; a notification "
        "naming any other bucket is dead-lettered (bucket_not_allowed).",
    )
    img.add_argument(
        "--include_prefix",
        type=str,
        action="append",
        default=None,
        help="Only embed names starting with this (repeatable).",
    )
    img.add_argument(
        "--exclude_prefix",
        type=str,
        action="append",
        default=None,
        help="Never embed names starting with this (repeatable).",
    )
    layout = parser.add_argument_group(
        "worker layout (see docs/performance.md; Beam's --number_of_worker_harness_threads "
        "and --experiments=no_use_multiple_sdk_containers go with them)"
    )
    layout.add_argument(
        "--intra_op_threads",
        type=int,
        default=0,
        help="Threads inside one operation of the model, per SDK process, "
        "on either runtime (0: the layout's default: 1 on Dataflow with "
        "one SDK process per vCPU, else the runtime's, one per core; "
        "docs/options.md).",
    )
    layout.add_argument(
        "--inter_op_threads",
        type=int,
        default=0,
        help="Operations of the model run at once, per SDK process "
        "(0: the layout's default, as --intra_op_threads; on ONNX "
        "Runtime, more than 1 turns on its parallel execution mode).",
    )
    run = parser.add_argument_group("feedback")
    run.add_argument(
        "--progress_interval",
        type=float,
        default=DEFAULT_PROGRESS_INTERVAL,
        help="Seconds between progress lines (embedded, dead letters by "
        "reason, images/s, notification-to-row latency) when stderr is "
        "not a terminal, and in --watch and streaming runs.",
    )
    run.add_argument(
        "--verbose",
        action="store_true",
        default=False,
        help="Debug logging: tracebacks of errors, TensorFlow's and Beam's own start-up messages.",
    )
