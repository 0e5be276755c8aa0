"""Scale on paper: workers and cost for a target rate, from measured rates.

`python benchmarks/scale.py` reads `results/vs_script.json` (the job's steady-state
rate on this machine's cores, default runtime) and `results/gpu.json` (decoding per core
and the forward pass on an H100), and writes `results/scale.{json,md}`: how many Dataflow
workers of each machine type reach `--target` images/s, and what a million images cost
at the list prices below. Everything it assumes is printed with the table:

- a vCPU embeds at the measured rate / the measuring machine's cores (linear scaling;
  the measuring machine was shared, so its rates are if anything low);
- a T4 runs ResNet50 at the H100's measured float32 rate times the ratio of their
  published float32 peaks (8.1 / 67 TFLOPS): an estimate, not a measurement; a T4 worker
  is limited by the slower of that and its vCPUs' decoding (`gpu.json`, per core);
- prices: Dataflow streaming list prices, us-central1, per hour, as published by Google
  in 2024 (`PRICES_AS_OF`); they exclude Streaming Engine, Pub/Sub, BigQuery and storage.
  They are list prices to check against https://cloud.google.com/dataflow/pricing.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
PRICES_AS_OF = "2024 (Google's published Dataflow price list; check before use)"
VCPU_HOUR, GB_HOUR, T4_HOUR = 0.069, 0.003557, 0.35  # streaming vCPU, memory, NVIDIA T4
T4_OVER_H100_FP32 = 8.1 / 67.0
MACHINES = {  # name: (vCPUs, memory GB, T4 GPUs)
    "n2-standard-4": (4, 16, 0),
    "n2-standard-8": (8, 32, 0),
    "n2-standard-16": (16, 64, 0),
    "n1-standard-8 + 1 T4": (8, 30, 1),
}
SETS = {"12 MP photos": ("96 JPEGs 4000x3000", "decode_12mp_1core"),
        "1 MP images": ("192 JPEGs 1024x768", "decode_1mp_1core")}
JOB = "embed-stream (onnx)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", type=float, default=5000.0, help="images/s to reach")
    args = p.parse_args()
    with open(os.path.join(RESULTS, "vs_script.json")) as f:
        measured = json.load(f)
    with open(os.path.join(RESULTS, "gpu.json")) as f:
        gpu = json.load(f)
    cores = measured["machine"]["cores"]
    t4_rate = gpu["L_float32_b256"] * T4_OVER_H100_FP32
    rows = []
    for set_name, (vs_set, decode_key) in SETS.items():
        runs = measured["sets"][vs_set][JOB]["runs"]
        per_vcpu = statistics.median(r["images"] / r["work_s"] for r in runs) / cores
        for machine, (vcpus, mem, t4s) in MACHINES.items():
            rate = (min(t4_rate * t4s, gpu[decode_key] * vcpus) if t4s
                    else per_vcpu * vcpus)
            hourly = vcpus * VCPU_HOUR + mem * GB_HOUR + t4s * T4_HOUR
            workers = math.ceil(args.target / rate)
            rows.append({"images": set_name, "machine": machine, "worker_img_s": round(rate, 1),
                         "estimate": bool(t4s), "workers": workers,
                         "fleet_usd_per_hour": round(workers * hourly, 2),
                         "usd_per_million": round(hourly / rate / 3600 * 1e6, 2)})
    out = {"target_img_s": args.target, "measured_on_cores": cores,
           "per_vcpu_source": "results/vs_script.json", "gpu_source": "results/gpu.json",
           "t4_img_s_estimate": round(t4_rate, 1), "prices_as_of": PRICES_AS_OF,
           "prices_usd_per_hour": {"vcpu": VCPU_HOUR, "memory_gb": GB_HOUR, "t4": T4_HOUR},
           "rows": rows}
    with open(os.path.join(RESULTS, "scale.json"), "w") as f:
        json.dump(out, f, indent=1)
    lines = [f"# Scale on paper: {args.target:.0f} images/s", "",
             "| images | worker | img/s per worker | workers | fleet $/h | $ per million images |",
             "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        mark = " (estimate)" if r["estimate"] else ""
        lines.append(f"| {r['images']} | {r['machine']} | {r['worker_img_s']}{mark} | "
                     f"{r['workers']} | {r['fleet_usd_per_hour']} | {r['usd_per_million']} |")
    lines += ["", f"Per-vCPU rates: the job's steady-state img/s in `vs_script.json` / its "
              f"{cores} cores. T4: {t4_rate:.0f} img/s estimated (H100's measured float32 "
              f"rate x {T4_OVER_H100_FP32:.3f}), capped by decoding on the worker's vCPUs. "
              f"Prices per hour: vCPU ${VCPU_HOUR}, GB ${GB_HOUR}, T4 ${T4_HOUR}; Dataflow "
              f"streaming list prices, us-central1, as of {PRICES_AS_OF}; without Streaming "
              "Engine, Pub/Sub, BigQuery and storage."]
    with open(os.path.join(RESULTS, "scale.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
