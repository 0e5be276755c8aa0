"""Scale on paper: Dataflow workers and their cost at the rates users run, from rates
measured on a host whose float32 GEMM rate is recorded beside them.

Reads `vs_script.json` (the job's steady-state rate E on the measuring host, and the
host's GEMM rate measured beside each L) and `gpu.json` (decoding per core, the forward
pass on an H100) from `--results`, and writes `scale.{json,md}` there.

A Dataflow vCPU's rate is this host's rate per vCPU scaled by GEMM rates: E / cores x
(`--vcpu_gemm` / the host's GEMM rate per vCPU). By default `--vcpu_gemm` is the host's
own per-vCPU figure (a factor of 1): an N2 vCPU is one hyper-thread of a core whose
AVX-512 units it shares with its sibling when both are busy, and its float32 GEMM rate
per vCPU is assumed equal to this host's, unmeasured; whoever measures their worker's
(`benchmarks/_common.gemm_gflops()` on it, / its vCPUs) passes it. At each offered rate
(1, 20, 200 images/s and `--target`) a streaming job keeps at least one worker, so the
cost per image at a low rate is a whole worker's hour over that hour's images. T4:
the H100's measured float32 rate x the ratio of their published float32 peaks (8.1 / 67
TFLOPS), capped by its vCPUs' decoding; an estimate (gpu.json records no GEMM rate),
left out of the cheapest-worker figures `cost.py` reads. Prices: Dataflow streaming
list prices (us-central1, `PRICES_AS_OF`), without Streaming Engine, Pub/Sub, BigQuery
and storage (`cost.py` counts those).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
PRICES_AS_OF = "2024 (Google's published Dataflow price list; check before use)"
PRICES_SOURCE = "https://cloud.google.com/dataflow/pricing"
VCPU_HOUR, GB_HOUR, T4_HOUR = 0.069, 0.003557, 0.35  # streaming vCPU, memory, NVIDIA T4
T4_OVER_H100_FP32 = 8.1 / 67.0
MACHINES = {  # name: (vCPUs, memory GB, T4 GPUs)
    "n2-standard-2": (2, 8, 0),
    "n2-standard-4": (4, 16, 0),
    "n2-standard-8": (8, 32, 0),
    "n2-standard-16": (16, 64, 0),
    "n1-standard-8 + 1 T4": (8, 30, 1),
}
SETS = {"12 MP photos": ("12mp", "decode_12mp_1core"), "1 MP images": ("1mp", "decode_1mp_1core")}
RATES = (1, 20, 200)  # images a second users run
JOB = "embed-stream"


def usd_per_million(rate: float, worker_img_s: float, hourly: float) -> tuple[int, float]:
    """(workers, $ per million images) for a job offered `rate` images/s: enough workers
    for the rate, at least one, each running (and billed) the whole time."""
    workers = max(1, math.ceil(rate / worker_img_s))
    return workers, workers * hourly / (rate * 3600) * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", type=float, default=5000.0, help="a high rate, images/s")
    p.add_argument("--results", default=RESULTS, help="folder of the inputs and outputs")
    p.add_argument(
        "--vcpu_gemm",
        type=float,
        default=None,
        help="float32 GEMM GFLOP/s of one worker vCPU (default: the measuring host's)",
    )
    args = p.parse_args()
    with open(os.path.join(args.results, "vs_script.json")) as f:
        measured = json.load(f)
    with open(os.path.join(args.results, "gpu.json")) as f:
        gpu = json.load(f)
    cores = measured["machine"]["cores"]
    host_gemm = statistics.median(measured["forward_img_s"]["onnx"]["gemm_gflops"])
    host_vcpu_gemm = host_gemm / cores
    vcpu_gemm = args.vcpu_gemm or host_vcpu_gemm
    factor = vcpu_gemm / host_vcpu_gemm
    t4_rate = gpu["L_float32_b256"] * T4_OVER_H100_FP32
    rates = list(RATES) + [args.target]
    rows = []
    for set_name, (vs_set, decode_key) in SETS.items():
        e = measured["sets"][vs_set]["variants"][JOB]["median_img_s_after_start"]
        per_vcpu = e / cores * factor
        for machine, (vcpus, mem, t4s) in MACHINES.items():
            rate = min(t4_rate * t4s, gpu[decode_key] * vcpus) if t4s else per_vcpu * vcpus
            hourly = vcpus * VCPU_HOUR + mem * GB_HOUR + t4s * T4_HOUR
            at = {}
            for offered in rates:
                workers, usd = usd_per_million(offered, rate, hourly)
                at[f"{offered:g}"] = {"workers": workers, "usd_per_million": round(usd, 2)}
            rows.append(
                {
                    "images": set_name,
                    "machine": machine,
                    "worker_img_s": round(rate, 1),
                    "estimate": bool(t4s),
                    "usd_per_hour": round(hourly, 4),
                    "at_rates": at,
                }
            )
    cheapest = {}
    for set_name in SETS:
        cheapest[set_name] = {}
        for offered in rates:
            key = f"{offered:g}"
            best = min(
                (r for r in rows if r["images"] == set_name and not r["estimate"]),
                key=lambda r: r["at_rates"][key]["usd_per_million"],
            )
            cheapest[set_name][key] = {"machine": best["machine"], **best["at_rates"][key]}
    out = {
        "rates": [f"{r:g}" for r in rates],
        "measured_on": {
            "cpu": measured["machine"]["cpu"],
            "cores": cores,
            "gemm_gflops": host_gemm,
            "date": measured["machine"]["date"],
        },
        "vcpu_gemm_gflops": round(vcpu_gemm, 1),
        "host_vcpu_gemm_gflops": round(host_vcpu_gemm, 1),
        "per_vcpu_source": "results/vs_script.json",
        "gpu_source": "results/gpu.json",
        "t4_img_s_estimate": round(t4_rate, 1),
        "prices_as_of": PRICES_AS_OF,
        "prices_source": PRICES_SOURCE,
        "prices_usd_per_hour": {"vcpu": VCPU_HOUR, "memory_gb": GB_HOUR, "t4": T4_HOUR},
        "rows": rows,
        "cheapest_measured": cheapest,
    }
    with open(os.path.join(args.results, "scale.json"), "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    lines = [
        "# Dataflow workers at the rates users run",
        "",
        f"Measured on {cores} cores ({measured['machine']['cpu']}, float32 GEMM "
        f"{host_gemm:g} GFLOP/s, {host_vcpu_gemm:.1f} a vCPU), {measured['machine']['date']}; "
        f"a worker vCPU assumed at {vcpu_gemm:.1f} GFLOP/s (x{factor:.2f}).",
        "",
        "| images | worker | img/s per worker | "
        + " | ".join(f"{r:g} img/s: workers, $ per million" for r in rates)
        + " |",
        "|---|---|---:|" + "---:|" * len(rates),
    ]
    for r in rows:
        mark = " (estimate)" if r["estimate"] else ""
        lines.append(
            f"| {r['images']} | {r['machine']} | {r['worker_img_s']}{mark} | "
            + " | ".join(f"{a['workers']}, {a['usd_per_million']}" for a in r["at_rates"].values())
            + " |"
        )
    lines += [
        "",
        "Cheapest measured worker at each rate ($ per million images): "
        + "; ".join(
            f"{s}: "
            + ", ".join(f"{k} img/s {v['usd_per_million']} ({v['machine']})" for k, v in c.items())
            for s, c in cheapest.items()
        )
        + ".",
        "",
        f"Per-vCPU rates: the job's median steady-state img/s (E) in `vs_script.json` / "
        f"its {cores} cores x {factor:.2f}; E leaves out start-up, which a worker pays "
        "once. A job keeps at least one worker however low its rate. "
        f"T4: {t4_rate:.0f} img/s estimated (H100's measured float32 rate x "
        f"{T4_OVER_H100_FP32:.3f}), capped by decoding on the worker's vCPUs; gpu.json "
        f"records no GEMM rate. Prices per hour: vCPU ${VCPU_HOUR}, GB ${GB_HOUR}, T4 "
        f"${T4_HOUR}; Dataflow streaming list prices, us-central1, as of {PRICES_AS_OF}, "
        f"{PRICES_SOURCE}; without Streaming Engine, Pub/Sub, BigQuery and storage.",
    ]
    with open(os.path.join(args.results, "scale.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
