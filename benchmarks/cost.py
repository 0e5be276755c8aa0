"""What a million images cost, every service counted: the streaming job on the emulators.

  . .emulators/env.sh && .venv/bin/python benchmarks/cost.py [--images N] [--quick]

Needs the emulators (`bash emulators/start.sh`); it never starts or stops them. For each
vector layout it runs the streaming job (`--weights random:0`, `--catch_up never`, as on
Dataflow) on a fresh images bucket, vectors bucket and dataset, with its Cloud Storage
and BigQuery traffic through proxies of this process (`tools/http_proxy.py`,
`strict_bigquery.py`) that count every request. After warm-up images, N JPEGs are
uploaded at once; once all their rows are queryable the job stops, and per 1,000 images:

- Cloud Storage operations of the job, by class (A: object writes, lists; B: reads,
  metadata) and bucket, and the objects it wrote (count, bytes);
- BigQuery requests, their bytes and rows, as the strict proxy forwarded them: Storage
  Write API appends (the job's default, on bqemulator's gRPC port) and insertAll
  requests (the run with `--bigquery_write_method insert_all`), and the rows' billed
  bytes by BigQuery's data-size rules (each column's type; insertAll bills at least
  1 KB a row);
- Pub/Sub notifications of the images bucket (a second subscription on the topic) and
  their bytes (data + attributes);
- bytes per image into each step that shuffles or holds state, by encoding elements of
  the run with the coders of the job's graph (`streaming.pipeline.build_pipeline`).

List prices (`PRICES`: each with the page read and the date) turn the counts
into $ per million images per service, and a year of storage. Then the default layout
at the rates users run (1, 20, 200 images/s): the shards per 1,000 images at that rate
from `shards.json` (the job's rule, timers on time), beside the cheapest measured
workers at that rate from `scale.json`; and per pass or query: a catch-up pass over a
million objects, an analyst's search over a million rows. Writes cost.{json,md}.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import tempfile
import time
import uuid

import _common as C
import numpy as np

from tools.processes import Child, python_module, wait_until

READ_ON = "2026-12-03"
# (value, unit, source read on READ_ON)
PRICES = {
    "gcs_class_a": (
        0.005 / 1000,
        "$ per Class A operation (Standard storage)",
        "https://cloud.google.com/storage/pricing-examples",
    ),
    "gcs_class_b": (
        0.0004 / 1000,
        "$ per Class B operation (Standard storage)",
        "https://cloud.google.com/storage/pricing-examples",
    ),
    "gcs_storage": (
        0.020,
        "$ per GiB-month (Standard storage, us regions)",
        "https://cloud.google.com/storage/pricing-examples",
    ),
    "bq_insert_all": (
        0.01 / 200,
        "$ per MiB (streaming inserts: $0.01 per 200 MB, each row at least 1 KB)",
        "https://cloud.google.com/bigquery/pricing",
    ),
    "bq_write_api": (
        0.025,
        "$ per GiB (Storage Write API; Google's page states the free "
        "first 2 TiB a month and 'a significantly lower cost than insertAll'; "
        "the $ figure as a cost tool quotes the price list)",
        "https://cloud.google.com/bigquery/docs/write-api and "
        "https://help.nops.io/inform/supported-recommendations/"
        "use-bigquery-storage-write-api-instead-of-streaming-inserts.md",
    ),
    "bq_storage": (
        0.02,
        "$ per GiB-month (active logical storage)",
        "https://cloud.google.com/bigquery/pricing",
    ),
    "bq_long_term_storage": (
        0.01,
        "$ per GiB-month (long-term logical storage: a table partition not modified "
        "for 90 consecutive days; Google's page, stored copy, and a summary of it dated "
        "2025-08-11 agree; read 2026-12-07)",
        "https://cloud.google.com/bigquery/pricing and "
        "https://coconote.app/notes/2caa4c53-cab8-40ca-8ad5-1a9e8556ec57",
    ),
    "bq_query": (
        6.25,
        "$ per TiB scanned (on-demand queries; 'a minimum 10 MB data processed per "
        "table referenced' by each query, Google's page, archived copy; the $6.25 from a "
        "summary of the page dated 2025-08-11: the stored copies of Google's page "
        "predate it and say $5; read 2026-12-07)",
        "https://cloud.google.com/bigquery/pricing and "
        "https://coconote.app/notes/2caa4c53-cab8-40ca-8ad5-1a9e8556ec57",
    ),
    "pubsub": (
        40.0,
        "$ per TiB of throughput (publish and delivery; 'a minimum of 1000 "
        "bytes per publish, push or pull request'; first 10 GiB a month free)",
        "https://cloud.google.com/pubsub/pricing",
    ),
    "streaming_engine": (
        0.018,
        "$ per GiB of Streaming Engine data processed (us-central1): "
        "the data-processed billing a streaming job gets unless it opts "
        "into resource-based billing (https://cloud.google.com/dataflow/docs/"
        "streaming-engine); the stored copies of Google's price page render "
        "no figures, this one is as two price tables transcribed from it "
        "(read 2026-06 and 2026-09) agree",
        "https://cloud.google.com/dataflow/pricing",
    ),
}
# Streaming Engine data processed, as counted here: the notification bytes read, plus each
# byte into a step that shuffles or keeps state twice (written in, read back out). Google
# does not publish the metering rule; counting both directions errs on the high side.
SE_PASSES = 2
GOALS = {
    "objects_per_1000": {"20": 50, "200": 10},  # at that rate (shards.json)
    "services_with_a_year_over_workers": {"20": 1.5},
}
EMBEDDING_BYTES = 2048 * 8  # a row's embedding: 2,048 FLOAT64 values
RATES = ("1", "20", "200")  # images a second users run (shards.json, scale.json)
RETENTION_MONTHS = 12
ACTIVE_MONTHS = 3  # BigQuery bills a partition as active storage for its first 90 days
QUERY_MIN_BYTES = 10 * 2**20
# The columns of the rows table the catch-up's query reads (streaming.sources.catch_up).
CATCH_UP_COLUMNS = ("bucket", "name", "generation", "event_type", "model_fingerprint")
# An analyst's search over every row: its embedding and its name.
SEARCH_COLUMNS = ("embedding", "name")
GIB, MIB, TIB = 2**30, 2**20, 2**40

RUNS = {  # name: (options, what it stands for)
    "objects": (["--vector_layout", "objects"], "one .npy per image (the former layout)"),
    "shards": (
        [],
        "shards, default options, at the rate the job reaches on this machine",
    ),
    "shards-insert-all": (
        ["--bigquery_write_method", "insert_all"],
        "as **shards**, the rows by insertAll instead of the Storage Write API",
    ),
}
DEFAULT_RUN = "shards"


# ------------------------------------------------------------------ counting


def storage_op(request) -> tuple[str, str] | None:
    """(class, what) of one JSON API request: A for inserts, lists, compose/copy; B for
    reads and metadata; None for what is free (deletes) or not an operation of its own
    (the data PUTs of a resumable upload)."""
    path = request.path.split("?", 1)[0]
    if request.method == "DELETE":
        return None
    if path.startswith("/upload/"):
        return ("A", "object insert") if request.is_upload_start else None
    if request.method in ("POST", "PUT", "PATCH"):
        return "A", "object write"
    if path.startswith("/download/") or request.query.get("alt") == "media":
        return "B", "object read"
    if path.rstrip("/").endswith("/o"):
        return "A", "object list"
    if "/o/" in path:
        return "B", "object metadata"
    return "B", "bucket metadata"


def data_size(value, field: dict) -> int:
    """BigQuery's logical bytes of one value (https://cloud.google.com/bigquery/pricing,
    data size calculation): 8 for INT64, FLOAT64, TIMESTAMP; 1 for BOOL; 2 + UTF-8 length
    for STRING; NULL 0; repeated values summed."""
    if value is None:
        return 0
    if field.get("mode") == "REPEATED":
        return sum(data_size(v, {**field, "mode": "NULLABLE"}) for v in value)
    kind = field["type"]
    if kind in ("INTEGER", "INT64", "FLOAT", "FLOAT64", "TIMESTAMP", "NUMERIC"):
        return 8
    if kind in ("BOOLEAN", "BOOL"):
        return 1
    return 2 + len(str(value).encode("utf-8"))


def row_bytes(row: dict, columns=None) -> int:
    """BigQuery's logical bytes of `row` (only `columns`, when given)."""
    import schemas

    return sum(
        data_size(row.get(f["name"]), f)
        for f in schemas.table_schema()
        if columns is None or f["name"] in columns
    )


