"""E/L with both measured in one process, seconds apart.

  .venv/bin/python benchmarks/in_process.py

throughput.py measures L in its own process and E in a subprocess; on a VM whose speed
drifts over minutes that pairing still leaves some drift in E/L. Here one
process loads the model once and, per repetition and image set, measures L (the
pipeline's EmbeddingModel on decoded uint8 arrays of that set, batch 8, 6 s), runs the
job on the folder in-process (`streaming.main.main`, the same model object: one load
per process), then L again. E comes from the job's own timings as in throughput.py
(images / (last write - first read - model loads and tracing)); E/L divides it by the
mean of the L before and after. `own fwd` is the job's own forward-pass rate.

Writes benchmarks/results/in_process.json and in_process.md (`--out`). Generates
throughput.py's image sets under `--workdir` (reused when throughput.py made them there).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402
import _child  # noqa: E402
import throughput as T  # noqa: E402

C.quiet_tf()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--l_seconds", type=float, default=6.0)
    p.add_argument("--workdir", default=None,
                   help="images and outputs (default: a temporary folder, removed at exit; "
                        "the same --workdir as throughput.py reuses its images)")
    p.add_argument("--out", default=C.RESULTS)
    args = p.parse_args(argv)
    settings = {"reps": args.reps, "L_batch_size": 8, "L_seconds": args.l_seconds,
                "weights": "random:0", "pipeline": T.default_pipeline()}
    info = C.print_header("E/L in one process", settings)
    args.workdir = C.work_dir(args.workdir)
    sets = T.image_sets(args.workdir, ("12mp", "small"), n=96, n_small=256, head=4)
    trace = os.path.join(args.workdir, "out", "trace-in-process.jsonl")
    os.makedirs(os.path.dirname(trace), exist_ok=True)
    _child._install_trace(trace)
    from streaming import main as job
    from streaming import model
    embed = model.load_embedding_model("random:0")
    arrays = {k: T.decode_arrays(s["files"][:64])[0] for k, s in sets.items()}
    runs = []
    for rep in range(args.reps):
        for label, s in sets.items():
            C.wait_quiet()
            before = T.time_model(embed, arrays[label], 8, min_images=8, min_s=args.l_seconds)
            open(trace, "w").close()
            out = os.path.join(args.workdir, "out", f"in-process-{label}")
            shutil.rmtree(out, ignore_errors=True)
            t0 = time.time()
            job.main(["--input_dir", s["all"], "--output_dir", out, "--weights", "random:0"])
            stats = T._trace_stats(C.read_trace(trace), t0)
            e = stats.get("E_window")
            after = T.time_model(embed, arrays[label], 8, min_images=8, min_s=args.l_seconds)
            L = (before + after) / 2
            run = {"set": label, "rep": rep + 1, "L_before": before, "L_after": after,
                   "E": e, "own_fwd": stats.get("inference_img_s"),
                   "E_over_L": e / L if e else None}
            runs.append(run)
            print(f"  {label} run {rep + 1}: L {before:.2f} -> E {T._f(e)} (own forward "
                  f"passes {T._f(run['own_fwd'])}) -> L {after:.2f}: E/L "
                  f"{T._f(run['E_over_L'])}", flush=True)
    rows = []
    for label in sets:
        mine = [r for r in runs if r["set"] == label and r["E_over_L"]]
        rows.append([label, " / ".join(f"{r['E_over_L']:.2f}" for r in mine),
                     _median(r["E_over_L"] for r in mine),
                     _median(r["E"] / r["own_fwd"] for r in mine if r["own_fwd"]),
                     _median(r["own_fwd"] / ((r["L_before"] + r["L_after"]) / 2)
                             for r in mine if r["own_fwd"]),
                     f">= {T.TARGETS['e_over_l_' + label]}"])
    md = "\n".join([
        f"Machine: {info['machine']['cores']} cores, {info['machine']['cpu_model']}. "
        f"Date: {info['date']}. Settings: "
        + ", ".join(f"{k}={v}" for k, v in settings.items()) + ".", "",
        C.table(["set", "E/L each run", "E/L median", "E / own fwd", "own fwd / L", "target"],
                rows), "",
        "Per run: L (batch 8, the set's own decoded images) before and after the job, in "
        "the job's process; E/L = E / their mean. `own fwd / L` = the job's forward passes "
        "against those L: 1 means RunInference's batches run at the model's own speed."])
    print("\n" + md)
    os.makedirs(args.out, exist_ok=True)
    C.write_json(os.path.join(args.out, "in_process.json"),
                 {"info": info, "runs": runs})
    with open(os.path.join(args.out, "in_process.md"), "w") as f:
        f.write("## E/L in one process (`benchmarks/in_process.py`)\n\n" + md + "\n")
    return 0


def _median(values) -> str:
    values = [v for v in values if v is not None]
    return f"{float(np.median(values)):.2f}" if values else ""


if __name__ == "__main__":
    sys.exit(main())
