"""The benchmarks' harness: the machine and versions, a quiet machine before each run,
whole processes measured with psutil (wall time, peak RSS of the process tree, the CPU
other processes used meanwhile), paired rounds, and results as NAME.json + NAME.md."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from importlib.metadata import version

import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
from tools.processes import Child, tree_rss  # noqa: E402 - the one child-process runner

RESULTS = os.path.join(ROOT, "benchmarks", "results")
# Children never probe a metadata server, and TensorFlow's C++ logs stay short.
CHILD_ENV = {
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "NO_GCE_CHECK": "true",
    **{k: "127.0.0.1:1" for k in ("GCE_METADATA_HOST", "GCE_METADATA_IP", "GCE_METADATA_ROOT")},
}


def strict_bigquery():
    """Puts `tools.strict_bigquery.StrictBigQuery` in front of the BigQuery emulator
    for this process and the jobs it starts (the emulator deadlocks when a query meets
    a Storage Write API append; through the proxies they never meet). Returns it."""
    from tools.strict_bigquery import StrictBigQuery

    proxy = StrictBigQuery(
        os.environ["BIGQUERY_EMULATOR_HOST"], os.environ["BIGQUERY_EMULATOR_GRPC_HOST"]
    ).start()
    os.environ.update(proxy.env)
    return proxy


PACKAGES = ("apache-beam", "tensorflow", "keras", "onnxruntime", "tf2onnx", "pillow", "numpy")


def machine() -> dict:
    """What a figure needs next to it: date, cores, CPU, memory, load, versions."""
    cpu = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):  # the CPU model: psutil does not report it
        with open("/proc/cpuinfo") as f:
            cpu = next((x.split(":", 1)[1].strip() for x in f if x.startswith("model name")), cpu)
    versions = {"python": platform.python_version(), **{p: version(p) for p in PACKAGES}}
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cores": psutil.cpu_count(),
        "cpu": cpu,
        "gemm_gflops": gemm_gflops(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average": [round(x, 2) for x in psutil.getloadavg()],
        "versions": versions,
    }


def gemm_gflops(sizes: Sequence[int] = (2048, 3072), repeats: int = 5) -> float:
    """The host's float32 GEMM rate (numpy matmul on every core, the best of `repeats`
    at each size), in GFLOP/s: the most float32 arithmetic this host was seen to do, so
    a model's images/s reads as a fraction of it."""
    import numpy as np

    best = 0.0
    for n in sizes:
        a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
        for _ in range(repeats):
            start = time.perf_counter()
            a @ a
            best = max(best, 2 * n**3 / (time.perf_counter() - start) / 1e9)
    return round(best, 1)


def graph_gflop(onnx_path: str) -> float:
    """GFLOP a forward pass of one image costs in the ONNX graph at `onnx_path`: 2 x the
    multiply-adds of its convolutions and matrix products, from the graph's own shapes
    (ResNet50 without its classifier, 224x224: about 7.7)."""
    import onnx
    from onnx import shape_inference

    model = shape_inference.infer_shapes(onnx.load(onnx_path))
    graph = model.graph
    dims = {
        v.name: [d.dim_value or 1 for d in v.type.tensor_type.shape.dim]
        for v in list(graph.value_info) + list(graph.input) + list(graph.output)
    }
    weights = {w.name: list(w.dims) for w in graph.initializer}
    macs = 0
    for node in graph.node:
        w = weights.get(node.input[1]) if len(node.input) > 1 else None
        if node.op_type == "Conv" and w and len(dims.get(node.output[0], [])) == 4:
            _, c, h, wd = dims[node.output[0]]
            macs += c * h * wd * w[1] * w[2] * w[3]
        elif node.op_type in ("MatMul", "Gemm") and w and len(w) == 2:
            macs += w[0] * w[1]
    return round(2 * macs / 1e9, 3)


class AboveGemm(RuntimeError):
    """A rate that needs more float32 arithmetic than the host's GEMM rate: a measuring
    error, never written to a result."""


def check_rate(label: str, img_s: float, gflop: float, gemm: float) -> float:
    """`img_s` as a fraction of the host's GEMM bound (img_s x GFLOP an image / GEMM
    GFLOP/s); raises AboveGemm where it exceeds 1."""
    fraction = img_s * gflop / gemm
    if fraction > 1.0:
        raise AboveGemm(
            f"{label}: {img_s:.2f} img/s x {gflop:g} GFLOP = {img_s * gflop:.1f} GFLOP/s, "
            f"above this host's float32 GEMM rate {gemm:g} GFLOP/s: a measuring error, "
            "not written"
        )
    return round(fraction, 3)


