"""Upload-to-row latency of the streaming job, against the local emulators.

  . .emulators/env.sh && .venv/bin/python benchmarks/latency.py            # 60 s at 1 image/s
  .venv/bin/python benchmarks/latency.py --job_args="" --job_args="--decode_threads 1 --decode_window 1"

Needs the emulators running (`bash emulators/start.sh`); it never starts or stops them.
If the emulator variables are not set, they are read from .emulators/env.sh.

What it does: creates a fresh bucket, dataset and subscription (on the storage
notification topic, EMU_NOTIFY_TOPIC), starts the streaming job as a subprocess

  python -m streaming.main --input_subscription S --output_table test-project:D.embeddings
      --output_gcs gs://B/embeddings/ --weights random:0 --local_endpoints [--job_args]

waits until it embeds a warm-up image, then uploads one new JPEG every 1/--rate
seconds for --duration seconds through google-cloud-storage (fake-gcs-server sends the
real notification), and polls BigQuery (the emulator) every --poll seconds for the rows.

Latency of an image = the first poll that sees its row - the end of its upload (the
object exists, the notification is due). The row's `processing_time` (when the job
built the row) and the job's forward passes (benchmarks/_child.py records them) split
it into: upload -> forward pass starts (notification, Pub/Sub pull, parse, read, decode,
batching wait), the forward pass, and row built -> queryable (BigQuery write + poll).

Writes benchmarks/results/latency.json and latency.md (unless --no_save).
"""
from __future__ import annotations

import argparse
import io
import os
import re
import socket
import sys
import threading
import time
import uuid

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

C.quiet_tf()
ENV_FILE = os.path.join(C.ROOT, ".emulators", "env.sh")
TARGET_P95_S = 3.0


def load_emulator_env() -> dict:
    """Emulator variables from the environment, else from .emulators/env.sh."""
    from streaming import endpoints
    if not all(os.environ.get(v) for v in endpoints.ENV_VARS) and os.path.exists(ENV_FILE):
        with open(ENV_FILE) as f:
            for line in f:
                line = line.strip()
                if line.startswith("export ") and "=" in line:
                    k, v = line[len("export "):].split("=", 1)
                    os.environ.setdefault(k, v.strip().strip('"').strip("'"))
    missing = [v for v in endpoints.ENV_VARS if not os.environ.get(v)]
    if missing:
        raise SystemExit(f"emulators not configured ({', '.join(missing)}); "
                         "run `bash emulators/start.sh` and `. .emulators/env.sh`")
    for var in endpoints.ENV_VARS:
        hostport = os.environ[var].split("://")[-1].rstrip("/")
        host, port = hostport.rsplit(":", 1)
        try:
            socket.create_connection((host, int(port)), timeout=2).close()
        except OSError as e:
            raise SystemExit(f"{var}={os.environ[var]} does not answer ({e}); "
                             "start the emulators with `bash emulators/start.sh`")
    return {v: os.environ[v] for v in endpoints.ENV_VARS}


def make_images(count: int, width: int, height: int, distinct: int = 4) -> list[bytes]:
    """`count` distinct JPEGs (q90): flips/shifts of a few photo-like bases."""
    from PIL import Image
    from tools.samples import photo_like
    bases = [photo_like(width, height, seed=2000 + i) for i in range(min(distinct, count))]
    out = []
    for i in range(count):
        arr, k = bases[i % len(bases)], i // len(bases)
        if k & 1:
            arr = arr[:, ::-1]
        if k & 2:
            arr = arr[::-1]
        arr = np.roll(arr, (k * 97) % arr.shape[1], axis=1) if k >= 4 else arr
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(arr)).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


class RowPoller:
    """Polls the table for names of rows; records when each was first seen."""

    def __init__(self, bq, table_sql: str, bucket: str, interval: float):
        self.bq, self.sql = bq, (f"SELECT name, processing_time FROM {table_sql} "
                                 f"WHERE bucket = '{bucket}'")
        self.interval = interval
        self.seen: dict[str, tuple[float, float]] = {}  # name -> (seen at, processing_time)
        self.query_s: list[float] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self._thread.start()
        return self

    def _run(self):
        from google.api_core.exceptions import NotFound
        while not self._stop.is_set():
            t0 = time.time()
            try:
                rows = list(self.bq.query(self.sql).result())
            except NotFound:
                rows = []
            except Exception:  # noqa: BLE001 - keep polling through emulator hiccups
                rows = []
                self.errors += 1
            t1 = time.time()
            self.query_s.append(t1 - t0)
            for r in rows:
                if r["name"] not in self.seen:
                    pt = r["processing_time"]
                    self.seen[r["name"]] = (t1, pt.timestamp() if pt else float("nan"))
            self._stop.wait(max(0.0, self.interval - (t1 - t0)))

    def stop(self):
        self._stop.set()
        self._thread.join()


