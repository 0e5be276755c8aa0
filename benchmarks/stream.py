"""The streaming job on the emulators: latency, a burst, and a storm of bad messages.

  . .emulators/env.sh && .venv/bin/python benchmarks/stream.py [--out DIR]

Needs the emulators (`bash emulators/start.sh`); it never starts or stops them. One job,
default options (`--weights random:0`, its converted model cached first), reads the
storage notifications fake-gcs-server publishes for a fresh bucket and writes rows and
dead letters to a fresh dataset on bqemulator. Once it has embedded warm-up images:

- latency: one 4000x3000 JPEG uploaded per second (`--latency_images`); upload end ->
  the row is queryable (BigQuery polled every 0.25 s).
- burst: `--burst` 1024x768 JPEGs uploaded at once (8 threads); the drain rate is
  images / (last row queryable - first upload). The same files run in folder mode
  (`embed-stream --input_dir`) before and after the job, whole processes; their rate is
  images / seconds after the model is loaded, the burst is compared with their mean.
- storm: `--storm` malformed messages published at once on the notification topic, then
  20 valid 1024x768 uploads: dead letters per second until all are queryable, and each
  valid image's upload -> row latency behind them.

The job's peak memory is the process tree's resident set (psutil, every 0.2 s).
Writes stream.json and stream.md.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import io
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid

import psutil

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402
from tests.processes import Child, python_module, tree_rss, wait_until  # noqa: E402
from tools.samples import photo_like  # noqa: E402

GOALS = {"latency_p95_s": 1.0, "burst_vs_folder": 0.9, "storm_msg_s": 300,
         "storm_valid_max_s": 5.0, "peak_gb": 1.5}


def jpegs(count: int, width: int, height: int) -> list[bytes]:
    """`count` distinct q90 JPEGs: shifted copies of four photo-like bases."""
    import numpy as np
    from PIL import Image
    bases = [photo_like(width, height, seed=3000 + i) for i in range(4)]
    out = []
    for i in range(count):
        buf = io.BytesIO()
        arr = np.roll(bases[i % 4], 7 * (i // 4), axis=1)
        Image.fromarray(arr).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


class Poller:
    """When each row's name, and how many dead letters, became queryable."""

    def __init__(self, bq, dataset: str, interval: float = 0.25):
        self.bq, self.dataset, self.interval = bq, dataset, interval
        self.seen: dict[str, float] = {}
        self.dead: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _query(self, sql: str) -> list:
        try:
            return list(self.bq.query(sql).result())
        except Exception:  # noqa: BLE001 - a table not created yet, an emulator hiccup
            return []

    def _run(self):
        while not self._stop.wait(self.interval):
            names = self._query(f"SELECT name FROM `{self.dataset}.embeddings`")
            dead = self._query(f"SELECT COUNT(*) AS n FROM `{self.dataset}.dead_letters`")
            now = time.time()
            for row in names:
                self.seen.setdefault(row["name"], now)
            self.dead.append((now, dead[0]["n"] if dead else 0))

    def dead_count(self) -> int:
        return self.dead[-1][1] if self.dead else 0

    def dead_reached(self, n: int) -> float:
        return next(t for t, k in self.dead if k >= n)

    def stop(self):
        self._stop.set()
        self._thread.join()


