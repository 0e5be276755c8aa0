"""Worker layouts, compared on Beam's local multi-process runner as a stand-in for a VM.

A Dataflow worker starts one SDK process per vCPU by default, each with its own
ResNet50 and TensorFlow thread pools sized to every core of the VM. This script runs
`embed-stream` on one folder of JPEGs under `--runner DirectRunner
--direct_running_mode multi_processing` in three layouts:

  one      1 SDK process, TensorFlow's default threads (one per core): the layout of
           `--experiments=no_use_multiple_sdk_containers`.
  many     N SDK processes (N = cores), TensorFlow's default threads: Dataflow's default.
  many-1   N SDK processes, `--tf_intra_op_threads 1 --tf_inter_op_threads 1
           --decode_threads 1`: one process per vCPU, sized to it.

Each layout runs a small and a large folder (the first images of one set). Steady state,
what a long-running worker sees, is the difference: (large - small) images over the
difference of the wall times, so start-up (TensorFlow import, one model per SDK
process) cancels out; the large run's images over its wall time is the whole-process
rate. Rounds alternate the order (paired), so each round's ratios to `one` survive a
noisy machine. Peak memory is the RSS summed over the process tree (psutil), sampled
every 0.2 s.

  python benchmarks/layouts.py --small 32 --images 192 --rounds 2 --out benchmarks/results
"""
from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import psutil
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from tests.processes import tree_rss  # noqa: E402 - the one process-tree RSS rule
EMBED = [sys.executable, "-m", "streaming.main"]
SINGLE_THREADED = ["--tf_intra_op_threads", "1", "--tf_inter_op_threads", "1",
                   "--decode_threads", "1"]


def layouts(processes: int) -> dict[str, list[str]]:
    """Layout name -> the runner and thread options it adds."""
    runner = ["--runner", "DirectRunner", "--direct_running_mode", "multi_processing"]
    return {
        "one": runner + ["--direct_num_workers", "1"],
        "many": runner + ["--direct_num_workers", str(processes)],
        "many-1": runner + ["--direct_num_workers", str(processes)] + SINGLE_THREADED,
    }


