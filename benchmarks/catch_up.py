"""The catch-up on a big bucket, and the duplicate work at a restart, on the emulators.

  . .emulators/env.sh && .venv/bin/python benchmarks/catch_up.py [--quick] [--out DIR]

Needs the emulators (`bash emulators/start.sh`); it never starts or stops them. The
job's converted model is cached first.

- big bucket: `--objects` objects that already have rows (as after months of running),
  `--missing` images without one, and `--gone` rows whose objects were deleted. The job
  starts with `--buckets` (its catch-up compares them all, `--catch_up_chunk` at a time)
  while a live image is uploaded every 2 s: the peak RSS of the job's process tree, how
  long the catch-up took, and upload -> row queryable for each live upload made while it
  ran.
- restart: the job is stopped, `--restart` images are uploaded while it is down (their
  notifications wait in the subscription), and it starts again: the catch-up and the
  notifications both see them. Raw rows per image (2 = embedded twice).

Writes catch_up.{json,md}.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import re
import tempfile
import threading
import time
import uuid

import _common as C
import psutil

from tools.processes import Child, cloud_job_args, python_module, wait_until

GOALS = {"peak_gb": 1.5, "live_row_s": 10.0}


def upload_many(bucket, items: list[tuple[str, bytes]], threads: int = 16) -> None:
    with cf.ThreadPoolExecutor(threads) as pool:
        list(
            pool.map(
                lambda item: bucket.blob(item[0]).upload_from_string(
                    item[1], content_type="image/jpeg"
                ),
                items,
            )
        )


def existing_rows(bucket: str, names_generations: list[tuple[str, int]]) -> list[dict]:
    from streaming.records import row_key

    now = "2026-01-01T00:00:00Z"
    return [
        {
            "row_key": row_key(bucket, n, g),
            "bucket": bucket,
            "name": n,
            "generation": g,
            "event_type": "OBJECT_FINALIZE",
            "source": "notification",
            "embedding": [0.5],
            "model_fingerprint": "old",
            "processing_time": now,
        }
        for n, g in names_generations
    ]


def run(args, work: str) -> dict:
    from google.cloud import pubsub_v1

    import schemas
    from streaming.sinks.bigquery import make_table
    from streaming.support import clients
    from tools.samples import jpeg_bytes

    # Fills the converted-model cache (not measured): the catch-up is measured, not a
    # first run's conversion.
    C.run_process(
        python_module(
            "streaming.main",
            "--input_dir",
            os.path.join(C.ROOT, "samples", "images"),
            "--output_dir",
            os.path.join(work, "warm"),
            "--weights",
            "random:0",
        )
    )
    C.strict_bigquery()
    clients.use_local_endpoints()
    storage, bq = clients.storage_client(True), clients.bigquery_client(True)
    project = clients.project_from_env()
    rid = uuid.uuid4().hex[:8]
    bucket = storage.create_bucket(f"bench-catchup-{rid}")
    vectors = storage.create_bucket(f"bench-catchup-vec-{rid}")
    dataset = f"bench_catchup_{rid}"
    bq.create_dataset(dataset)
    table = f"{project}.{dataset}.embeddings"
    bq.create_table(make_table(table, schemas.EMBEDDINGS))

    t = time.monotonic()
    old = [(f"done/{i:06d}.jpg", b"x") for i in range(args.objects)]
    upload_many(bucket, old)
    gone = [f"gone/{i:04d}.jpg" for i in range(args.gone)]
    missing = [(f"missing/{i:04d}.jpg", jpeg_bytes(96, 64, seed=i)) for i in range(args.missing)]
    upload_many(bucket, missing)
    listed = {b.name: b.generation for b in storage.list_blobs(bucket.name)}
    rows = existing_rows(bucket.name, [(n, listed[n]) for n, _ in old] + [(n, 1) for n in gone])
    for i in range(0, len(rows), 500):
        assert bq.insert_rows_json(table, rows[i : i + 500], retry=None) == []
    setup_s = time.monotonic() - t

    subscriber = pubsub_v1.SubscriberClient()
    topic = f"projects/{project}/topics/{os.environ.get('EMU_NOTIFY_TOPIC', 'gcs-notifications')}"
    sub = f"projects/{project}/subscriptions/bench-catchup-{rid}"
    time.sleep(2)  # the set-up uploads' notifications go by before the job subscribes
    subscriber.create_subscription(name=sub, topic=topic, ack_deadline_seconds=60)
    argv = python_module(
        "streaming.main",
        *cloud_job_args(sub, table.replace(".", ":", 1), vectors.name, bucket.name),
        "--catch_up_chunk",
        str(args.chunk),
    )

    def current(prefix: str) -> dict[str, int]:
        try:
            found = bq.query(
                f"SELECT name, COUNT(*) AS n FROM `{table}` WHERE "
                f"STARTS_WITH(name, '{prefix}') AND event_type = "
                "'OBJECT_FINALIZE' GROUP BY name"
            ).result()
            return {r["name"]: r["n"] for r in found}
        except Exception:  # noqa: BLE001 - an emulator hiccup: ask again
            return {}

    res = {"setup_s": round(setup_s, 1)}
    with Child(argv, os.path.join(work, "job-1.log"), env=C.CHILD_ENV) as job:
        rss, start = C.PeakRss(job.pid), time.monotonic()
        live, seen, done_at = {}, {}, [None]

        def poll():
            while done_at[0] is None or len(seen) < len(live):
                for name in current("live/"):
                    seen.setdefault(name, time.monotonic())
                if done_at[0] is None and "step(s))" in job.output():
                    done_at[0] = time.monotonic()
                if time.monotonic() - start > 1800:
                    return
                time.sleep(0.25)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        i = 0
        while done_at[0] is None and time.monotonic() - start < 1800:
            name = f"live/{i:03d}.jpg"
            bucket.blob(name).upload_from_string(
                jpeg_bytes(96, 64, seed=900 + i), content_type="image/jpeg"
            )
            live[name] = time.monotonic()
            i += 1
            time.sleep(2)
        poller.join(timeout=300)
        found = re.search(
            r"catch-up gs://\S+: (\d+) object generation\(s\) to embed, (\d+) "
            r"deleted while the job could not see it \((\d+) step",
            job.output(),
        )
        assert found, job.log_tail()
        # Every live upload made while the catch-up ran, the first ones included (they
        # also wait for the job to start and load its model).
        during = {
            n: round(seen[n] - t0, 2) for n, t0 in live.items() if n in seen and t0 <= done_at[0]
        }
        wait_until(
            lambda: len(current("missing/")) >= args.missing,
            timeout=900,
            what="rows for the missing images",
            job=job,
        )
        res["big_bucket"] = {
            "objects_compared": args.objects + args.missing + args.gone,
            "embedded": int(found.group(1)),
            "tombstones": int(found.group(2)),
            "steps": int(found.group(3)),
            "catch_up_s": round(done_at[0] - start, 1),
            "live_uploads_during": len(during),
            "live_row_s": sorted(during.values()),
            "live_row_max_s": max(during.values()) if during else None,
            "peak_mib": round(rss.stop() / 2**20),
        }
        job.stop()

    # The restart: uploads while the job is down, then the same command again.
    restart = [
        (f"restart/{i:03d}.jpg", jpeg_bytes(96, 64, seed=2000 + i)) for i in range(args.restart)
    ]
    upload_many(bucket, restart)
    time.sleep(2)
    with Child(argv, os.path.join(work, "job-2.log"), env=C.CHILD_ENV) as job:
        wait_until(
            lambda: len(current("restart/")) >= args.restart,
            timeout=900,
            what="rows for the images uploaded while the job was down",
            job=job,
        )
        time.sleep(5)  # a second copy would be right behind the first
        counts = current("restart/")
        job.stop()
    res["restart"] = {
        "images": args.restart,
        "embedded_twice": sum(1 for n in counts.values() if n > 1),
        "raw_rows": sum(counts.values()),
    }
    return res


def markdown(res: dict) -> str:
    big, restart = res["big_bucket"], res["restart"]
    rows = [
        ("objects the catch-up compared", big["objects_compared"], ""),
        ("steps (`--catch_up_chunk`)", f"{big['steps']} ({res['settings']['chunk']})", ""),
        ("embedded / tombstones written", f"{big['embedded']} / {big['tombstones']}", ""),
        ("job start -> catch-up done", f"{big['catch_up_s']} s", ""),
        (
            "job peak (process tree)",
            f"{big['peak_mib'] / 1024:.2f} GB",
            f"<= {GOALS['peak_gb']} GB",
        ),
        ("live uploads during the catch-up", big["live_uploads_during"], ""),
        (
            "their upload -> row queryable, max",
            f"{big['live_row_max_s']} s",
            f"< {GOALS['live_row_s']} s",
        ),
        ("restart: images uploaded while down", restart["images"], ""),
        ("restart: embedded twice (catch-up and notification)", restart["embedded_twice"], ""),
    ]
    return (
        "\n".join(
            [C.describe(res["machine"]), "", "| | measured | goal |", "|---|---|---|"]
            + [f"| {a} | {b} | {c} |" for a, b, c in rows]
        )
        + "\n"
    )


def main() -> int:
    p = C.parser(__doc__, rounds=1)
    p.add_argument("--objects", type=int, default=20_000, help="objects that have rows")
    p.add_argument("--missing", type=int, default=50, help="images with no row")
    p.add_argument("--gone", type=int, default=50, help="rows whose object is gone")
    p.add_argument("--chunk", type=int, default=1000, help="--catch_up_chunk")
    p.add_argument("--restart", type=int, default=100, help="images uploaded while down")
    args = p.parse_args()
    if args.quick:
        args.objects, args.missing, args.gone, args.restart = 2000, 10, 10, 10
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    res = {"machine": C.machine(), "settings": settings, "goals": GOALS}
    with tempfile.TemporaryDirectory(prefix="bench-catchup-") as work:
        res.update(run(args, work))
    res["load_average_after"] = [round(x, 2) for x in psutil.getloadavg()]
    C.write_results(
        args.out,
        "catch_up",
        res,
        "## The catch-up on a big bucket (`benchmarks/catch_up.py`)\n\n" + markdown(res),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