# ------------------------------------------------------------------ shuffles


def shuffle_bytes(layout_args: list[str], ref, vector: np.ndarray, model_id: str) -> list[dict]:
    """Bytes per image into each step of the job's graph that shuffles or keeps state,
    from the coders Beam picks for those steps' inputs."""
    import apache_beam as beam
    from apache_beam import coders
    from apache_beam.ml.inference.base import PredictionResult

    from streaming import main, pipeline
    from streaming.records import ImageInfo
    from streaming.sinks import files, vectors

    opts = main.make_options(
        [
            "--input_subscription",
            "projects/my-project/subscriptions/embed",
            "--output_table",
            "my-project:images.embeddings",
            "--output_gcs",
            "gs://my-vectors/embeddings/",
            "--weights",
            "random:0",
            "--runner",
            "DirectRunner",
            *layout_args,
        ]
    )
    p = beam.Pipeline(options=opts)
    pipeline.build_pipeline(p, opts)
    info = ImageInfo(ref, 640, 480, "JPEG")
    samples = {"Batch references": ref, "Spread writes": vectors.Embedded(info, vector, model_id)}
    found = {}

    class Visitor(beam.pipeline.PipelineVisitor):
        def enter_composite_transform(self, node):
            if node.full_label in samples and node.inputs:
                found[node.full_label] = node.inputs[0].element_type

        def visit_transform(self, node):
            self.enter_composite_transform(node)

    p.visit(Visitor())
    out = []
    for label, sample in samples.items():
        if label not in found:
            continue
        coder = coders.registry.get_coder(found[label])
        # Both steps add a key: a shard number (one varint byte) or BatchElements' shared
        # key; counted as one byte.
        out.append(
            {
                "step": label,
                "element": type(sample).__name__,
                "coder": type(coder).__name__,
                "bytes": len(coder.encode(sample)) + 1,
            }
        )
    old = coders.registry.get_coder(object).encode((info, PredictionResult(None, vector, model_id)))
    row = files.embedding_row(info, vector, model_id, "gs://b/v/x.npy", 0)
    out.append(
        {
            "step": "for comparison: (ImageInfo, PredictionResult) with Beam's default "
            "coder (the former element)",
            "bytes": len(old),
        }
    )
    out.append(
        {
            "step": "for comparison: the row's embedding as JSON text (short float32 decimals)",
            "bytes": len(json.dumps(row["embedding"])),
        }
    )
    out.append(
        {
            "step": "for comparison: the same as float64 reprs (the former rows)",
            "bytes": len(json.dumps(np.float32(vector).tolist())),
        }
    )
    return out