def describe(info: dict) -> str:
    """machine() in one line, for the top of a .md."""
    gemm = f", float32 GEMM {info['gemm_gflops']} GFLOP/s" if "gemm_gflops" in info else ""
    return (
        f"{info['cores']} cores ({info['cpu']}{gemm}), {info['memory_gib']} GiB, load average "
        f"{info['load_average']} at start; "
        + ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    )


def cpu_mark() -> tuple[float, float]:
    """(busy CPU seconds of the machine, of this process and its reaped children)."""
    t, own = psutil.cpu_times(), psutil.Process().cpu_times()
    busy = sum(t) - t.idle - getattr(t, "iowait", 0.0)
    return busy, own.user + own.system + own.children_user + own.children_system


def other_cores(mark: tuple[float, float], seconds: float) -> float:
    """Cores other processes used on average since `mark` (a `cpu_mark()`)."""
    busy, own = cpu_mark()
    return round(max(0.0, (busy - mark[0]) - (own - mark[1])) / seconds, 2)


def wait_quiet(max_wait: float = 10.0, below: float = 0.5) -> float:
    """Waits (at most `max_wait` s) until other processes use under `below` cores over
    one second; returns the cores they used in the last second."""
    deadline = time.monotonic() + max_wait
    while True:
        mark = cpu_mark()
        time.sleep(1.0)
        other = other_cores(mark, 1.0)
        if other < below or time.monotonic() > deadline:
            return other


class PeakRss:
    """The peak RSS, in bytes, of process `pid` and its descendants, polled every 0.1 s
    on a thread until `stop()`."""

    def __init__(self, pid: int):
        self.peak, self._done = 0, threading.Event()
        self._thread = threading.Thread(target=self._poll, args=(pid,), daemon=True)
        self._thread.start()

    def _poll(self, pid: int) -> None:
        while not self._done.wait(0.1):
            self.peak = max(self.peak, tree_rss(pid))

    def stop(self) -> int:
        self._done.set()
        self._thread.join()
        return self.peak


def run_process(argv: Sequence[str], timeout: float = 1800) -> dict:
    """One whole process: wall time, peak RSS of its tree, the cores other processes
    used meanwhile, and its output. Raises RuntimeError if it fails."""
    mark, start = cpu_mark(), time.monotonic()
    with Child(argv, env=CHILD_ENV) as child:
        rss = PeakRss(child.pid)
        code = child.wait(timeout)
        wall, peak = time.monotonic() - start, rss.stop()
        output = child.output()
    if code:
        raise RuntimeError(f"{' '.join(argv)} exited {code}:\n{output[-3000:]}")
    return {
        "wall_s": round(wall, 2),
        "peak_mib": round(peak / 2**20),
        "other_cores": other_cores(mark, wall),
        "output": output,
    }


def paired_order(names: Sequence[str], round_index: int) -> list[str]:
    """Even rounds in the given order, odd rounds reversed: what runs first (often on a
    quieter machine) changes every round."""
    return list(names) if round_index % 2 == 0 else list(names)[::-1]


def paired_ratios(values: Sequence[float], baseline: Sequence[float]) -> dict:
    """Each round's ratio to the baseline of the same round, and their median: robust
    where the machine's speed drifts between rounds, unlike a ratio of medians."""
    ratios = [round(a / b, 3) for a, b in zip(values, baseline) if a and b]
    return {"per_round": ratios, "median": statistics.median(ratios) if ratios else None}


def parser(doc: str, rounds: int) -> argparse.ArgumentParser:
    """The options every benchmark takes: --rounds, --quick, --out."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=rounds, help="paired rounds")
    p.add_argument("--quick", action="store_true", help="smoke test: few images, 1 round")
    p.add_argument("--out", default=RESULTS, help="folder for NAME.json and NAME.md")
    return p


def make_jpegs(folder: str, count: int, width: int, height: int, distinct: int) -> str:
    """`count` photo-like JPEGs (quality 90): `distinct` generated, the rest copies (a
    12 MP image takes seconds to generate; decoding a copy costs the same)."""
    from PIL import Image

    from tools.samples import photo_like

    os.makedirs(folder)
    for i in range(count):
        path = os.path.join(folder, f"img-{i:04d}.jpg")
        if i < distinct:
            Image.fromarray(photo_like(width, height, seed=i)).save(path, quality=90)
        else:
            shutil.copyfile(os.path.join(folder, f"img-{i % distinct:04d}.jpg"), path)
    return folder


def write_results(out_dir: str, name: str, data: dict, markdown: str) -> None:
    """Writes `out_dir/NAME.json` (every measurement) and `NAME.md` (the tables)."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, name + ".json"), "w") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
    with open(os.path.join(out_dir, name + ".md"), "w") as f:
        f.write(markdown)
    print(markdown)
