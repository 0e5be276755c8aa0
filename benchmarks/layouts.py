"""Worker layouts on Beam's local multi-process runner, a stand-in for one worker VM.

`embed-stream` on `--runner DirectRunner --direct_running_mode multi_processing` in three
layouts: `one` SDK process (`--experiments=no_use_multiple_sdk_containers`), `many` (N =
cores processes, TensorFlow's default threads: Dataflow's default) and `many-1` (N
processes, one TensorFlow and one decode thread each). Each embeds a small and a large
folder: whole process = large images / its wall time; steady state = extra images /
extra seconds, start-up cancelling out. Paired rounds; peak RSS of the process tree,
and from it peak memory by machine type (`streaming/config/sizing.py`).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile

import _common as C

RUNNER = ["--runner", "DirectRunner", "--direct_running_mode", "multi_processing"]
ONE_THREAD = ["--intra_op_threads", "1", "--inter_op_threads", "1", "--decode_threads", "1"]
MACHINES = [
    ("n2-standard-4", 4, 16),
    ("n2-standard-8", 8, 32),
    ("n2-standard-16", 16, 64),
    ("n1-standard-8 + T4", 8, 30),
]  # name, vCPUs, GiB
VM_ALLOWANCE_GIB = 2  # the OS and Dataflow's own processes: an allowance, not a measurement


def layouts(processes: int) -> dict[str, list[str]]:
    return {
        "one": RUNNER + ["--direct_num_workers", "1"],
        "many": RUNNER + ["--direct_num_workers", str(processes)],
        "many-1": RUNNER + ["--direct_num_workers", str(processes)] + ONE_THREAD,
    }


def embed(folder: str, options: list[str], out: str) -> dict:
    # TensorFlow: its SDK process is the larger of the two runtimes', so the sizing holds
    # for either.
    run = C.run_process(
        [
            sys.executable,
            "-m",
            "streaming.main",
            "--input_dir",
            folder,
            "--output_dir",
            os.path.join(out, str(len(os.listdir(out)))),
            "--weights",
            "random:0",
            "--runtime",
            "tensorflow",
        ]
        + options
    )
    return dict(run, embedded=int(run.pop("output").split("images embedded: ")[1].split()[0]))


def pair(small: str, large: str, options: list[str], out: str) -> dict:
    """The small and the large folder in one layout; rates in images/s."""
    a, b = embed(small, options, out), embed(large, options, out)
    extra_s = b["wall_s"] - a["wall_s"]  # <= 0: start-up noise swamped the difference
    return {
        "small": a,
        "large": b,
        "peak_rss_mib": max(a["peak_mib"], b["peak_mib"]),
        "whole_process_img_s": round(b["embedded"] / b["wall_s"], 2),
        "steady_img_s": round((b["embedded"] - a["embedded"]) / extra_s, 2)
        if extra_s > 0
        else None,
    }


def summarise(rounds: list[dict]) -> dict:
    """Per layout: medians over the rounds, and each round's ratio to `one`."""
    out = {}
    for name in rounds[0]:
        runs = [r[name] for r in rounds]
        entry = {"peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in runs)}
        for k in ("whole_process_img_s", "steady_img_s"):
            values = [r[k] for r in runs if r[k] is not None]
            entry[k] = statistics.median(values) if values else None
            entry[k + "_vs_one"] = C.paired_ratios(
                [r[k] for r in runs], [r["one"][k] for r in rounds]
            )
        out[name] = entry
    return out


def sizing_rows(process_mib: float) -> list[str]:
    """Peak memory by streaming.config.sizing per machine and layout at the default --max_pixels
    and --max_bytes, and the largest --max_pixels that fits."""
    from streaming.config import flags, sizing

    rows = []
    for name, cpus, gib in MACHINES:
        for procs, harness, threads in ((1, cpus // 2, 2), (cpus, 1, 1)):
            kw = dict(
                processes=procs,
                harness_threads=harness,
                decode_threads=threads,
                decode_window=flags.DEFAULT_DECODE_WINDOW,
                max_bytes=flags.DEFAULT_MAX_BYTES,
                base_mib=process_mib,
            )
            peak = sizing.peak_bytes(max_pixels=flags.DEFAULT_MAX_PIXELS, **kw) / 2**30
            room = (gib - VM_ALLOWANCE_GIB) * 2**30 - sizing.peak_bytes(max_pixels=0, **kw)
            largest = room / (procs * harness * threads * sizing.DECODE_BYTES_PER_PIXEL)
            rows.append(
                f"| {name} | {procs} x {harness} x {threads} | {peak:.1f} | "
                f"{gib - VM_ALLOWANCE_GIB} | {max(largest, 0) / 1e6:.0f} MP |"
            )
    return rows


def markdown(result: dict) -> str:
    s, summary = result["settings"], result["summary"]
    ratio = lambda r: " / ".join(f"{x:.2f}" for x in r["per_round"]) or "n/a"
    value = lambda x: "n/a" if x is None else f"{x:.2f}"
    lines = [
        f"# Worker layouts on the local multi-process runner ({result['machine']['date']})",
        "",
        C.describe(result["machine"]) + f". {s['small']} and {s['images']} JPEGs "
        f"1024x768, paired rounds: {s['rounds']}, N = {s['processes']} SDK processes.",
        "",
        "| layout | options | whole process, img/s | vs one (rounds) | steady state, "
        "img/s | vs one (rounds) | peak RSS, MiB |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, e in summary.items():
        lines.append(
            f"| {name} | `{' '.join(result['layouts'][name][4:])}` | "
            f"{value(e['whole_process_img_s'])} | {ratio(e['whole_process_img_s_vs_one'])}"
            f" | {value(e['steady_img_s'])} | {ratio(e['steady_img_s_vs_one'])} | "
            f"{e['peak_rss_mib']:.0f} |"
        )
    process_mib = (summary["many"]["peak_rss_mib"] - summary["one"]["peak_rss_mib"]) / max(
        1, s["processes"] - 1
    )
    lines += [
        "",
        "Medians over the rounds. Whole process: the large folder's images over "
        "the wall time of `embed-stream`, start-up included (TensorFlow import, one "
        "model per SDK process, the launcher's start-up check). Steady state leaves "
        "that start-up out: the extra images of the large folder over the extra "
        "seconds (n/a where the large run was no slower than the small one).",
        "",
        "## Peak memory by machine type (streaming/config/sizing.py)",
        "",
        f"One SDK process at work: {process_mib:.0f} MiB (the `many` peak minus the "
        f"`one` peak, per extra process). With the largest allowed images arriving at "
        f"once, default `--max_pixels` and `--max_bytes`; {VM_ALLOWANCE_GIB} GiB per VM "
        "is left to the OS and Dataflow's own processes (an allowance, not a "
        "measurement). P x H x D: SDK processes x bundle threads x decode threads.",
        "",
        "| machine | P x H x D | peak GiB | GiB for the job | largest --max_pixels |",
        "|---|---|---:|---:|---:|",
    ] + sizing_rows(process_mib)
    return "\n".join(lines) + "\n"


def main() -> int:
    p = C.parser(__doc__, rounds=2)
    p.add_argument("--processes", type=int, default=os.cpu_count(), help="N (default: cores)")
    args = p.parse_args()
    small_n, large_n = (4, 12) if args.quick else (32, 192)
    rounds, configs = (1 if args.quick else args.rounds), layouts(args.processes)
    info, results = C.machine(), []
    with tempfile.TemporaryDirectory(prefix="embed-bench-") as work:
        small, large = (
            C.make_jpegs(os.path.join(work, f"{n}-1024x768"), n, 1024, 768, n)
            for n in (small_n, large_n)
        )
        out = os.path.join(work, "layouts-out")
        os.makedirs(out, exist_ok=True)
        for i in range(rounds):
            this = {}
            for name in C.paired_order(list(configs), i):
                C.wait_quiet()
                this[name] = pair(small, large, configs[name], out)
                print(f"round {i + 1} {name}: {this[name]}", flush=True)
            results.append({name: this[name] for name in configs})
    result = {
        "machine": info,
        "layouts": configs,
        "rounds": results,
        "summary": summarise(results),
        "settings": {
            "small": small_n,
            "images": large_n,
            "rounds": rounds,
            "processes": args.processes,
        },
    }
    C.write_results(args.out, "layouts", result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
