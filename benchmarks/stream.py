"""The streaming job on the emulators: latency, a burst, and a storm of bad messages.

  . .emulators/env.sh && .venv/bin/python benchmarks/stream.py [--quick] [--out DIR]

Needs the emulators (`bash emulators/start.sh`); it never starts or stops them. One job
with default options (`--weights random:0`, its converted model cached first) reads the
notifications fake-gcs-server publishes for a fresh bucket and writes rows and dead
letters to a fresh dataset on bqemulator. Once it has embedded warm-up images:

- idle: the cores the job uses while no message arrives (`--idle` seconds).
- latency: one 4000x3000 JPEG uploaded a second; upload end -> row in the table
  (tabledata.list every 0.1 s), and where the median upload's time goes: the job's checkpoint
  line (ms since the event; streaming.support.progress), neighbours subtracted.
- burst: 1024x768 JPEGs uploaded at once (8 threads); images / (last row in the table -
  first upload). The same files in folder mode (`embed-stream --input_dir`, whole
  processes) before and after the job: images / seconds after its model loaded.
- storm: malformed messages published at once on the notification topic, then 20 valid
  uploads: dead letters a second until all are counted, and the valid images' latency.

Peak RSS of the job's process tree, and the cores the job and everything else (the
emulators included) used during the burst. Writes stream.{json,md}.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import statistics
import tempfile
import threading
import time
import uuid

import _common as C
import psutil
from google.cloud.bigquery import SchemaField

from streaming import metrics
from tools.processes import Child, python_module, tree_cpu_seconds, wait_until

PROGRESS_SECS = 2
POLL_SECS = 0.1  # how often the table's rows are read: the resolution of "in the table"
DEAD_POLL_SECS = 0.5
STAGES = {  # the stage that ends at each checkpoint
    "accepted": "event -> pulled, parsed, filtered",
    "read": "read the object",
    "decoded": "decode and resize",
    "embedded": "batch and model",
    "vector_written": "shard wait and write",
    "row_written": "row write (BigQuery)",
}
NAME = SchemaField("name", "STRING")
GOALS = {
    "latency_p95_s": 1.0,
    "burst_vs_folder": 0.9,
    "storm_msg_s": 300,
    "storm_valid_max_s": 5.0,
    "peak_gb": 1.5,
    "idle_cores": 0.05,
}


class Poller:
    """When each row's name appeared in the table (tabledata.list: a row read, not a
    query's start-up; every POLL_SECS while the latency is measured, DEAD_POLL_SECS
    otherwise), and how many dead letters a query counts (every DEAD_POLL_SECS), on one
    thread (bqemulator is not safe under concurrent calls)."""

    def __init__(self, bq, dataset: str):
        self.bq, self.dataset, self.seen, self.dead = bq, dataset, {}, [(0.0, 0)]
        # Fine while one upload a second is measured, coarse otherwise: each read of the
        # table holds back the job's appends (tools/strict_bigquery.py).
        self.interval = DEAD_POLL_SECS
        self._done = threading.Event()
        threading.Thread(target=self._poll, daemon=True).start()

    def _read(self, read) -> list:
        try:
            return list(read())
        except Exception:  # noqa: BLE001 - a table not created yet, an emulator hiccup
            return []

    def _poll(self):
        table = f"{self.bq.project}.{self.dataset}.embeddings"
        sql = f"SELECT COUNT(*) AS n FROM `{self.dataset}.dead_letters`"
        last_dead = 0.0
        while not self._done.wait(self.interval):
            names = self._read(lambda: self.bq.list_rows(table, selected_fields=[NAME]))
            now = time.time()
            for row in names:
                self.seen.setdefault(row["name"], now)
            if now - last_dead >= DEAD_POLL_SECS:
                dead = self._read(lambda: self.bq.query(sql).result(timeout=30))
                last_dead = time.time()
                self.dead.append((last_dead, dead[0]["n"] if dead else self.dead[-1][1]))

    def has(self, names) -> bool:
        return set(names) <= set(self.seen)

    def stop(self):
        self._done.set()


def folder_rate(folder: str) -> dict:
    """embed-stream on the folder, a whole process: images / seconds after the model loaded."""
    with (
        tempfile.TemporaryDirectory() as out,
        Child(
            python_module(
                "streaming.main",
                "--input_dir",
                folder,
                "--output_dir",
                out,
                "--weights",
                "random:0",
            ),
            env=C.CHILD_ENV,
        ) as job,
    ):
        loaded = wait_until(
            lambda: "model: " in job.output() and time.time(), 600, "model", job, interval=0.05
        )
        job.wait(900)
    done, images = time.time(), len(os.listdir(folder))
    return {"wall_s": round(done - job.started, 2), "img_s": round(images / (done - loaded), 2)}


def upload(bucket, files: dict[str, str]) -> dict[str, tuple[float, float]]:
    """Uploads object name -> local file, 8 at a time; returns name -> (start, end)."""

    def one(name):
        start = time.time()
        bucket.blob(name).upload_from_filename(files[name], content_type="image/jpeg")
        return name, (start, time.time())

    with cf.ThreadPoolExecutor(8) as pool:
        return dict(pool.map(one, files))


def shard_count(bucket) -> int:
    """Vector shards the job has written to `bucket` so far."""
    return sum(1 for _ in bucket.list_blobs(prefix="vectors/shards/"))


def per_1000(shards: int, uploads: dict) -> float:
    return round(1000 * shards / len(uploads), 1)


def checkpoints(output: str) -> dict[str, dict[str, float]]:
    """The job's latest `since the event, ms p50/p95: accepted a/b, ...` line (its
    progress lines; streaming.support.progress), as {checkpoint: {p50, p95}}."""
    line = [x for x in output.splitlines() if "since the event, ms p50/p95: " in x][-1]
    pairs = line.split("since the event, ms p50/p95: ", 1)[1].split(", ")
    return {
        name: {"p50": float(a), "p95": float(b)}
        for name, (a, b) in ((p.split(" ")[0], p.split(" ")[1].split("/")) for p in pairs)
    }


def breakdown(latency: dict) -> list[tuple[str, float]]:
    """Each stage's share of the median upload's time to its row in the table: differences
    of neighbouring checkpoints' p50 (ms since the event), then the rest of the
    measured p50 (the row written -> read back by the benchmark)."""
    marks = latency["since_event_ms"]
    names = [n for n in metrics.CHECKPOINTS if n in marks]
    shares, before = [], 0.0
    for name in names:
        shares.append((STAGES[name], marks[name]["p50"] - before))
        before = marks[name]["p50"]
    shares.append((f"in the table (read every {POLL_SECS:g} s)", latency["p50_s"] * 1000 - before))
    return [(stage, round(ms)) for stage, ms in shares]


def latencies(uploads: dict, seen: dict) -> dict:
    lat = sorted(seen[name] - end for name, (_, end) in uploads.items())
    return {
        "images": len(lat),
        "p50_s": round(lat[len(lat) // 2], 3),
        "p95_s": round(lat[min(len(lat) - 1, int(0.95 * len(lat)))], 3),
        "max_s": round(lat[-1], 3),
    }


def run(args, work: str) -> dict:
    from google.cloud import pubsub_v1

    from streaming.support import clients

    C.strict_bigquery()
    clients.use_local_endpoints()
    project = clients.project_from_env()
    storage, bq = clients.storage_client(True), clients.bigquery_client(True)
    rid = uuid.uuid4().hex[:8]
    bucket, dataset = storage.create_bucket(f"bench-{rid}"), f"bench_{rid}"
    bq.create_dataset(dataset)
    topic = f"projects/{project}/topics/{os.environ.get('EMU_NOTIFY_TOPIC', 'gcs-notifications')}"
    subscription = f"projects/{project}/subscriptions/bench-{rid}"
    pubsub_v1.SubscriberClient().create_subscription(name=subscription, topic=topic)
    big = C.make_jpegs(os.path.join(work, "big"), args.latency, 4000, 3000, 4)
    small = C.make_jpegs(os.path.join(work, "small"), args.burst + 20, 1024, 768, 16)
    files = lambda folder: {n: os.path.join(folder, n) for n in sorted(os.listdir(folder))}
    burst, valid = dict(list(files(small).items())[: args.burst]), list(files(small))[args.burst :]
    burst_dir, warm_dir = os.path.join(work, "burst"), os.path.join(work, "warm")
    for folder, names in ((burst_dir, list(burst)), (warm_dir, list(burst)[:1])):
        os.makedirs(folder)
        for name in names:
            os.link(burst[name], os.path.join(folder, name))
    folder_rate(warm_dir)  # fills the converted-model cache; not measured
    res = {"folder_before": folder_rate(burst_dir)}
    job = Child(
        python_module(
            "streaming.main",
            "--input_subscription",
            subscription,
            "--buckets",
            bucket.name,
            "--output_table",
            f"{project}:{dataset}.embeddings",
            "--dead_letter_table",
            f"{project}:{dataset}.dead_letters",
            "--output_gcs",
            f"gs://{bucket.name}/vectors/",
            "--weights",
            "random:0",
            "--local_endpoints",
            "--bigquery_write_method",
            args.write_method,
            "--progress_interval",
            str(PROGRESS_SECS),
        ),
        env=C.CHILD_ENV,
    )
    rss, poll = C.PeakRss(job.pid), Poller(bq, dataset)
    try:
        warm = upload(bucket, {f"warm/{n}": p for n, p in list(burst.items())[:3]})
        wait_until(lambda: poll.has(warm), 300, "warm-up rows", job)
        res["start_to_first_rows_s"] = round(max(poll.seen.values()) - job.started, 1)
        time.sleep(5)
        cpu, start = tree_cpu_seconds(job.pid), time.monotonic()
        time.sleep(args.idle)
        res["idle_cores"] = round((tree_cpu_seconds(job.pid) - cpu) / (time.monotonic() - start), 3)
        shards_before, ups = shard_count(bucket), {}
        poll.interval = POLL_SECS
        for name, path in files(big).items():
            # On the whole second: fake-gcs-server writes eventTime in whole seconds,
            # which then falls at the upload's start (the job's checkpoints count from it).
            time.sleep(1.0 - time.time() % 1.0)
            start, end = upload(bucket, {f"latency/{name}": path})[f"latency/{name}"]
            ups[f"latency/{name}"] = (start, end)
        wait_until(lambda: poll.has(ups), 120, "latency rows", job)
        res["latency"] = latencies(ups, poll.seen)
        poll.interval = DEAD_POLL_SECS
        time.sleep(PROGRESS_SECS + 0.5)  # the job's next checkpoints line covers them all
        res["latency"]["since_event_ms"] = checkpoints(job.output())
        res["latency"]["shards_per_1000"] = per_1000(shard_count(bucket) - shards_before, ups)

        shards_before = shard_count(bucket)
        mark, cpu = C.cpu_mark(), tree_cpu_seconds(job.pid)
        ups = upload(bucket, {f"burst/{n}": p for n, p in burst.items()})
        wait_until(lambda: poll.has(ups), 900, "burst rows", job)
        first = min(start for start, _ in ups.values())
        drain = max(poll.seen[n] for n in ups) - first
        job_cores = (tree_cpu_seconds(job.pid) - cpu) / drain
        res["burst"] = {
            "shards_per_1000": per_1000(shard_count(bucket) - shards_before, ups),
            "images": len(ups),
            "drain_s": round(drain, 2),
            "img_s": round(len(ups) / drain, 2),
            "job_cores": round(job_cores, 2),
            "other_cores": round(C.other_cores(mark, drain) - job_cores, 2),
        }

        before, publisher, start = poll.dead[-1][1], pubsub_v1.PublisherClient(), time.time()
        for future in [
            publisher.publish(
                topic,
                b"not json %d" % i if i % 2 else b'{"kind": "storage#object"}',
                eventType="OBJECT_FINALIZE",
                bucketId=bucket.name,
                objectId=f"storm/{i}",
                payloadFormat="JSON_API_V1",
            )
            for i in range(args.storm)
        ]:
            future.result()
        ups = upload(
            bucket,
            {f"storm/{os.path.basename(p)}": p for p in (os.path.join(small, n) for n in valid)},
        )
        wait_until(
            lambda: poll.has(ups) and poll.dead[-1][1] >= before + args.storm,
            900,
            "storm dead letters",
            job,
        )
        done = next(t for t, n in poll.dead if n >= before + args.storm)
        res["storm"] = {
            "messages": args.storm,
            "dead_letters": poll.dead[-1][1] - before,
            "msg_s": round(args.storm / (done - start), 1),
            "valid": latencies(ups, poll.seen),
        }
    finally:
        poll.stop()
        res["job_peak_gb"] = round(rss.stop() / 2**30, 2)
        job.stop()
    res["folder_after"] = folder_rate(burst_dir)
    folder = statistics.mean([res["folder_before"]["img_s"], res["folder_after"]["img_s"]])
    res["burst"]["vs_folder"] = round(res["burst"]["img_s"] / folder, 2)
    bq.delete_dataset(dataset, delete_contents=True, not_found_ok=True)
    return res


def markdown(res: dict) -> str:
    lat, burst, storm, g = res["latency"], res["burst"], res["storm"], res["goals"]
    before, after, valid = res["folder_before"], res["folder_after"], storm["valid"]
    rows = [
        (
            f"idle: no message for {res['settings']['idle']:g} s",
            f"{res['idle_cores']} cores",
            f"< {g['idle_cores']} cores",
        ),
        (
            "upload -> row in the table, 1 image/s, 4000x3000",
            f"p50 {lat['p50_s']} s, p95 "
            f"{lat['p95_s']} s, max {lat['max_s']} s ({lat['images']} images); "
            f"{lat['shards_per_1000']} shards per 1,000 images",
            f"p95 < {g['latency_p95_s']} s",
        ),
        (
            f"burst: {burst['images']} uploads of 1024x768 at once",
            f"{burst['img_s']} img/s in "
            f"{burst['drain_s']} s; the job used {burst['job_cores']} cores, everything else "
            f"{burst['other_cores']}; {burst['shards_per_1000']} shards per 1,000 images",
            "",
        ),
        (
            "folder mode, same files, before / after",
            f"{before['img_s']} / {after['img_s']} "
            f"img/s after start-up; whole process {before['wall_s']} / {after['wall_s']} s",
            "",
        ),
        ("burst / folder rate", burst["vs_folder"], f">= {g['burst_vs_folder']}"),
        (
            f"storm: {storm['messages']} malformed messages at once",
            f"{storm['msg_s']} dead letters/s ({storm['dead_letters']} written)",
            f">= {g['storm_msg_s']}/s",
        ),
        (
            "20 valid uploads behind the storm",
            f"upload -> row p50 {valid['p50_s']} s, max {valid['max_s']} s",
            f"max < {g['storm_valid_max_s']} s",
        ),
        (
            "where the median upload's time goes, ms",
            ", ".join(f"{stage} {ms}" for stage, ms in breakdown(lat)),
            "",
        ),
        ("job peak RSS (process tree)", f"{res['job_peak_gb']} GB", f"<= {g['peak_gb']} GB"),
        ("job start -> warm-up rows in the table", f"{res['start_to_first_rows_s']} s", ""),
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
    p.add_argument("--latency", type=int, default=60, help="images at 1 a second")
    p.add_argument("--burst", type=int, default=500, help="images uploaded at once")
    p.add_argument("--storm", type=int, default=1000, help="malformed messages")
    p.add_argument("--idle", type=float, default=60, help="seconds the idle job is measured")
    from streaming.config.flags import BIGQUERY_WRITE_METHODS

    p.add_argument(
        "--write-method",
        default=BIGQUERY_WRITE_METHODS[0],
        choices=BIGQUERY_WRITE_METHODS,
        help="the job's --bigquery_write_method (default: the job's)",
    )
    args = p.parse_args()
    if args.quick:
        args.latency, args.burst, args.storm, args.idle = 5, 40, 100, 10
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    res = {"machine": C.machine(), "settings": settings, "goals": GOALS}
    with tempfile.TemporaryDirectory(prefix="bench-stream-") as work:
        res.update(run(args, work))
    res["load_average_after"] = [round(x, 2) for x in psutil.getloadavg()]
    C.write_results(
        args.out,
        "stream",
        res,
        "## The streaming job on the emulators (`benchmarks/stream.py`)\n\n" + markdown(res),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