# ------------------------------------------------------------------ one run


def upload(bucket, files: dict[str, str]) -> None:
    with cf.ThreadPoolExecutor(8) as pool:
        list(
            pool.map(
                lambda n: bucket.blob(n).upload_from_filename(files[n], content_type="image/jpeg"),
                files,
            )
        )


def pull_all(subscriber, subscription: str, quiet_for: float = 2.0) -> list:
    messages, last = [], time.monotonic()
    while time.monotonic() - last < quiet_for:
        try:
            resp = subscriber.pull(
                subscription=subscription, max_messages=500, timeout=5, retry=None
            )
        except Exception:  # noqa: BLE001 - an empty pull may time out
            resp = None
        got = list(resp.received_messages) if resp else []
        if got:
            messages.extend(m.message for m in got)
            subscriber.acknowledge(subscription=subscription, ack_ids=[m.ack_id for m in got])
            last = time.monotonic()
        else:
            time.sleep(0.2)
    return messages


def run_layout(name: str, extra: list[str], images: dict[str, str], work: str) -> dict:
    from google.cloud import pubsub_v1

    from streaming.support import clients
    from tools.http_proxy import HttpProxy
    from tools.strict_bigquery import Stats, grpc_proxy, insert_limits

    project = clients.project_from_env()
    storage, bq = clients.storage_client(True), clients.bigquery_client(True)
    rid = uuid.uuid4().hex[:8]
    img, vec = storage.create_bucket(f"cost-{rid}"), storage.create_bucket(f"cost-vec-{rid}")
    dataset = f"cost_{rid}"
    bq.create_dataset(dataset)
    topic = f"projects/{project}/topics/{os.environ.get('EMU_NOTIFY_TOPIC', 'gcs-notifications')}"
    subscriber = pubsub_v1.SubscriberClient()
    job_sub, tap = (f"projects/{project}/subscriptions/{x}-{rid}" for x in ("cost", "tap"))
    for sub in (job_sub, tap):
        subscriber.create_subscription(name=sub, topic=topic, ack_deadline_seconds=60)
    gcs_proxy = HttpProxy(os.environ["STORAGE_EMULATOR_HOST"], record=True).start()
    stats = Stats()
    bq_proxy = HttpProxy(
        os.environ["BIGQUERY_EMULATOR_HOST"], rule=lambda r: insert_limits(r, stats), record=False
    ).start()
    bq_grpc = grpc_proxy(os.environ["BIGQUERY_EMULATOR_GRPC_HOST"], stats)
    grpc_port = bq_grpc.add_insecure_port("127.0.0.1:0")
    bq_grpc.start()
    table = f"{project}.{dataset}.embeddings"
    log = os.path.join(work, f"job-{name}.log")
    job = Child(
        python_module(
            "streaming.main",
            "--input_subscription",
            job_sub,
            "--buckets",
            img.name,
            "--output_table",
            table.replace(".", ":", 1),
            "--dead_letter_table",
            f"{project}:{dataset}.dead_letters",
            "--output_gcs",
            f"gs://{vec.name}/vectors/",
            "--weights",
            "random:0",
            "--catch_up",
            "never",
            "--local_endpoints",
            *extra,
        ),
        log,
        env={
            **C.CHILD_ENV,
            "STORAGE_EMULATOR_HOST": gcs_proxy.url,
            "BIGQUERY_EMULATOR_HOST": bq_proxy.url,
            "BIGQUERY_EMULATOR_GRPC_HOST": f"127.0.0.1:{grpc_port}",
        },
    )

    def count(prefix: str) -> int:
        try:
            return list(
                bq.query(
                    f"SELECT COUNT(*) AS n FROM `{table}` WHERE STARTS_WITH(name, '{prefix}')"
                ).result()
            )[0]["n"]
        except Exception:  # noqa: BLE001 - the table is created by the job's first insert
            return 0

    try:
        names = sorted(images)
        upload(img, {f"warm/{n}": images[n] for n in names[:3]})
        wait_until(lambda: count("warm/") >= 3, 600, "warm-up rows", job, interval=1)
        pull_all(subscriber, tap, quiet_for=1)
        mark_requests, mark_stats = len(gcs_proxy.requests), stats.as_dict()
        start = time.time()
        upload(img, {f"run/{n}": images[n] for n in names})
        wait_until(lambda: count("run/") >= len(names), 1800, "the run's rows", job, interval=1)
        seconds = time.time() - start
    finally:
        job.stop()
        gcs_proxy.stop()
        bq_proxy.stop()
        bq_grpc.stop(None)
    n = len(images)
    after = stats.as_dict()
    ops: dict[str, dict[str, int]] = {}
    for request in gcs_proxy.requests[mark_requests:]:
        op = storage_op(request)
        bucket = request.bucket_and_object[0]
        if op is None or bucket not in (img.name, vec.name):
            continue
        where = "images" if bucket == img.name else "vectors"
        key = f"{op[0]}: {op[1]} ({where} bucket)"
        ops.setdefault(op[0], {}).setdefault(key, 0)
        ops[op[0]][key] += 1
    written = [b for b in vec.list_blobs(prefix="vectors/")]
    warm_objects = {
        r["vector_uri"]
        for r in bq.query(
            f"SELECT DISTINCT vector_uri FROM `{table}` WHERE STARTS_WITH(name, 'warm/')"
        ).result()
    }
    run_objects = [b for b in written if f"gs://{vec.name}/{b.name}" not in warm_objects]
    rows = [
        dict(r)
        for r in bq.query(f"SELECT * FROM `{table}` WHERE STARTS_WITH(name, 'run/')").result()
    ]
    billed = [row_bytes(r) for r in rows]
    notes = [
        m
        for m in pull_all(subscriber, tap)
        if m.attributes.get("bucketId") == img.name
        and m.attributes.get("objectId", "").startswith("run/")
    ]
    note_bytes = [
        len(m.data) + sum(len(k) + len(v) for k, v in m.attributes.items()) for m in notes
    ]
    per_k = lambda x: round(x * 1000 / n, 2)
    sample = rows[0]
    bq.delete_dataset(dataset, delete_contents=True, not_found_ok=True)
    for sub in (job_sub, tap):
        subscriber.delete_subscription(subscription=sub)
    return {
        "images": n,
        "seconds": round(seconds, 1),
        "img_s": round(n / seconds, 1),
        "per_1000": {
            "objects_written": per_k(len(run_objects)),
            "object_bytes": per_k(sum(b.size for b in run_objects)),
            "gcs_class_a": per_k(sum(ops.get("A", {}).values())),
            "gcs_class_b": per_k(sum(ops.get("B", {}).values())),
            "gcs_by_kind": {k: per_k(v) for c in ops.values() for k, v in sorted(c.items())},
            "bq_insert_requests": per_k(after["insert_requests"] - mark_stats["insert_requests"]),
            "bq_insert_bytes": per_k(after["insert_bytes"] - mark_stats["insert_bytes"]),
            "bq_insert_rows": per_k(after["insert_rows"] - mark_stats["insert_rows"]),
            "bq_append_requests": per_k(after["append_requests"] - mark_stats["append_requests"]),
            "bq_append_bytes": per_k(after["append_bytes"] - mark_stats["append_bytes"]),
            "bq_append_rows": per_k(after["append_rows"] - mark_stats["append_rows"]),
            "bq_billed_bytes": per_k(sum(billed)),
            "bq_rows": per_k(len(rows)),
            "bq_catch_up_column_bytes": per_k(sum(row_bytes(r, CATCH_UP_COLUMNS) for r in rows)),
            "bq_search_column_bytes": per_k(sum(row_bytes(r, SEARCH_COLUMNS) for r in rows)),
            "bq_billed_bytes_insert_all": per_k(sum(max(b, 1024) for b in billed)),
            "pubsub_messages": per_k(len(notes)),
            "pubsub_bytes": per_k(sum(note_bytes)),
            "pubsub_billed_bytes": per_k(sum(max(b, 1000) for b in note_bytes)),
        },
        "largest_insert_request_bytes": after["max_insert_bytes"],
        "largest_append_request_bytes": after["max_append_bytes"],
        "sample": {
            "row": {
                k: sample[k]
                for k in (
                    "bucket",
                    "name",
                    "generation",
                    "size_bytes",
                    "content_type",
                    "event_time",
                )
            },
            "model_id": f"{sample['model_name']}@{sample['model_fingerprint']}"
            f"+{sample['model_runtime']}",
            "vector": [float(x) for x in sample["embedding"]],
            "notification": (notes[0].data, dict(notes[0].attributes)),
        },
    }


