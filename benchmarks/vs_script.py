"""The job against the plain Keras script a user would write, whole processes, paired.

`python benchmarks/vs_script.py [--rounds 3] [--workdir DIR]` runs, on the same JPEG
folders and in alternating order within each round:

- `embed-stream --input_dir D --output_dir O --weights random:0` (the default runtime,
  ONNX Runtime, its converted model already cached: a user's second and later runs),
- the same with `--runtime tensorflow`,
- `benchmarks/keras_script.py D O.npy` (Keras `image_dataset_from_directory` +
  `ResNet50.predict`, random weights),

and reports each whole process's wall time, its ratio to the script's in the same round,
and next to it the steady-state rate each prints (the job: images / the seconds after
the model is loaded; the script: images / the seconds of `predict` + `np.save`). It also
times one job run with an empty model cache (the conversion a first run pays) and
`embed-stream --help`. Results: `benchmarks/results/vs_script.{json,md}` (or `--out`).

The folders: 96 JPEGs of 4000x3000 (8 generated images, each copied 12 times:
generating a 12-megapixel image takes seconds, decoding a copy costs the same), 192 and
8 JPEGs of 1024x768, quality 90, from `tools/samples.photo_like`.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
BIN = os.path.dirname(sys.executable)
SETS = {  # name: (count, width, height, distinct images)
    "96 JPEGs 4000x3000": (96, 4000, 3000, 8),
    "192 JPEGs 1024x768": (192, 1024, 768, 192),
    "8 JPEGs 1024x768": (8, 1024, 768, 8),
}
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "NO_GCE_CHECK": "true",
       "GCE_METADATA_HOST": "127.0.0.1:1", "GCE_METADATA_IP": "127.0.0.1:1",
       "GCE_METADATA_ROOT": "127.0.0.1:1"}


def make_set(folder: str, count: int, width: int, height: int, distinct: int) -> None:
    """Writes the JPEGs once; a folder already holding `count` files is reused."""
    from PIL import Image

    from tools.samples import photo_like
    os.makedirs(folder, exist_ok=True)
    if len(os.listdir(folder)) == count:
        return
    for i in range(count):
        path = os.path.join(folder, f"img-{i:04d}.jpg")
        if i < distinct:
            Image.fromarray(photo_like(width, height, seed=i)).save(path, quality=90)
        else:
            shutil.copyfile(os.path.join(folder, f"img-{i % distinct:04d}.jpg"), path)


def wait_quiet(max_wait: float = 10.0, below: float = 0.5) -> float:
    """Waits (at most `max_wait` s) until other processes use less than `below` cores;
    returns the cores they used in the last second."""
    deadline = time.monotonic() + max_wait
    while True:
        busy = psutil.cpu_percent(interval=1.0) / 100 * psutil.cpu_count()
        if busy < below or time.monotonic() > deadline:
            return round(busy, 2)


def timed(argv: list[str]) -> dict:
    """Wall time, peak RSS of the process tree (0.1 s polls), the CPU other processes
    used meanwhile (in cores), and the output, of one whole process."""
    cpu0, child0 = psutil.cpu_times(), _children_cpu()
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=ENV, cwd=ROOT)
    peak = [0]

    def poll():
        root = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                tree = [root] + root.children(recursive=True)
                peak[0] = max(peak[0], sum(p.memory_info().rss for p in tree))
            except psutil.Error:
                pass
            time.sleep(0.1)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    output = proc.communicate()[0]
    wall = time.monotonic() - start
    watcher.join()
    cpu1 = psutil.cpu_times()
    busy = (sum(cpu1) - cpu1.idle - cpu1.iowait) - (sum(cpu0) - cpu0.idle - cpu0.iowait)
    if proc.returncode:
        raise RuntimeError(f"{argv} exited {proc.returncode}:\n{output[-3000:]}")
    return {"wall_s": round(wall, 2), "peak_gb": round(peak[0] / 1e9, 2),
            "other_cores": round(max(0.0, busy - (_children_cpu() - child0)) / wall, 2),
            "output": output}


def _children_cpu() -> float:
    import resource
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def job(folder: str, out: str, runtime: str, cache: str) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    r = timed([os.path.join(BIN, "embed-stream"), "--input_dir", folder, "--output_dir", out,
               "--weights", "random:0", "--runtime", runtime, "--model_cache_dir", cache])
    found = re.search(r"wall time: ([\d.]+) s", r["output"])
    embedded = re.search(r"images embedded: (\d+)", r["output"])
    r["images"], r["work_s"] = int(embedded.group(1)), float(found.group(1))
    return r


def script(folder: str, out: str) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    r = timed([sys.executable, os.path.join(ROOT, "benchmarks", "keras_script.py"), folder,
               os.path.join(out, "vectors.npy")])
    found = re.search(r"embedded (\d+) in ([\d.]+) s", r["output"])
    r["images"], r["work_s"] = int(found.group(1)), float(found.group(2))
    return r


VARIANTS = {"embed-stream (onnx)": lambda d, o, c: job(d, o, "onnx", c),
            "embed-stream --runtime tensorflow": lambda d, o, c: job(d, o, "tensorflow", c),
            "Keras script": lambda d, o, c: script(d, o)}
SCRIPT = "Keras script"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="Paired rounds per image set.")
    p.add_argument("--workdir", type=str, default=None,
                   help="Keep generated images here for the next run (default: a "
                        "temporary folder, removed at the end).")
    p.add_argument("--out", type=str, default=os.path.join(ROOT, "benchmarks", "results",
                                                           "vs_script"))
    args = p.parse_args()
    work = args.workdir or tempfile.mkdtemp(prefix="vs-script-")
    try:
        return run(args, work)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


def run(args, work: str) -> int:
    result = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "machine": {"cores": psutil.cpu_count(), "memory_gb":
                          round(psutil.virtual_memory().total / 1e9, 1),
                          "cpu": platform.processor() or platform.machine(),
                          "load_avg_at_start": [round(x, 2) for x in os.getloadavg()]},
              "versions": _versions(), "rounds": args.rounds, "sets": {}}
    for name, (count, w, h, distinct) in SETS.items():
        make_set(os.path.join(work, name.split()[0] + f"-{w}x{h}"), count, w, h, distinct)
    out = os.path.join(work, "out")
    help_runs = [timed([os.path.join(BIN, "embed-stream"), "--help"])["wall_s"]
                 for _ in range(3)]
    result["help_s"] = {"runs": help_runs, "median": statistics.median(help_runs)}
    cache = os.path.join(work, "model-cache")
    shutil.rmtree(cache, ignore_errors=True)
    small = os.path.join(work, "8-1024x768")
    cold = job(small, out, "onnx", cache)  # converts and fills the cache
    result["first_run_converting"] = {k: v for k, v in cold.items() if k != "output"}
    print(f"embed-stream --help: {result['help_s']['median']:.2f} s; first onnx run "
          f"(converts): {cold['wall_s']:.1f} s", flush=True)
    names = list(VARIANTS)
    for name, (count, w, h, _) in SETS.items():
        folder = os.path.join(work, name.split()[0] + f"-{w}x{h}")
        runs = {v: [] for v in names}
        for r in range(args.rounds):
            order = names if r % 2 == 0 else names[::-1]
            for v in order:
                before = wait_quiet()
                m = VARIANTS[v](folder, out, cache)
                m["other_cores_before"] = before
                m.pop("output")
                runs[v].append(m)
                print(f"{name} round {r + 1}: {v}: {m['wall_s']:.1f} s wall, "
                      f"{m['images'] / m['work_s']:.2f} img/s after start-up, "
                      f"other cores {m['other_cores']}", flush=True)
        result["sets"][name] = {v: {"runs": runs[v], "ratio_to_script": [
            round(a["wall_s"] / b["wall_s"], 3) for a, b in zip(runs[v], runs[SCRIPT])]}
            for v in names}
        for v in names:
            data = result["sets"][name][v]
            data["median_ratio"] = statistics.median(data["ratio_to_script"])
            data["median_wall_s"] = statistics.median(r["wall_s"] for r in runs[v])
            data["median_img_s_after_start"] = round(statistics.median(
                r["images"] / r["work_s"] for r in runs[v]), 2)
    result["machine"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=1)
    with open(args.out + ".md", "w") as f:
        f.write(markdown(result))
    print(markdown(result))
    return 0


def markdown(result: dict) -> str:
    lines = [f"# embed-stream against the plain Keras script ({result['date']})", "",
             f"{result['machine']['cores']} cores, load average "
             f"{result['machine']['load_avg_at_start']} at start, "
             f"{result['machine']['load_avg_at_end']} at end; "
             + ", ".join(f"{k} {v}" for k, v in result["versions"].items())
             + f". {result['rounds']} paired rounds per set (variants alternate order; "
             "each run waits up to 10 s for other processes to use under half a core; "
             "`other cores` is what they used during the run).", "",
             "| images | process | wall s (per round) | / script (per round) | "
             "median / script | img/s after start-up (per round) | peak GB | "
             "other cores, max |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, variants in result["sets"].items():
        for v, data in variants.items():
            runs = data["runs"]
            walls = ", ".join(f"{r['wall_s']:.1f}" for r in runs)
            ratios = ", ".join(f"{x:.2f}" for x in data["ratio_to_script"])
            rates = ", ".join(f"{r['images'] / r['work_s']:.1f}" for r in runs)
            lines.append(f"| {name} | {v} | {walls} | {ratios} | "
                         f"{data['median_ratio']:.2f} | {rates} | "
                         f"{max(r['peak_gb'] for r in runs):.2f} | "
                         f"{max(r['other_cores'] for r in runs):.2f} |")
    cold = result["first_run_converting"]
    lines += ["", f"`embed-stream --help`: {result['help_s']['median']:.2f} s (median of 3). "
              f"A first `--runtime onnx` run with an empty model cache (8 JPEGs; builds the "
              f"Keras model, converts it with tf2onnx, stores it): {cold['wall_s']:.1f} s.",
              "", "`img/s after start-up` is each process's own steady-state figure: the "
              "job's images / seconds after its model is loaded (it leaves out the "
              "interpreter, imports, loading or converting the model and the warm-up "
              "batch, but includes Beam's pipeline start); the script's images / seconds "
              "of `predict` + `np.save` (it leaves out importing TensorFlow, listing the "
              "folder and building ResNet50). The wall time is what a user waits for."]
    return "\n".join(lines) + "\n"


def _versions() -> dict:
    from importlib.metadata import version
    return {p: version(p) for p in ("apache-beam", "tensorflow", "keras", "onnxruntime",
                                    "tf2onnx", "pillow", "numpy")}


if __name__ == "__main__":
    sys.exit(main())