def make_images(folder: str, count: int, width: int, height: int) -> None:
    """Photo-like JPEGs (smooth noise, quality 90), the same for every layout."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        small = (rng.random((height // 16, width // 16, 3)) * 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(small).resize((width, height), Image.BILINEAR).save(buf, "JPEG",
                                                                           quality=90)
        with open(os.path.join(folder, f"img{i:04d}.jpg"), "wb") as f:
            f.write(buf.getvalue())




def run_once(images: str, extra: list[str], work: str) -> dict:
    """One `embed-stream` run; its times, rates and peak memory."""
    out = tempfile.mkdtemp(dir=work, prefix="out-")
    argv = EMBED + ["--input_dir", images, "--output_dir", out, "--weights", "random:0",
                    "--progress_interval", "3600"] + extra
    load_before = psutil.getloadavg()
    started = time.monotonic()
    with open(os.path.join(out, "log.txt"), "w+") as log:
        child = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        peak = 0
        while child.poll() is None:
            peak = max(peak, tree_rss(child.pid))
            time.sleep(0.2)
        wall = time.monotonic() - started
        log.seek(0)
        text = log.read()
    if child.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{text[-3000:]}")
    embedded = int(re.search(r"images embedded: (\d+)", text).group(1))
    shutil.rmtree(out)
    return {"embedded": embedded, "wall_s": round(wall, 2),
            "whole_process_images_per_s": round(embedded / wall, 3),
            "peak_rss_mib": round(peak / 2**20), "load_before": [round(x, 2) for x in load_before],
            "load_after": [round(x, 2) for x in psutil.getloadavg()]}


def steady_rate(run: dict, small_images: int):
    """Extra images over extra seconds; None where start-up noise left the large run
    no longer than the small one (the difference then measures nothing)."""
    extra = run["wall_s"] - run["small_wall_s"]
    return round((run["embedded"] - small_images) / extra, 3) if extra > 0 else None


def run_pair(small: str, large: str, extra: list[str], work: str) -> dict:
    """The small and the large folder in one layout, and the steady rate between them."""
    a, b = run_once(small, extra, work), run_once(large, extra, work)
    return dict(b, small_wall_s=a["wall_s"], small_peak_rss_mib=a["peak_rss_mib"],
                steady_images_per_s=steady_rate(dict(b, small_wall_s=a["wall_s"]),
                                                a["embedded"]),
                peak_rss_mib=max(a["peak_rss_mib"], b["peak_rss_mib"]))


def summarise(rounds: list[dict], names: list[str]) -> dict:
    """Per layout: the median of each figure over the runs that have it, and the
    per-round ratios to `one`."""
    out = {}
    for name in names:
        runs = [r[name] for r in rounds]
        entry = {}
        for k in ("wall_s", "whole_process_images_per_s", "steady_images_per_s",
                  "peak_rss_mib"):
            values = [x[k] for x in runs if x.get(k) is not None]
            entry[k] = statistics.median(values) if values else None
        for k in ("whole_process_images_per_s", "steady_images_per_s"):
            ratios = [r[name][k] / r["one"][k] for r in rounds if r[name].get(k)
                      and r["one"].get(k)]
            entry[f"{k}_vs_one"] = [round(x, 3) for x in ratios]
        out[name] = entry
    return out


# (name, vCPUs, GiB, bundle threads per process, decode threads) for each layout the
# sizing table shows; one process per VM keeps H x D = vCPUs decodes in flight, one
# process per vCPU one each.
MACHINES = [("n2-standard-4", 4, 16), ("n2-standard-8", 8, 32), ("n2-standard-16", 16, 64),
            ("n1-standard-8 + T4", 8, 30)]
VM_ALLOWANCE_GIB = 2  # the OS and Dataflow's own processes: an allowance, not a measurement


def sizing_rows(process_mib: float) -> list[list[str]]:
    """Peak memory by streaming.sizing for each machine and layout, at the default
    --max_pixels and --max_bytes, and the largest --max_pixels that fits."""
    sys.path.insert(0, ROOT)
    from streaming import decode, sizing
    rows = []
    for name, cpus, gib in MACHINES:
        for layout, processes, harness, threads in (
                ("one process per VM", 1, cpus // 2, 2), ("one process per vCPU", cpus, 1, 1)):
            kw = dict(processes=processes, harness_threads=harness, decode_threads=threads,
                      decode_window=decode.DEFAULT_DECODE_WINDOW,
                      max_bytes=decode.DEFAULT_MAX_BYTES, base_mib=process_mib)
            peak = sizing.peak_bytes(max_pixels=decode.DEFAULT_MAX_PIXELS, **kw) / 2**30
            room = (gib - VM_ALLOWANCE_GIB) * 2**30 - sizing.peak_bytes(max_pixels=0, **kw)
            largest = room / (processes * harness * threads * sizing.DECODE_BYTES_PER_PIXEL)
            rows.append([name, layout, f"{processes} x {harness} x {threads}", f"{peak:.1f}",
                         f"{gib - VM_ALLOWANCE_GIB}", f"{max(largest, 0) / 1e6:.0f} MP"])
    return rows


def markdown(result: dict) -> str:
    s = result["settings"]
    lines = [
        "# Worker layouts on the local multi-process runner",
        "",
        f"Measured {result['date']} by `benchmarks/layouts.py`: {s['small']} and "
        f"{s['images']} JPEGs "
        f"{s['width']}x{s['height']}, `--weights random:0`, {s['rounds']} paired rounds "
        f"(order alternating), N = {s['processes']} SDK processes on a machine with "
        f"{result['machine']['cpus']} CPUs and {result['machine']['memory_gib']} GiB "
        f"(load average before the first run: {result['machine']['load_before']}).",
        "",
        "| layout | options | whole process, images/s | vs one | steady state, images/s "
        "| vs one | peak RSS, MiB |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, e in result["summary"].items():
        ratio = lambda k: " / ".join(f"{x:.2f}" for x in e[f"{k}_vs_one"]) or "n/a"  # noqa: E731
        value = lambda k: "n/a" if e[k] is None else f"{e[k]:.2f}"  # noqa: E731
        lines.append(
            f"| {name} | `{' '.join(result['layouts'][name][4:])}` | "
            f"{value('whole_process_images_per_s')} | {ratio('whole_process_images_per_s')} | "
            f"{value('steady_images_per_s')} | {ratio('steady_images_per_s')} | "
            f"{e['peak_rss_mib']:.0f} |")
    lines += ["", "Medians over the rounds; the ratios are per round. Steady state: the "
              "extra images of the large folder over the extra wall time (start-up cancels "
              "out); whole process: the large folder's images over the wall time of "
              "`embed-stream`, start-up (TensorFlow import, one model per SDK process, and "
              "the launcher's own start-up check) included.", ""]
    summary = result["summary"]
    process_mib = (summary["many"]["peak_rss_mib"] - summary["one"]["peak_rss_mib"]) / (
        s["processes"] - 1)
    lines += [
        "## Peak memory by machine type (streaming/sizing.py)",
        "",
        f"One SDK process at work: {process_mib:.0f} MiB (the `many` peak minus the `one` "
        f"peak, per extra process). With the largest allowed images arriving at once, "
        f"default `--max_pixels` and `--max_bytes`; `{VM_ALLOWANCE_GIB} GiB` per VM is left "
        "to the OS and Dataflow's own processes (an allowance, not a measurement). Layout: "
        "SDK processes x bundle threads per process x decode threads.",
        "",
        "| machine | layout | P x H x D | peak GiB | GiB for the job | largest --max_pixels |",
        "|---|---|---|---:|---:|---:|",
    ] + ["| " + " | ".join(r) + " |" for r in sizing_rows(process_mib)] + [""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", type=int, default=32)
    ap.add_argument("--images", type=int, default=192)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--height", type=int, default=768)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--processes", type=int, default=psutil.cpu_count())
    ap.add_argument("--out", default=None, help="Folder for layouts.json and layouts.md.")
    ap.add_argument("--render", default=None, metavar="JSON",
                    help="Only write the Markdown of an earlier run's layouts.json.")
    args = ap.parse_args(argv)
    if args.render:
        with open(args.render) as f:
            result = json.load(f)
        small = result["settings"].get("small", 32)
        for r in result["rounds"]:
            for run in r.values():
                run["steady_images_per_s"] = steady_rate(run, small)
        result["summary"] = summarise(result["rounds"], list(result["layouts"]))
        with open(args.render, "w") as f:
            json.dump(result, f, indent=1)
            f.write("\n")
        text = markdown(result)
        with open(os.path.splitext(args.render)[0] + ".md", "w") as f:
            f.write(text)
        print(text)
        return 0
    configs = layouts(args.processes)
    names = list(configs)
    machine = {"cpus": psutil.cpu_count(), "memory_gib": round(psutil.virtual_memory().total
                                                                 / 2**30, 1),
               "load_before": [round(x, 2) for x in psutil.getloadavg()]}
    rounds = []
    with tempfile.TemporaryDirectory(prefix="layouts-") as work:
        images, small = os.path.join(work, "images"), os.path.join(work, "small")
        make_images(images, args.images, args.width, args.height)
        os.makedirs(small)
        for name in sorted(os.listdir(images))[:args.small]:
            shutil.copy2(os.path.join(images, name), small)
        for i in range(args.rounds):
            order = names if i % 2 == 0 else names[::-1]
            this = {}
            for name in order:
                this[name] = run_pair(small, images, configs[name], work)
                print(f"round {i + 1} {name}: {this[name]}", flush=True)
            rounds.append(this)
    result = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
              "settings": {k: getattr(args, k) for k in
                           ("small", "images", "width", "height", "rounds", "processes")},
              "machine_load": "load_before / load_after of each run (1, 5, 15 min averages)",
              "machine": machine, "layouts": configs, "rounds": rounds,
              "summary": summarise(rounds, names)}
    text = markdown(result)
    print(text)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "layouts.json"), "w") as f:
            json.dump(result, f, indent=1)
            f.write("\n")
        with open(os.path.join(args.out, "layouts.md"), "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