# ------------------------------------------------------------------ prices


def streaming_engine_bytes(c: dict, shuffle: float) -> float:
    """Streaming Engine bytes per image: the notification, plus `SE_PASSES` x `shuffle`
    (the bytes per image into the steps that shuffle or keep state)."""
    return c["pubsub_bytes"] / 1000 + SE_PASSES * shuffle


def per_million(c: dict, shuffle: float, ingest: str) -> dict:
    """$ per million images per service from counts per 1,000 images."""
    m = 1000  # per 1,000 -> per million
    price = lambda k: PRICES[k][0]
    bq_bytes = c["bq_billed_bytes_insert_all"] if ingest == "insert_all" else c["bq_billed_bytes"]
    bq = (
        bq_bytes
        * m
        / (MIB if ingest == "insert_all" else GIB)
        * price("bq_insert_all" if ingest == "insert_all" else "bq_write_api")
    )
    return {
        "Cloud Storage Class A": round(c["gcs_class_a"] * m * price("gcs_class_a"), 3),
        "Cloud Storage Class B": round(c["gcs_class_b"] * m * price("gcs_class_b"), 3),
        "BigQuery ingestion": round(bq, 3),
        "Pub/Sub (publish + delivery)": round(
            2 * c["pubsub_billed_bytes"] * m / TIB * price("pubsub"), 3
        ),
        "Dataflow Streaming Engine (data processed)": round(
            streaming_engine_bytes(c, shuffle) * 1e6 / GIB * price("streaming_engine"), 3
        ),
        "_streaming_engine_gib": round(streaming_engine_bytes(c, shuffle) * 1e6 / GIB, 2),
    }


