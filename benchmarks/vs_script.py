"""The job against the plain Keras script a user would write: whole processes, paired.

Each round runs, on each folder (96 JPEGs of 4000x3000, 192 and 8 of 1024x768) in
alternating order, each after waiting for a quiet machine: `embed-stream` (default
runtime, ONNX Runtime, its converted model cached), `embed-stream --runtime tensorflow`
and `keras_script.py`; and, per runtime, L: the job's model alone in its own process on
decoded 224x224 arrays, batch 8. Recorded: wall time and its ratio to the script's of
the same round, the steady-state rate each process prints (E) and E/L, peak RSS of the
process tree, the CPU other processes used; once, `embed-stream --help` (median of 5)
and a first run that converts the model. Writes `vs_script.{json,md}`.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import statistics
import sys
import tempfile
import time

import _common as C

SETS = {  # key: (count, width, height, distinct images)
    "12mp": (96, 4000, 3000, 8),
    "1mp": (192, 1024, 768, 192),
    "1mp-few": (8, 1024, 768, 8),
}
QUICK_SETS = {"12mp": (4, 4000, 3000, 2), "1mp": (8, 1024, 768, 8), "1mp-few": (2, 1024, 768, 2)}
EMBED = [sys.executable, "-m", "streaming.main"]
SCRIPT = "Keras script"
VARIANTS = {
    "embed-stream": "onnx",
    "embed-stream --runtime tensorflow": "tensorflow",
    SCRIPT: None,
}  # process: the runtime whose L it is compared with
L_BATCH = 8


def command(variant: str, folder: str, out: str, cache: str) -> list[str]:
    if variant == SCRIPT:
        return [
            sys.executable,
            os.path.join(C.ROOT, "benchmarks", "keras_script.py"),
            folder,
            os.path.join(out, "vectors.npy"),
        ]
    return EMBED + [
        "--input_dir",
        folder,
        "--output_dir",
        out,
        "--weights",
        "random:0",
        "--runtime",
        VARIANTS[variant],
        "--model_cache_dir",
        cache,
    ]


def measure(variant: str, folder: str, out: str, cache: str) -> dict:
    """One whole process and the steady-state rate it prints (images / seconds after
    start-up)."""
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    run = C.run_process(command(variant, folder, out, cache))
    text = run.pop("output")
    if variant == SCRIPT:
        images, seconds = re.search(r"embedded (\d+) in ([\d.]+) s", text).groups()
        rate = int(images) / float(seconds)
    else:  # the summary's rate has more digits than its seconds
        images = re.search(r"images embedded: (\d+)", text).group(1)
        rate = float(re.search(r"wall time: [\d.]+ s, ([\d.]+) images/s", text).group(1))
    run["images"], run["img_s_after_start"] = int(images), round(rate, 2)
    return run


def forward_rate(runtime: str, folder: str, cache: str, seconds: float) -> dict:
    """L in a fresh process (`--forward RUNTIME` below): its rate, the host's GEMM rate
    measured in that process just before, and the graph's GFLOP an image. Raises
    C.AboveGemm for a rate above the GEMM bound."""
    run = C.run_process(
        [
            sys.executable,
            os.path.abspath(__file__),
            "--forward",
            runtime,
            "--images",
            folder,
            "--model_cache_dir",
            cache,
            "--seconds",
            str(seconds),
        ]
    )
    out = run["output"]
    rate = float(re.search(r"forward pass: ([\d.]+) img/s", out).group(1))
    gemm = float(re.search(r"GEMM before: ([\d.]+) GFLOP/s", out).group(1))
    gflop = float(re.search(r"graph: ([\d.]+) GFLOP", out).group(1))
    C.check_rate(f"L ({runtime})", rate, gflop, gemm)
    return {"img_s": rate, "gemm_gflops": gemm, "gflop_per_image": gflop}


def forward(runtime: str, folder: str, cache: str, seconds: float) -> None:
    """Times the job's model alone on decoded arrays of `folder`, batch L_BATCH, for
    `seconds` after its warm-up (load_embedding_model warms it up)."""
    import numpy as np

    from streaming.model import inference
    from streaming.stages import preprocess

    files = sorted(os.listdir(folder))[:L_BATCH]
    batch = np.stack(
        [
            preprocess.decode_image(open(os.path.join(folder, f), "rb").read()).pixels
            for f in files * (L_BATCH // len(files) + 1)
        ][:L_BATCH]
    )
    embed = inference.load_embedding_model("random:0", runtime, cache)
    embed(batch)  # the first batch of this size allocates
    graph = glob.glob(os.path.join(cache, "*", "model.onnx"))[0]  # the same weights
    print(f"graph: {C.graph_gflop(graph)} GFLOP; GEMM before: {C.gemm_gflops()} GFLOP/s")
    images, start = 0, time.monotonic()
    while time.monotonic() - start < seconds:
        embed(batch)
        images += L_BATCH
    print(f"forward pass: {images / (time.monotonic() - start):.2f} img/s")


def run(work: str, sets: dict, rounds: int, l_seconds: float) -> dict:
    info = C.machine()
    folders = {
        k: C.make_jpegs(os.path.join(work, f"{n}-{w}x{h}"), n, w, h, d)
        for k, (n, w, h, d) in sets.items()
    }
    out, cache = os.path.join(work, "out"), os.path.join(work, "model-cache")  # cache: empty
    help_s = [C.run_process(EMBED + ["--help"])["wall_s"] for _ in range(5)]
    cold = measure("embed-stream", folders["1mp-few"], out, cache)  # fills the cache
    print(
        f"embed-stream --help {statistics.median(help_s)} s; first run, converting: "
        f"{cold['wall_s']} s",
        flush=True,
    )
    runs = {k: {v: [] for v in VARIANTS} for k in sets}
    fwd = {rt: [] for rt in ("onnx", "tensorflow")}
    for i in range(rounds):
        for rt in C.paired_order(list(fwd), i):
            C.wait_quiet()
            fwd[rt].append(forward_rate(rt, folders["1mp"], cache, l_seconds))
        print(f"round {i + 1}: L {', '.join(f'{k} {v[-1]}' for k, v in fwd.items())}")
        bound = min(x["gemm_gflops"] for v in fwd.values() for x in v[-1:])
        gflop = fwd["onnx"][-1]["gflop_per_image"]
        for k in sets:
            for v in C.paired_order(list(VARIANTS), i):
                before = C.wait_quiet()
                runs[k][v].append(
                    dict(measure(v, folders[k], out, cache), other_cores_before=before)
                )
                C.check_rate(f"E ({v}, {k})", runs[k][v][-1]["img_s_after_start"], gflop, bound)
                print(f"round {i + 1} {k} {v}: {runs[k][v][-1]}", flush=True)
    result = {
        "machine": info,
        "rounds": rounds,
        "l_seconds": l_seconds,
        "l_batch": L_BATCH,
        "help_s": {"runs": help_s, "median": statistics.median(help_s)},
        "first_run_converting": cold,
        "forward_img_s": {
            rt: {
                "runs": [x["img_s"] for x in r],
                "median": statistics.median(x["img_s"] for x in r),
                "gemm_gflops": [x["gemm_gflops"] for x in r],
                "of_gemm": C.paired_ratios(
                    [x["img_s"] * x["gflop_per_image"] for x in r],
                    [x["gemm_gflops"] for x in r],
                ),
            }
            for rt, r in fwd.items()
        },
        "gflop_per_image": fwd["onnx"][0]["gflop_per_image"],
        "sets": {},
    }
    for k, (n, w, h, _) in sets.items():
        variants = {}
        for v, rt in VARIANTS.items():
            mine, script = runs[k][v], runs[k][SCRIPT]
            rates = [r["img_s_after_start"] for r in mine]
            variants[v] = {
                "runs": mine,
                "median_wall_s": statistics.median(r["wall_s"] for r in mine),
                "wall_vs_script": C.paired_ratios(
                    [r["wall_s"] for r in mine], [r["wall_s"] for r in script]
                ),
                "median_img_s_after_start": statistics.median(rates),
                "e_over_l": C.paired_ratios(rates, [x["img_s"] for x in fwd[rt]]) if rt else None,
            }
        result["sets"][k] = {"label": f"{n} JPEGs {w}x{h}", "variants": variants}
    result["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return result


def _cell(ratios: dict | None) -> str:
    if not ratios or ratios["median"] is None:
        return "-"
    return f"{ratios['median']:.2f} ({', '.join(f'{x:.2f}' for x in ratios['per_round'])})"


def markdown(result: dict) -> str:
    fwd, cold = result["forward_img_s"], result["first_run_converting"]
    lines = [
        f"# embed-stream against the plain Keras script ({result['machine']['date']})",
        "",
        C.describe(result["machine"]) + f"; load average "
        f"{result['machine']['load_average_at_end']} at end. Paired rounds: "
        f"{result['rounds']} (order alternating; each run after waiting up to 10 s for "
        "other processes to use under half a core).",
        "",
        "| images | process | wall s, median | / script: median (rounds) | img/s after "
        "start-up: median (rounds) | E/L: median (rounds) | peak GiB | other cores, max |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s in result["sets"].values():
        for v, d in s["variants"].items():
            rates = ", ".join(f"{r['img_s_after_start']:.1f}" for r in d["runs"])
            lines.append(
                f"| {s['label']} | {v} | {d['median_wall_s']:.1f} | {_cell(d['wall_vs_script'])}"
                f" | {d['median_img_s_after_start']:.1f} ({rates}) | {_cell(d['e_over_l'])} | "
                f"{max(r['peak_mib'] for r in d['runs']) / 1024:.2f} | "
                f"{max(r['other_cores'] for r in d['runs']):.2f} |"
            )
    lines += [
        "",
        "| runtime | L, img/s: median (rounds) | host's float32 GEMM just before, GFLOP/s "
        "| L x GFLOP an image / GEMM: median (rounds) |",
        "|---|---:|---:|---:|",
    ]
    lines += [
        f"| {rt} | {d['median']:.1f} ({', '.join(f'{x:.1f}' for x in d['runs'])}) | "
        f"{', '.join(f'{x:g}' for x in d['gemm_gflops'])} | {_cell(d['of_gemm'])} |"
        for rt, d in fwd.items()
    ]
    lines += [
        "",
        f"`embed-stream --help`: {result['help_s']['median']:.2f} s (median of "
        f"{len(result['help_s']['runs'])} processes). A first run with an empty model "
        f"cache ({cold['images']} JPEGs; builds the ONNX graph from the weights and "
        f"stores it): {cold['wall_s']:.1f} s, peak "
        f"{cold['peak_mib'] / 1024:.2f} GiB.",
        "",
        "The wall time is what a user waits for. `img/s after start-up` (E) is "
        "the rate each process prints: for the job, images / the seconds after its "
        "model is loaded, which leaves out the interpreter, imports, loading or "
        "converting the model and its warm-up batch (Beam's pipeline start stays in); "
        "for the script, images / the seconds of `predict` + `np.save`, which leaves "
        "out importing TensorFlow, listing the folder and building ResNet50. "
        f"L is the job's model alone on decoded 224x224 arrays, batch {result['l_batch']}"
        f", {result['l_seconds']:g} s after its warm-up, in its own process; E/L divides "
        "the job's E by its runtime's L of the same round. The graph costs "
        f"{result['gflop_per_image']:g} GFLOP an image (its convolutions' multiply-adds, "
        "counted from the ONNX graph); a rate above the GEMM bound (rate x GFLOP > the "
        "GEMM rate measured in the same process) stops the benchmark before it writes.",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = C.parser(__doc__, rounds=3)
    p.add_argument("--l_seconds", type=float, default=6.0, help="seconds of each L")
    for flag in ("--forward", "--images", "--model_cache_dir", "--seconds"):
        p.add_argument(flag, help=argparse.SUPPRESS)  # the L child process
    args = p.parse_args()
    if args.forward:
        forward(args.forward, args.images, args.model_cache_dir, float(args.seconds))
        return 0
    with tempfile.TemporaryDirectory(prefix="embed-bench-") as work:
        result = run(
            work,
            QUICK_SETS if args.quick else SETS,
            1 if args.quick else args.rounds,
            2.0 if args.quick else args.l_seconds,
        )
    C.write_results(args.out, "vs_script", result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