class PeakRSS:
    """The peak resident set of a process tree, sampled in the background."""

    def __init__(self, pid: int):
        self.peak, self._stop = 0, threading.Event()
        threading.Thread(target=self._run, args=(pid,), daemon=True).start()

    def _run(self, pid):
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, tree_rss(pid))

    def stop(self) -> int:
        self._stop.set()
        return self.peak


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(CPU seconds of process `pid` and its descendants, of the whole machine) so far."""
    procs, own = [psutil.Process(pid)], 0.0
    procs += procs[0].children(recursive=True)
    for proc in procs:
        try:
            t = proc.cpu_times()
            own += t.user + t.system
        except psutil.Error:
            pass
    t = psutil.cpu_times()
    return own, t.user + t.system + t.nice + getattr(t, "irq", 0) + getattr(t, "softirq", 0)


def folder_rate(folder: str, work: str) -> dict:
    """embed-stream on a folder, whole process: images / seconds after the model loaded."""
    out = tempfile.mkdtemp(dir=work)
    job = Child(python_module("streaming.main", "--input_dir", folder, "--output_dir", out,
                              "--weights", "random:0"))
    loaded = wait_until(lambda: "model: " in job.output() and time.time(), 600, "model", job,
                        interval=0.05)
    job.wait(900)
    done = time.time()
    images = len(os.listdir(folder))
    return {"wall_s": round(done - job.started, 2), "after_model_s": round(done - loaded, 2),
            "img_s": round(images / (done - loaded), 2)}


def upload(bucket, items: dict[str, bytes], threads: int = 8) -> dict[str, tuple]:
    """Uploads name -> bytes; returns name -> (start, end)."""
    def one(name):
        t = time.time()
        bucket.blob(name).upload_from_string(items[name], content_type="image/jpeg")
        return name, (t, time.time())
    with cf.ThreadPoolExecutor(threads) as pool:
        return dict(pool.map(one, items))


def latencies(uploads: dict, seen: dict) -> list[float]:
    return sorted(seen[n] - end for n, (_, end) in uploads.items())


def pct(values: list[float], q: float) -> float:
    return round(values[min(len(values) - 1, int(q / 100 * len(values)))], 3)


def run(args, cloud, work: str) -> dict:
    from google.cloud import pubsub_v1
    project, storage, bq = cloud
    rid = uuid.uuid4().hex[:8]
    bucket = storage.create_bucket(f"bench-{rid}")
    dataset = f"bench_{rid}"
    bq.create_dataset(dataset)
    topic = f"projects/{project}/topics/{os.environ.get('EMU_NOTIFY_TOPIC', 'gcs-notifications')}"
    subscription = f"projects/{project}/subscriptions/bench-{rid}"
    pubsub_v1.SubscriberClient().create_subscription(name=subscription, topic=topic)
    big = jpegs(args.latency_images, 4000, 3000)
    small = jpegs(args.burst + 20, 1024, 768)
    folder = os.path.join(work, "burst")
    os.makedirs(folder)
    for i, data in enumerate(small[:args.burst]):
        with open(os.path.join(folder, f"b{i:04d}.jpg"), "wb") as f:
            f.write(data)
    folder_rate(folder, work)  # fills the converted-model cache, not measured
    res = {"folder_before": folder_rate(folder, work)}
    print(f"folder mode: {res['folder_before']}", flush=True)
    job = Child(python_module(
        "streaming.main", "--input_subscription", subscription, "--buckets", bucket.name,
        "--output_table", f"{project}:{dataset}.embeddings",
        "--dead_letter_table", f"{project}:{dataset}.dead_letters",
        "--output_gcs", f"gs://{bucket.name}/vectors/", "--weights", "random:0",
        "--local_endpoints"), os.path.join(work, "job.log"))
    rss, poll = PeakRSS(job.pid), Poller(bq, dataset)
    try:
        warm = upload(bucket, {f"warm/{i}.jpg": small[i] for i in range(3)})
        wait_until(lambda: set(warm) <= set(poll.seen), 300, "warm-up rows", job)
        res["start_to_first_rows_s"] = round(max(poll.seen.values()) - job.started, 1)
        ups = {}
        for i in range(args.latency_images):
            time.sleep(max(0.0, job.started + res["start_to_first_rows_s"] + 2 + i
                           - time.time()) if i == 0 else 1.0)
            ups.update(upload(bucket, {f"latency/{i:03d}.jpg": big[i]}, 1))
        wait_until(lambda: set(ups) <= set(poll.seen), 120, "latency rows", job)
        lat = latencies(ups, poll.seen)
        res["latency"] = {"images": len(lat), "p50_s": pct(lat, 50), "p95_s": pct(lat, 95),
                          "max_s": round(lat[-1], 3)}
        print(f"latency: {res['latency']}", flush=True)

        cpu0 = cpu_seconds(job.pid)
        ups = upload(bucket, {f"burst/b{i:04d}.jpg": d for i, d in
                              enumerate(small[:args.burst])})
        wait_until(lambda: set(ups) <= set(poll.seen), 900, "burst rows", job)
        cpu1 = cpu_seconds(job.pid)
        first = min(s for s, _ in ups.values())
        drained = max(poll.seen[n] for n in ups) - first
        res["burst"] = {"images": len(ups), "upload_s": round(max(
            e for _, e in ups.values()) - first, 2), "drain_s": round(drained, 2),
            "img_s": round(len(ups) / drained, 2),
            "job_cores": round((cpu1[0] - cpu0[0]) / drained, 2),
            "other_cores": round((cpu1[1] - cpu0[1] - cpu1[0] + cpu0[0]) / drained, 2)}
        print(f"burst: {res['burst']}", flush=True)

        base = poll.dead_count()
        publisher = pubsub_v1.PublisherClient()
        t0 = time.time()
        futures = [publisher.publish(topic, (b"not json %d" if i % 2 else
                                             b'{"kind": "storage#object", "n": %d}') % i,
                                     eventType="OBJECT_FINALIZE", bucketId=bucket.name,
                                     objectId=f"storm/{i}", payloadFormat="JSON_API_V1")
                   for i in range(args.storm)]
        for f in futures:
            f.result()
        published = time.time()
        ups = upload(bucket, {f"storm/valid{i:02d}.jpg": small[args.burst + i]
                              for i in range(20)})
        wait_until(lambda: set(ups) <= set(poll.seen) and
                   poll.dead_count() >= base + args.storm, 900, "storm dead letters", job)
        lat = latencies(ups, poll.seen)
        res["storm"] = {"messages": args.storm, "publish_s": round(published - t0, 2),
                        "dead_letters": poll.dead_count() - base,
                        "msg_s": round(args.storm / (poll.dead_reached(base + args.storm)
                                                     - t0), 1),
                        "valid": len(lat), "valid_p50_s": pct(lat, 50),
                        "valid_max_s": round(lat[-1], 3),
                        "valid_latencies_s": [round(x, 3) for x in lat]}
        print(f"storm: {res['storm']}", flush=True)
    finally:
        poll.stop()
        res["job_peak_gb"] = round(rss.stop() / 2**30, 2)
        job.stop()
    res["folder_after"] = folder_rate(folder, work)
    folder_mean = statistics.mean(r["img_s"] for r in (res["folder_before"],
                                                       res["folder_after"]))
    if "burst" in res:
        res["burst"]["vs_folder"] = round(res["burst"]["img_s"] / folder_mean, 2)
    bq.delete_dataset(dataset, delete_contents=True, not_found_ok=True)
    return res


def markdown(res: dict) -> str:
    lat, burst, storm = res["latency"], res["burst"], res["storm"]
    fb, fa = res["folder_before"], res["folder_after"]
    rows = [
        ("upload -> queryable row, 1 image/s, 4000x3000",
         f"p50 {lat['p50_s']} s, p95 {lat['p95_s']} s, max {lat['max_s']} s "
         f"({lat['images']} images)", f"p95 < {GOALS['latency_p95_s']} s"),
        (f"burst of {burst['images']} uploads, 1024x768",
         f"{burst['img_s']} img/s ({burst['drain_s']} s; uploads took {burst['upload_s']} s)",
         ""),
        ("folder mode, same files, before / after",
         f"{fb['img_s']} / {fa['img_s']} img/s after start-up (whole process "
         f"{fb['wall_s']} / {fa['wall_s']} s)", ""),
        ("burst / folder rate", f"{burst['vs_folder']}", f">= {GOALS['burst_vs_folder']}"),
        (f"storm of {storm['messages']} malformed messages",
         f"{storm['msg_s']} dead letters/s ({storm['dead_letters']} written)",
         f">= {GOALS['storm_msg_s']}/s"),
        ("20 valid uploads behind the storm", f"upload -> row p50 {storm['valid_p50_s']} s, "
         f"max {storm['valid_max_s']} s", f"< {GOALS['storm_valid_max_s']} s"),
        ("job peak memory (process tree)", f"{res['job_peak_gb']} GB",
         f"<= {GOALS['peak_gb']} GB"),
        ("job start -> first warm-up rows", f"{res['start_to_first_rows_s']} s", ""),
    ]
    return C.table(["", "measured", "goal"], rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--latency_images", type=int, default=60)
    p.add_argument("--burst", type=int, default=500)
    p.add_argument("--storm", type=int, default=1000)
    p.add_argument("--out", default=C.RESULTS)
    args = p.parse_args(argv)
    from streaming import endpoints
    try:
        endpoints.use_local_endpoints()
    except ValueError as e:
        raise SystemExit(f"{e}: start the emulators and `. .emulators/env.sh`")
    cloud = (endpoints.project_from_env(), endpoints.storage_client(True),
             endpoints.bigquery_client(True))
    with tempfile.TemporaryDirectory(prefix="bench-streaming-") as work:
        res = {"machine": C.machine(), "settings": vars(args), "goals": GOALS,
               "load_avg_before": os.getloadavg(), **run(args, cloud, work),
               "load_avg_after": os.getloadavg()}
    C.write_results(args.out, "stream", res, "## The streaming job on the emulators "
                    "(`benchmarks/stream.py`)\n\n" + markdown(res) + "\n")
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