def read_result(results_dir: str, name: str) -> dict:
    """`NAME.json` from `results_dir`, else from benchmarks/results."""
    path = os.path.join(results_dir, name + ".json")
    if not os.path.exists(path):
        path = os.path.join(C.RESULTS, name + ".json")
    with open(path) as f:
        return json.load(f)


def stored_a_year(c: dict) -> dict:
    """$ per million images kept `RETENTION_MONTHS`: the rows in BigQuery (active for
    `ACTIVE_MONTHS`, then long-term) and the vectors in Cloud Storage (Standard)."""
    bq_gib = c["bq_billed_bytes"] * 1000 / GIB
    gcs_gib = c["object_bytes"] * 1000 / GIB
    long_term = RETENTION_MONTHS - ACTIVE_MONTHS
    return {
        "BigQuery rows, a month (active)": round(bq_gib * PRICES["bq_storage"][0], 3),
        "Cloud Storage vectors, a month": round(gcs_gib * PRICES["gcs_storage"][0], 3),
        "BigQuery rows, a year": round(
            bq_gib
            * (
                ACTIVE_MONTHS * PRICES["bq_storage"][0]
                + long_term * PRICES["bq_long_term_storage"][0]
            ),
            3,
        ),
        "Cloud Storage vectors, a year": round(
            gcs_gib * RETENTION_MONTHS * PRICES["gcs_storage"][0], 3
        ),
    }


def at_rates(run: dict, shuffled: float, shards: dict, scale: dict) -> dict:
    """The default layout at each rate users run: the run's counts per image, with the
    shards per 1,000 images that rate gives (shards.json: the job's rule, timers on
    time), priced with a year of storage, beside the cheapest measured workers at that
    rate (scale.json)."""
    out = {}
    for rate in RATES:
        c = dict(run["per_1000"])
        objects = shards["rates"][rate]["traffic"]["objects_per_1000"]
        c["gcs_class_a"] += objects - c["objects_written"]  # the run's own shards replaced
        c["objects_written"] = objects
        services = per_million(c, shuffled, "write_api")
        year = stored_a_year(c)
        ingest = round(sum(v for k, v in services.items() if not k.startswith("_")), 3)
        stored = year["BigQuery rows, a year"] + year["Cloud Storage vectors, a year"]
        workers = {k: v[rate] for k, v in scale["cheapest_measured"].items()}
        # --row_embedding none: the same rows without their 2,048 FLOAT64 values.
        bare = dict(c, bq_billed_bytes=c["bq_billed_bytes"] - c["bq_rows"] * EMBEDDING_BYTES)
        bare_services = per_million(bare, shuffled, "write_api")
        bare_year = stored_a_year(bare)
        bare_total = round(
            sum(v for k, v in bare_services.items() if not k.startswith("_"))
            + bare_year["BigQuery rows, a year"]
            + bare_year["Cloud Storage vectors, a year"],
            3,
        )
        out[rate] = {
            "without_embedding": {
                "BigQuery ingestion": bare_services["BigQuery ingestion"],
                "BigQuery rows, a year": bare_year["BigQuery rows, a year"],
                "services_with_a_year_usd": bare_total,
                "over_workers": {
                    k: round(bare_total / w["usd_per_million"], 2) for k, w in workers.items()
                },
            },
            "objects_per_1000": objects,
            "services": services,
            "storage": year,
            "services_usd": ingest,
            "services_with_a_year_usd": round(ingest + stored, 3),
            "workers": workers,
            "services_with_a_year_over_workers": {
                k: round((ingest + stored) / w["usd_per_million"], 2) for k, w in workers.items()
            },
        }
    return out


def once(run: dict, chunk: int) -> dict:
    """What recurs per pass or per query, not per image, for a table of a million rows:
    a catch-up pass over a million objects (listing pages of 1,000, Class A; one query
    per `chunk` objects, each billed at least 10 MB per table it reads, at most the
    columns it reads over the whole table), and an analyst's search over every row
    (embedding and name)."""
    c = run["per_1000"]
    query = PRICES["bq_query"][0] / TIB
    queries = 1e6 / chunk
    per_query_low = 2 * QUERY_MIN_BYTES  # rows and dead letters, pruned to the chunk
    per_query_high = max(QUERY_MIN_BYTES, c["bq_catch_up_column_bytes"] * 1000) + QUERY_MIN_BYTES
    listing = 1e6 / 1000 * PRICES["gcs_class_a"][0]
    search_bytes = c["bq_search_column_bytes"] * 1000
    return {
        "catch_up_chunk": chunk,
        "catch_up_queries": int(queries),
        "catch_up_listing_usd": round(listing, 4),
        "catch_up_queries_usd": [
            round(queries * per_query_low * query, 3),
            round(queries * per_query_high * query, 3),
        ],
        "search_bytes_per_million_rows": round(search_bytes),
        "search_usd_per_million_rows": round(max(QUERY_MIN_BYTES, search_bytes) * query, 3),
        "rows_per_image": round(c["bq_rows"] / 1000, 4),
    }