def wait_for(predicate, timeout: float, job: C.BackgroundChild, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        if not job.alive():
            raise SystemExit(f"the streaming job exited while waiting for {what}:\n"
                             + job.log_tail())
        time.sleep(0.2)
    return False


def breakdown(uploads: dict, seen: dict, trace: list) -> list[dict]:
    """Per image: latency and its parts (see the module docstring)."""
    batches = sorted((e for e in (trace or []) if e["event"] == "batch"), key=lambda e: e["t"])
    out = []
    for name, (t_start, t_end) in uploads.items():
        if name not in seen:
            out.append({"name": name, "latency_s": None})
            continue
        t_seen, t_row = seen[name]
        rec = {"name": name, "latency_s": t_seen - t_end, "upload_s": t_end - t_start,
               "to_row_built_s": t_row - t_end, "row_built_to_seen_s": t_seen - t_row}
        # the forward pass that produced it: the last one that ended before the row was built
        done = [b for b in batches if b["t"] + b["dur"] <= t_row + 0.05 and b["t"] >= t_end - 0.05]
        if done:
            b = done[-1]
            rec.update(batch_n=b["n"], to_batch_start_s=b["t"] - t_end, forward_s=b["dur"],
                       batch_end_to_row_s=t_row - (b["t"] + b["dur"]))
        out.append(rec)
    return out


def split_env(job_args: str) -> tuple[dict, list]:
    """Leading KEY=VALUE words are environment variables for the job, the rest options."""
    words, env = job_args.split(), {}
    while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
        k, v = words.pop(0).split("=", 1)
        env[k] = v
    return env, words


def pct(values, q):
    v = [x for x in values if x is not None]
    return float(np.percentile(v, q)) if v else None


def run_once(args, cloud, images: list[bytes], label: str) -> dict:
    from google.cloud import pubsub_v1
    project = cloud["project"]
    rid = uuid.uuid4().hex[:8]
    storage, bq = cloud["storage"], cloud["bq"]
    bucket = storage.create_bucket(f"lat-{rid}")
    dataset = f"lat_{rid}"
    bq.create_dataset(dataset)
    subscriber = pubsub_v1.SubscriberClient()
    topic = f"projects/{project}/topics/{os.environ.get('EMU_NOTIFY_TOPIC', 'gcs-notifications')}"
    subscription = f"projects/{project}/subscriptions/lat-{rid}"
    subscriber.create_subscription(name=subscription, topic=topic, ack_deadline_seconds=60)
    workdir = os.path.join(C.work_dir(args.workdir), f"latency-{rid}")
    os.makedirs(workdir, exist_ok=True)
    job_env, extra = split_env(args.job_args)
    job_argv = ["--input_subscription", subscription,
                "--output_table", f"{project}:{dataset}.embeddings",
                "--output_gcs", f"gs://{bucket.name}/embeddings/",
                "--weights", "random:0", "--local_endpoints", *extra]
    print(f"  [{label}] job: {' '.join(f'{k}={v}' for k, v in job_env.items())} "
          f"python -m streaming.main {' '.join(job_argv)}", flush=True)
    job = C.BackgroundChild(job_argv, os.path.join(workdir, "job.log"), env=job_env,
                            trace_path=os.path.join(workdir, "trace.jsonl"))
    poller = RowPoller(bq, f"`{project}.{dataset}.embeddings`", bucket.name, args.poll)
    uploads: dict[str, tuple[float, float]] = {}
    result = {"label": label, "job_args": args.job_args, "bucket": bucket.name,
              "dataset": dataset, "subscription": subscription}
    try:
        poller.start()
        # warm-up: the job is ready once an image makes it to BigQuery
        t0 = time.time()
        warm = [f"warmup/w{i}.jpg" for i in range(args.warmup)]
        for i, name in enumerate(warm):
            bucket.blob(name).upload_from_string(images[i % len(images)],
                                                 content_type="image/jpeg")
            time.sleep(0.3)
        ok = wait_for(lambda: all(n in poller.seen for n in warm), args.startup_timeout, job,
                      "the warm-up rows")
        result["startup_to_first_rows_s"] = time.time() - t0
        if not ok:
            raise SystemExit("the warm-up rows never appeared:\n" + job.log_tail())
        print(f"  [{label}] job ready: warm-up rows after {result['startup_to_first_rows_s']:.1f} s"
              " (process start, model load, first batches)", flush=True)
        time.sleep(2)
        # measurement
        count = int(args.duration * args.rate)
        t_begin = result["t_begin"] = time.time()
        for i in range(count):
            due = t_begin + i / args.rate
            now = time.time()
            if due > now:
                time.sleep(due - now)
            name = f"photos/p{i:04d}.jpg"
            t_start = time.time()
            bucket.blob(name).upload_from_string(images[i % len(images)],
                                                 content_type="image/jpeg")
            uploads[name] = (t_start, time.time())
        result["publish_s"] = time.time() - t_begin
        wait_for(lambda: all(n in poller.seen for n in uploads), args.drain_timeout, job,
                 "the last rows")
    finally:
        poller.stop()
        trace = job.stop()
        try:
            subscriber.delete_subscription(subscription=subscription)
        except Exception:  # noqa: BLE001
            pass
    result["job_peak_mib"] = job.peak_kib / 1024
    result["job_cpu_s"] = job.cpu_s
    per = breakdown(uploads, poller.seen, trace)
    lat = [r["latency_s"] for r in per]
    result.update({
        "images": len(uploads), "rows_seen": sum(1 for x in lat if x is not None),
        "p50_s": pct(lat, 50), "p95_s": pct(lat, 95), "p99_s": pct(lat, 99),
        "max_s": max((x for x in lat if x is not None), default=None),
        "mean_s": float(np.mean([x for x in lat if x is not None])) if any(
            x is not None for x in lat) else None,
        "poll_interval_s": args.poll, "poll_query_p50_s": pct(poller.query_s, 50),
        "poll_errors": poller.errors,
        "parts_p50": {k: pct([r.get(k) for r in per], 50) for k in (
            "upload_s", "to_batch_start_s", "forward_s", "batch_end_to_row_s",
            "to_row_built_s", "row_built_to_seen_s")},
        "parts_p95": {k: pct([r.get(k) for r in per], 95) for k in (
            "upload_s", "to_batch_start_s", "forward_s", "batch_end_to_row_s",
            "to_row_built_s", "row_built_to_seen_s")},
        "batch_sizes": [e["n"] for e in (trace or []) if e["event"] == "batch"],
        # forward passes over 1 s while measuring: a new batch shape retraces the tf.function
        "slow_forward_passes": [{"n": e["n"], "s": round(e["dur"], 2),
                                 "at_s": round(e["t"] - result.get("t_begin", 0), 1)}
                                for e in (trace or []) if e["event"] == "batch"
                                and e["dur"] > 1.0 and e["t"] >= result.get("t_begin", 0)],
        "model_loads_s": [round(e["dur"], 2) for e in (trace or []) if e["event"] == "load"],
        "per_image": per,
    })
    if not args.keep:
        _cleanup(cloud, bucket, dataset)
    return result


def _cleanup(cloud, bucket, dataset):
    try:
        for blob in list(bucket.list_blobs()):
            blob.delete()
        bucket.delete()
    except Exception as e:  # noqa: BLE001
        print(f"  (cleanup of bucket {bucket.name} failed: {e})")
    try:
        cloud["bq"].delete_dataset(dataset, delete_contents=True, not_found_ok=True)
    except Exception as e:  # noqa: BLE001
        print(f"  (cleanup of dataset {dataset} failed: {e})")


def _f(x, nd=2):
    return "" if x is None else f"{x:.{nd}f}"


def report(res: dict) -> str:
    lines = []
    m = res["info"]["machine"]
    lines.append(f"Machine: {m['cores']} cores, {m['cpu_model']}, {m['memory_gib']} GiB. "
                 "Versions: " + ", ".join(f"{k} {v}" for k, v in res["info"]["versions"].items())
                 + f". Settings: " + ", ".join(f"{k}={v}" for k, v in res["info"]["settings"].items())
                 + ".")
    lines.append("")
    rows = []
    for r in res["runs"]:
        rows.append([r["job_args"] or "(defaults)", f"{r['rows_seen']}/{r['images']}",
                     _f(r["p50_s"]), _f(r["p95_s"]), _f(r["p99_s"]), _f(r["max_s"]),
                     "met" if r["p95_s"] is not None and r["p95_s"] <= TARGET_P95_S else "NOT met",
                     f"{r['job_peak_mib'] / 1024:.2f}", _f(r.get("other_cores"))])
    lines.append(C.table(["job options", "rows", "p50 s", "p95 s", "p99 s", "max s",
                          f"p95 <= {TARGET_P95_S:g} s", "job peak GB", "other cores (incl. emulators)"], rows))
    lines.append("")
    rows = []
    names = [("upload_s", "upload call"),
             ("to_batch_start_s", "upload done -> forward pass starts (notify, pull, decode, batch wait)"),
             ("forward_s", "forward pass"),
             ("batch_end_to_row_s", "forward pass end -> row built (.npy write)"),
             ("row_built_to_seen_s", "row built -> queryable (BigQuery insert + poll)")]
    for key, what in names:
        rows.append([what] + [f"{_f(r['parts_p50'][key])} / {_f(r['parts_p95'][key])}"
                              for r in res["runs"]])
    lines.append(C.table(["where the time goes, p50 / p95 s"]
                         + [r["job_args"] or "(defaults)" for r in res["runs"]], rows,
                         "l" + "r" * len(res["runs"])))
    lines.append("")
    for r in res["runs"]:
        bs = r["batch_sizes"]
        lines.append(f"- `{r['job_args'] or '(defaults)'}`: batch sizes "
                     f"{dict(sorted({b: bs.count(b) for b in set(bs)}.items()))}; start-up to "
                     f"first rows {r['startup_to_first_rows_s']:.1f} s; model loads "
                     f"{r['model_loads_s']} s; BigQuery poll every {r['poll_interval_s']} s "
                     f"(query p50 {_f(r['poll_query_p50_s'])} s); forward passes over 1 s "
                     f"while measuring: "
                     + (", ".join(f"{x['n']} images {x['s']} s at +{x['at_s']} s"
                                  for x in r["slow_forward_passes"]) or "none") + ".")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=60, help="seconds of uploads (default 60)")
    p.add_argument("--rate", type=float, default=1, help="images per second (default 1)")
    p.add_argument("--width", type=int, default=4000)
    p.add_argument("--height", type=int, default=3000)
    p.add_argument("--job_args", action="append", default=None,
                   help="extra job options, e.g. '--max_batch_duration_secs 0', optionally "
                        "after KEY=VALUE environment variables for the job (e.g. "
                        "EMBED_BENCH_PROTO=signature,reuse_model, see _child.py); repeat to "
                        "compare configurations (one job each); '' = the defaults")
    p.add_argument("--poll", type=float, default=0.25, help="BigQuery poll interval (s)")
    p.add_argument("--warmup", type=int, default=3, help="warm-up images before measuring")
    p.add_argument("--startup_timeout", type=float, default=240)
    p.add_argument("--drain_timeout", type=float, default=90)
    p.add_argument("--workdir", default=None,
                   help="the job's logs and traces (default: a temporary folder, removed "
                        "at exit)")
    p.add_argument("--keep", action="store_true", help="keep bucket and dataset")
    p.add_argument("--out", default=C.RESULTS)
    p.add_argument("--no_save", action="store_true")
    args = p.parse_args(argv)
    configs = args.job_args or [""]
    env = load_emulator_env()
    from streaming import endpoints
    endpoints.use_local_endpoints()
    settings = {"duration_s": args.duration, "rate_per_s": args.rate,
                "image": f"{args.width}x{args.height} JPEG q90", "poll_s": args.poll,
                "warmup_images": args.warmup, "configs": configs}
    info = C.print_header("latency", settings)
    print("endpoints: " + ", ".join(f"{k}={v}" for k, v in env.items()))
    count = int(args.duration * args.rate)
    t = time.perf_counter()
    images = make_images(max(count, args.warmup), args.width, args.height)
    print(f"  {len(images)} images, {np.mean([len(b) for b in images]) / 1e6:.2f} MB avg, "
          f"made in {time.perf_counter() - t:.0f} s", flush=True)
    cloud = {"project": endpoints.project_from_env(), "storage": endpoints.storage_client(True),
             "bq": endpoints.bigquery_client(True)}
    res = {"info": info, "target_p95_s": TARGET_P95_S, "runs": []}
    for cfg in configs:
        a = argparse.Namespace(**{**vars(args), "job_args": cfg})
        meter = C.Meter().__enter__()
        r = run_once(a, cloud, images, cfg or "defaults")
        meter.child_cpu = r["job_cpu_s"]
        meter.__exit__(None, None, None)
        # CPU of everything but this script and the job (the emulators included)
        r["other_cores"] = meter.other_cores
        r["job_cores"] = r["job_cpu_s"] / meter.wall
        res["runs"].append(r)
        print(f"  [{cfg or 'defaults'}] p50 {_f(r['p50_s'])} s, p95 {_f(r['p95_s'])} s, "
              f"p99 {_f(r['p99_s'])} s ({r['rows_seen']}/{r['images']} rows)", flush=True)
    md = report(res)
    print("\n" + md)
    if not args.no_save:
        C.write_json(os.path.join(args.out, "latency.json"), res)
        with open(os.path.join(args.out, "latency.md"), "w") as f:
            f.write("## Latency (`benchmarks/latency.py`)\n\n" + md + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
