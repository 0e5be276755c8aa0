"""Scale on paper: Dataflow workers and cost for a target rate, from measured rates.

Reads `vs_script.json` (the job's steady-state rate E on the measuring machine's cores)
and `gpu.json` (decoding per core, the forward pass on an H100) from `--results`, and
writes `scale.{json,md}` there. Assumed, and printed with the table: a vCPU embeds at E /
the measuring machine's cores; a T4 at the H100's float32 rate x the ratio of their
published float32 peaks (8.1 / 67 TFLOPS), capped by its vCPUs' decoding; Dataflow
streaming list prices (us-central1, `PRICES_AS_OF`) without Streaming Engine, Pub/Sub,
BigQuery and storage, to check against https://cloud.google.com/dataflow/pricing.
"""

from __future__ import annotations

import argparse
import json
import math
import os

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
PRICES_AS_OF = "2024 (Google's published Dataflow price list; check before use)"
VCPU_HOUR, GB_HOUR, T4_HOUR = 0.069, 0.003557, 0.35  # streaming vCPU, memory, NVIDIA T4
T4_OVER_H100_FP32 = 8.1 / 67.0
MACHINES = {  # name: (vCPUs, memory GB, T4 GPUs)
    "n2-standard-4": (4, 16, 0),
    "n2-standard-8": (8, 32, 0),
    "n2-standard-16": (16, 64, 0),
    "n1-standard-8 + 1 T4": (8, 30, 1),
}
SETS = {"12 MP photos": ("12mp", "decode_12mp_1core"), "1 MP images": ("1mp", "decode_1mp_1core")}
JOB = "embed-stream"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", type=float, default=5000.0, help="images/s to reach")
    p.add_argument("--results", default=RESULTS, help="folder of the inputs and outputs")
    args = p.parse_args()
    with open(os.path.join(args.results, "vs_script.json")) as f:
        measured = json.load(f)
    with open(os.path.join(args.results, "gpu.json")) as f:
        gpu = json.load(f)
    cores = measured["machine"]["cores"]
    t4_rate = gpu["L_float32_b256"] * T4_OVER_H100_FP32
    rows = []
    for set_name, (vs_set, decode_key) in SETS.items():
        per_vcpu = measured["sets"][vs_set]["variants"][JOB]["median_img_s_after_start"] / cores
        for machine, (vcpus, mem, t4s) in MACHINES.items():
            rate = min(t4_rate * t4s, gpu[decode_key] * vcpus) if t4s else per_vcpu * vcpus
            hourly = vcpus * VCPU_HOUR + mem * GB_HOUR + t4s * T4_HOUR
            workers = math.ceil(args.target / rate)
            rows.append(
                {
                    "images": set_name,
                    "machine": machine,
                    "worker_img_s": round(rate, 1),
                    "estimate": bool(t4s),
                    "workers": workers,
                    "fleet_usd_per_hour": round(workers * hourly, 2),
                    "usd_per_million": round(hourly / rate / 3600 * 1e6, 2),
                }
            )
    out = {
        "target_img_s": args.target,
        "measured_on_cores": cores,
        "per_vcpu_source": "results/vs_script.json",
        "gpu_source": "results/gpu.json",
        "t4_img_s_estimate": round(t4_rate, 1),
        "prices_as_of": PRICES_AS_OF,
        "prices_usd_per_hour": {"vcpu": VCPU_HOUR, "memory_gb": GB_HOUR, "t4": T4_HOUR},
        "rows": rows,
    }
    with open(os.path.join(args.results, "scale.json"), "w") as f:
        json.dump(out, f, indent=1)
    lines = [
        f"# Scale on paper: {args.target:.0f} images/s",
        "",
        "| images | worker | img/s per worker | workers | fleet $/h | $ per million images |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        mark = " (estimate)" if r["estimate"] else ""
        lines.append(
            f"| {r['images']} | {r['machine']} | {r['worker_img_s']}{mark} | "
            f"{r['workers']} | {r['fleet_usd_per_hour']} | {r['usd_per_million']} |"
        )
    lines += [
        "",
        f"Per-vCPU rates: the job's median steady-state img/s (E) in "
        f"`vs_script.json` / its {cores} cores; E leaves out start-up, which a worker "
        f"pays once. T4: {t4_rate:.0f} img/s estimated (H100's measured float32 "
        f"rate x {T4_OVER_H100_FP32:.3f}), capped by decoding on the worker's vCPUs. "
        f"Prices per hour: vCPU ${VCPU_HOUR}, GB ${GB_HOUR}, T4 ${T4_HOUR}; Dataflow "
        f"streaming list prices, us-central1, as of {PRICES_AS_OF}; without Streaming "
        "Engine, Pub/Sub, BigQuery and storage.",
    ]
    with open(os.path.join(args.results, "scale.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