def ingest_of(run: str) -> str:
    """The ingestion method a run used (`--bigquery_write_method`)."""
    return "insert_all" if "insert_all" in RUNS[run][0] else "write_api"


def priced_columns(runs) -> list[tuple[str, str]]:
    """(run, ingestion) pairs of the $ table: each run by the method it used."""
    return [(k, ingest_of(k)) for k in runs]


def column_label(run: str, ingest: str) -> str:
    method = "insertAll" if ingest == "insert_all" else "Write API"
    return f"{run}, {method}" + ("" if ingest == ingest_of(run) else " (priced)")


def rates_section(res: dict) -> list[str]:
    """The default layout at the rates users run, the goals, what recurs per pass."""
    at, o, g = res["at_rates"], res["once"], res["goals"]
    sets = list(next(iter(at.values()))["workers"])
    lines = [
        "",
        "## The default layout at the rates users run",
        "",
        f"Counts per image from the **{DEFAULT_RUN}** run; shards per 1,000 images at each "
        f"rate from the job's rule with timers on time ({res['sources']['shards']}); "
        "workers: the cheapest measured machine at that rate, at least one worker "
        f"({res['sources']['scale']}); storage kept {RETENTION_MONTHS} months (BigQuery "
        f"active {ACTIVE_MONTHS} months, then long-term).",
        "",
        "| $ per million images | " + " | ".join(f"{r} img/s" for r in at) + " |",
        "|---|" + "---:|" * len(at),
        "| shards per 1,000 images | "
        + " | ".join(str(a["objects_per_1000"]) for a in at.values())
        + " |",
    ]
    for service in [k for k in next(iter(at.values()))["services"] if not k.startswith("_")]:
        lines.append(
            f"| {service} | " + " | ".join(str(a["services"][service]) for a in at.values()) + " |"
        )
    lines.append(
        "| **services** | " + " | ".join(f"**{a['services_usd']}**" for a in at.values()) + " |"
    )
    for item in ("BigQuery rows, a year", "Cloud Storage vectors, a year"):
        lines.append(
            f"| {item} | " + " | ".join(str(a["storage"][item]) for a in at.values()) + " |"
        )
    lines.append(
        "| **services and a year of storage** | "
        + " | ".join(f"**{a['services_with_a_year_usd']}**" for a in at.values())
        + " |"
    )
    bare = [a["without_embedding"] for a in at.values()]
    lines += [
        "| `--row_embedding none`: BigQuery ingestion | "
        + " | ".join(str(b["BigQuery ingestion"]) for b in bare)
        + " |",
        "| `--row_embedding none`: BigQuery rows, a year | "
        + " | ".join(str(b["BigQuery rows, a year"]) for b in bare)
        + " |",
        "| **`--row_embedding none`: services and a year of storage** | "
        + " | ".join(f"**{b['services_with_a_year_usd']}**" for b in bare)
        + " |",
    ]
    for images in sets:
        lines.append(
            f"| workers, {images} | "
            + " | ".join(
                f"{a['workers'][images]['usd_per_million']} ({a['workers'][images]['workers']} x "
                f"{a['workers'][images]['machine']})"
                for a in at.values()
            )
            + " |"
        )
        lines.append(
            f"| services and a year / workers, {images} | "
            + " | ".join(str(a["services_with_a_year_over_workers"][images]) for a in at.values())
            + " |"
        )
        lines.append(
            f"| `--row_embedding none`: services and a year / workers, {images} | "
            + " | ".join(str(b["over_workers"][images]) for b in bare)
            + " |"
        )
    lines += [
        "",
        "## Goals",
        "",
        "- Shards per 1,000 images: "
        + ", ".join(
            f"{r} img/s {at[r]['objects_per_1000']} (goal: at most {v})"
            for r, v in g["objects_per_1000"].items()
        )
        + ".",
        "- Services with a year of storage over the workers' share: "
        + "; ".join(
            f"{r} img/s: "
            + ", ".join(
                f"{images} {at[r]['services_with_a_year_over_workers'][images]}x" for images in sets
            )
            + f" (goal: at most {v}x)"
            for r, v in g["services_with_a_year_over_workers"].items()
        )
        + ".",
        "",
        "## Per pass and per query",
        "",
        f"- A catch-up pass over a million objects: listing ${o['catch_up_listing_usd']} "
        f"(1,000 pages, Class A) and {o['catch_up_queries']:,} queries (one per "
        f"{o['catch_up_chunk']:,} objects) ${o['catch_up_queries_usd'][0]} to "
        f"${o['catch_up_queries_usd'][1]}: each billed at least 10 MB per table (rows, "
        "dead letters) where clustering prunes the rows table to the chunk, at most the "
        "columns it reads over a table of a million rows where it does not.",
        f"- An analyst's search over a million rows (embedding and name, "
        f"{o['search_bytes_per_million_rows'] / 1e9:.1f} GB): "
        f"${o['search_usd_per_million_rows']} a query, on demand.",
        f"- Rows per image in the run (duplicates from at-least-once appends): "
        f"{o['rows_per_image']}.",
    ]
    return lines


def markdown(res: dict) -> str:
    runs = res["runs"]
    columns = priced_columns(runs)
    lines = [
        f"# What a million images cost, every service counted ({res['machine']['date']})",
        "",
        C.describe(res["machine"]),
        "",
        f"Each run: the streaming job on the emulators (`--weights random:0 --catch_up "
        f"never`), {res['settings']['images']} JPEGs uploaded at once after 3 warm-up "
        "images; counts per 1,000 images from the proxies in front of Cloud Storage and "
        "BigQuery, a second subscription on the notification topic, and the rows and "
        "objects written.",
        "",
        "## Counted per 1,000 images",
        "",
        "| | " + " | ".join(runs) + " |",
        "|---|" + "---:|" * len(runs),
    ]
    keys = [
        ("objects_written", "objects written"),
        ("object_bytes", "bytes of objects written"),
        ("gcs_class_a", "Cloud Storage Class A operations"),
        ("gcs_class_b", "Cloud Storage Class B operations"),
        ("bq_insert_requests", "BigQuery insertAll requests"),
        ("bq_insert_bytes", "BigQuery insertAll request bytes"),
        ("bq_append_requests", "BigQuery Storage Write API appends"),
        ("bq_append_bytes", "BigQuery Storage Write API request bytes"),
        ("bq_billed_bytes", "BigQuery rows' billed bytes (data-size rules)"),
        ("pubsub_messages", "Pub/Sub notifications"),
        ("pubsub_bytes", "Pub/Sub bytes (data + attributes)"),
    ]
    for key, label in keys:
        lines.append(
            f"| {label} | " + " | ".join(str(r["per_1000"][key]) for r in runs.values()) + " |"
        )
    kinds = sorted({k for r in runs.values() for k in r["per_1000"]["gcs_by_kind"]})
    for k in kinds:
        lines.append(
            f"| {k} | "
            + " | ".join(str(r["per_1000"]["gcs_by_kind"].get(k, 0)) for r in runs.values())
            + " |"
        )
    lines.append(
        "| job rate during the run, images/s | "
        + " | ".join(str(r["img_s"]) for r in runs.values())
        + " |"
    )
    lines += [
        "",
        "Runs: " + "; ".join(f"**{k}**: {RUNS[k][1]}" for k in runs) + ".",
        "",
        "## Bytes per image into each step that shuffles or keeps state",
        "",
        "| step | element | coder | bytes |",
        "|---|---|---|---:|",
    ]
    for s in res["shuffles"]:
        lines.append(
            f"| {s['step']} | {s.get('element', '')} | {s.get('coder', '')} | {s['bytes']} |"
        )
    inserted = [r for r in runs.values() if r["per_1000"]["bq_insert_rows"]]
    appended = [r for r in runs.values() if r["per_1000"]["bq_append_rows"]]

    def per_row(run, kind):
        c = run["per_1000"]
        return f"{c[f'bq_{kind}_bytes'] / c[f'bq_{kind}_rows']:.0f}"

    lines += [
        "",
        "## BigQuery ingestion on the emulator",
        "",
        "Both as the job sends them, through the strict proxy (`tools/strict_bigquery.py`), "
        "which refuses a request over 10 MB:",
        "",
    ]
    if appended:
        lines.append(
            "- Storage Write API (`--bigquery_write_method storage_write_api`, the default; "
            "`streaming/sinks/write_api.py`): `AppendRows` on the `_default` stream, proto "
            "rows, on bqemulator's gRPC port; largest request "
            f"{max(r['largest_append_request_bytes'] for r in appended)} bytes; "
            f"{per_row(appended[0], 'append')} request bytes per row."
        )
    if inserted:
        lines.append(
            "- insertAll (`--bigquery_write_method insert_all`, `streaming/sinks/bigquery.py`): "
            "largest request "
            f"{max(r['largest_insert_request_bytes'] for r in inserted)} bytes; "
            f"{per_row(inserted[0], 'insert')} request bytes per row."
        )
    lines += [
        "",
        "## $ per million images",
        "",
        "| service | " + " | ".join(column_label(k, i) for k, i in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    services = [
        k
        for k in next(iter(res["usd_per_million"].values()))["insert_all"]
        if not k.startswith("_")
    ]
    for s in services:
        lines.append(
            f"| {s} | "
            + " | ".join(str(res["usd_per_million"][k][i][s]) for k, i in columns)
            + " |"
        )
    lines.append(
        "| **all services above** | "
        + " | ".join(f"**{res['usd_per_million'][k][i]['_total']}**" for k, i in columns)
        + " |"
    )
    lines.append(
        "| Streaming Engine: GiB processed (in the total above) | "
        + " | ".join(str(res["usd_per_million"][k][i]["_streaming_engine_gib"]) for k, i in columns)
        + " |"
    )
    lines.append(
        "| job rate during the run, images/s | "
        + " | ".join(str(runs[k]["img_s"]) for k, _ in columns)
        + " |"
    )
    for item in next(iter(res["usd_per_million"].values()))["storage"]:
        lines.append(
            f"| stored: {item} (not in the total above) | "
            + " | ".join(str(res["usd_per_million"][k]["storage"][item]) for k, _ in columns)
            + " |"
        )
    if "at_rates" in res:
        lines += rates_section(res)
    lines += [
        "",
        "## Prices (list, USD; read " + READ_ON + ")",
        "",
    ]
    for k, (value, unit, source) in PRICES.items():
        lines.append(f"- `{k}`: {value:g} {unit}. Source: {source}")
    lines.append(
        f"- Streaming Engine data processed is counted as the notification bytes "
        f"read plus {SE_PASSES}x the bytes per image into each step that shuffles "
        "or keeps state (in and out; Google does not publish the metering rule)."
    )
    lines += [
        "",
        "Not counted: the images' own storage and uploads (the user's), network (same "
        "region), free tiers, and the catch-up (priced per pass above; off on Dataflow by "
        "default: `--catch_up auto`). Pub/Sub: each notification billed at least 1,000 bytes,"
        " twice (publish, delivery). BigQuery bytes: BigQuery's data-size rules applied to "
        "the rows the run wrote; insertAll bills each row at least 1 KB; the Storage Write "
        "API is billed here on the same bytes, without a minimum.",
    ]
    return "\n".join(lines) + "\n"


def price(res: dict, out: str) -> None:
    """Prices the runs' counts in `res` (and the default layout at the rates users run,
    from shards.json and scale.json in `out`), in place."""
    shuffled = sum(x["bytes"] for x in res["shuffles"] if not x["step"].startswith("for "))
    res["usd_per_million"] = {}
    for name, run in res["runs"].items():
        c = run["per_1000"]
        res["usd_per_million"][name] = {}
        for ingest in ("insert_all", "write_api"):
            costs = per_million(c, shuffled, ingest)
            total = round(sum(v for k, v in costs.items() if not k.startswith("_")), 3)
            costs["_total"] = total
            res["usd_per_million"][name][ingest] = costs
        res["usd_per_million"][name]["storage"] = stored_a_year(c)
    if DEFAULT_RUN in res["runs"]:
        from streaming.sources.catch_up import CHUNK

        default = res["runs"][DEFAULT_RUN]
        shards, scale = read_result(out, "shards"), read_result(out, "scale")
        res["sources"] = {
            "shards": f"shards.json of {shards['machine']['date']}",
            "scale": f"scale.json from vs_script.json of {scale['measured_on']['date']}",
        }
        res["at_rates"] = at_rates(default, shuffled, shards, scale)
        res["once"] = once(default, CHUNK)


def main() -> int:
    p = C.parser(__doc__, rounds=1)
    p.add_argument("--images", type=int, default=1000, help="images per run")
    p.add_argument("--runs", default=",".join(RUNS), help="which runs, comma-separated")
    p.add_argument(
        "--reprice",
        action="store_true",
        help="price cost.json's counts again (prices, shards.json, scale.json) and rewrite",
    )
    args = p.parse_args()
    if args.reprice:
        with open(os.path.join(args.out, "cost.json")) as f:
            res = json.load(f)
        res["prices"] = {k: {"value": v, "unit": u, "source": s} for k, (v, u, s) in PRICES.items()}
        res["goals"], res["prices_read_on"] = GOALS, READ_ON
        price(res, args.out)
        C.write_results(args.out, "cost", res, markdown(res))
        return 0
    if args.quick:
        args.images = 60
    from streaming.sources.notifications import parse_notification
    from streaming.support import clients

    C.strict_bigquery()
    clients.use_local_endpoints()
    res = {
        "machine": C.machine(),
        "settings": {"images": args.images, "runs": args.runs},
        "goals": GOALS,
        "prices_read_on": READ_ON,
        "prices": {k: {"value": v, "unit": u, "source": s} for k, (v, u, s) in PRICES.items()},
        "streaming_engine_passes": SE_PASSES,
        "runs": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench-cost-") as work:
        folder = C.make_jpegs(os.path.join(work, "images"), args.images, 640, 480, 8)
        images = {n: os.path.join(folder, n) for n in sorted(os.listdir(folder))}
        for name in args.runs.split(","):
            C.wait_quiet()
            res["runs"][name] = run_layout(name, RUNS[name][0], images, work)
            print(name, json.dumps(res["runs"][name]["per_1000"]), flush=True)
    sample = next(iter(res["runs"].values()))["sample"]
    ref = parse_notification(*sample["notification"])
    vector = np.float32(sample["vector"])
    res["shuffles"] = shuffle_bytes([], ref, vector, sample["model_id"])
    for run in res["runs"].values():
        run.pop("sample")
    price(res, args.out)
    C.write_results(args.out, "cost", res, markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
