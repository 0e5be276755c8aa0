"""A first run on a cold model cache: the README's quick start as a new user runs it.

Per round, as whole processes (wall time, peak RSS of the process tree): `embed-stream
--input_dir samples/images --output_dir OUT --weights random:0` with an empty
`--model_cache_dir` (the ONNX graph is built from the weights and stored), then the same
command again on the filled cache. Once per benchmark, in a process of its own, the
former first run's conversion step by step (Keras builds ResNet50, tf2onnx freezes the
function and converts it), with the time and the peak RSS of each step, and the ONNX
Runtime forward pass of both graphs on the same weights (batch 8, alternating), with the
cosine between their vectors.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time

import _common as C

EMBED = [os.path.join(os.path.dirname(sys.executable), "embed-stream")]
SAMPLES = os.path.join(C.ROOT, "samples", "images")
LIMITS = {"peak_mib": 2.5 * 1024, "wall_s": 20.0}  # what a first run must fit in
FORWARD_BATCH = 8


def quick_start(out: str, cache: str) -> dict:
    """The README's quick start as one process."""
    run = C.run_process(
        EMBED
        + [
            "--input_dir",
            SAMPLES,
            "--output_dir",
            out,
            "--weights",
            "random:0",
            "--model_cache_dir",
            cache,
        ]
    )
    notices = [
        line.replace(cache, "CACHE") for line in run.pop("output").splitlines() if " once; " in line
    ]
    return dict(run, notice=notices[0] if notices else None)


class _Steps:
    """Wall time and peak RSS (this process, sampled every 10 ms) of consecutive steps."""

    def __init__(self):
        import psutil

        self._proc, self._peak, self.steps = psutil.Process(), 0, []
        self._start = time.monotonic()
        threading.Thread(target=self._poll, daemon=True).start()

    def _rss(self) -> int:
        return self._proc.memory_info().rss

    def _poll(self) -> None:
        while True:
            self._peak = max(self._peak, self._rss())
            time.sleep(0.01)

    def done(self, name: str) -> None:
        now, rss = time.monotonic(), self._rss()
        self._peak = max(self._peak, rss)
        self.steps.append(
            {
                "step": name,
                "wall_s": round(now - self._start, 2),
                "peak_mib": round(self._peak / 2**20),
                "rss_after_mib": round(rss / 2**20),
            }
        )
        print(f"{name}: {self.steps[-1]}", flush=True)
        self._start, self._peak = time.monotonic(), rss


def former_conversion(seconds: float) -> None:
    """In this process: the Keras -> tf2onnx conversion the first run used to do, step by
    step (what `tf2onnx.convert.from_function` does, opset 17), then both graphs'
    forward rates. Prints one JSON line."""
    steps = _Steps()
    import tensorflow as tf

    steps.done("import TensorFlow and Keras")
    from keras.applications.resnet50 import preprocess_input

    from streaming.model import inference, resnet50

    keras_model = inference.load_keras_model("random:0")
    steps.done("build ResNet50 in Keras (random:0)")

    @tf.function(input_signature=[tf.TensorSpec([None, 224, 224, 3], tf.uint8, name="pixels")])
    def embed(pixels):
        return keras_model(preprocess_input(tf.cast(pixels, tf.float32)), training=False)

    from tf2onnx import optimizer, tf_loader, tfonnx

    concrete = embed.get_concrete_function()
    inputs = [t.name for t in concrete.inputs if t.dtype != tf.dtypes.resource]
    outputs = [t.name for t in concrete.outputs if t.dtype != tf.dtypes.resource]
    with tf.device("/cpu:0"):
        frozen = tf_loader.from_function(concrete, inputs, outputs)
        steps.done("tf2onnx: trace, freeze the variables, Grappler passes")
        with tf.Graph().as_default() as graph:
            tf.import_graph_def(frozen, name="")
            onnx_graph = tfonnx.process_tf_graph(
                graph, opset=17, input_names=inputs, output_names=outputs
            )
            steps.done("tf2onnx: import the frozen graph, map TF ops to ONNX")
            onnx_graph = optimizer.optimize_graph(onnx_graph)
            steps.done("tf2onnx: ONNX optimizer passes")
            converted = onnx_graph.make_model("resnet50").SerializeToString()
    steps.done("tf2onnx: make and serialize the model")
    del frozen, onnx_graph, graph
    weights = resnet50.random_weights(0)
    built = resnet50.to_onnx(weights)
    steps.done("for comparison: resnet50.to_onnx from the same weights")
    print(
        json.dumps(
            {
                "steps": steps.steps,
                "converted_mib": round(len(converted) / 2**20, 1),
                "built_mib": round(len(built) / 2**20, 1),
                "forward": _forward_rates({"tf2onnx": converted, "built": built}, seconds),
            }
        ),
        flush=True,
    )


def _forward_rates(graphs: dict, seconds: float) -> dict:
    """Images/s of each graph on ONNX Runtime (default threads), batch FORWARD_BATCH of
    the sample photos, in alternating slices of `seconds` / 4; and the lowest cosine
    between their vectors."""
    import numpy as np
    import onnxruntime as ort

    from streaming.stages.load import decode_image

    photos = [
        os.path.join(d, f)
        for d, _, fs in sorted(os.walk(SAMPLES))
        for f in sorted(fs)
        if f.endswith(".jpg") and "not-an-image" not in f
    ]
    pixels = [decode_image(open(p, "rb").read()).pixels for p in photos]
    batch = np.stack((pixels * FORWARD_BATCH)[:FORWARD_BATCH])
    sessions = {
        k: ort.InferenceSession(g, providers=["CPUExecutionProvider"]) for k, g in graphs.items()
    }
    vectors = {k: s.run(None, {s.get_inputs()[0].name: batch})[0] for k, s in sessions.items()}
    a, b = vectors.values()
    cosine = float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min())
    done = {k: [0, 0.0] for k in sessions}
    for i in range(4):
        for k in C.paired_order(list(sessions), i):
            s, start = sessions[k], time.monotonic()
            while time.monotonic() - start < seconds / 4:
                s.run(None, {s.get_inputs()[0].name: batch})
                done[k][0] += FORWARD_BATCH
            done[k][1] += time.monotonic() - start
    return {
        "img_s": {k: round(n / t, 2) for k, (n, t) in done.items()},
        "batch": FORWARD_BATCH,
        "min_cosine": round(cosine, 7),
    }


def run(rounds: int, forward_seconds: float) -> dict:
    info = C.machine()  # with the host's float32 GEMM rate
    work = tempfile.mkdtemp(prefix="first-run-")
    runs = {"cold": [], "warm": []}
    for i in range(rounds):
        cache = os.path.join(work, f"cache-{i}")  # does not exist yet: a new user's
        for kind in ("cold", "warm"):
            before = C.wait_quiet()
            runs[kind].append(
                dict(
                    quick_start(os.path.join(work, f"out-{i}-{kind}"), cache),
                    other_cores_before=before,
                )
            )
            print(f"round {i + 1} {kind}: {runs[kind][-1]}", flush=True)
    C.wait_quiet()
    former = C.run_process(
        [
            sys.executable,
            os.path.abspath(__file__),
            "--former",
            "--forward_seconds",
            str(forward_seconds),
        ]
    )
    detail = json.loads(former["output"].strip().splitlines()[-1])
    result = {
        "machine": info,
        "rounds": rounds,
        "limits": LIMITS,
        "command": "embed-stream --input_dir samples/images --output_dir OUT "
        "--weights random:0 --model_cache_dir EMPTY",
        "runs": runs,
        "median": {
            k: {m: statistics.median(r[m] for r in v) for m in ("wall_s", "peak_mib")}
            for k, v in runs.items()
        },
        "former_conversion": {
            "wall_s": former["wall_s"],
            "peak_mib": former["peak_mib"],
            "other_cores": former["other_cores"],
            **detail,
        },
    }
    result["within_limits"] = all(r[m] <= LIMITS[m] for r in runs["cold"] for m in LIMITS)
    result["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    shutil.rmtree(work, ignore_errors=True)
    return result


def markdown(r: dict) -> str:
    former = r["former_conversion"]
    lines = [
        "# First run on a cold model cache",
        "",
        f"{C.describe(r['machine'])}; load average {r['machine']['load_average_at_end']} "
        f"at end. Rounds: {r['rounds']}.",
        "",
        f"`{r['command']}`, whole process (peak RSS of the process tree):",
        "",
        "| cache | wall s, median | peak GiB, median | per round (s / GiB) |",
        "|---|---:|---:|---|",
    ]
    for kind, label in (
        ("cold", "empty (builds and stores the ONNX graph)"),
        ("warm", "filled by the run before"),
    ):
        per = ", ".join(f"{x['wall_s']} / {x['peak_mib'] / 1024:.2f}" for x in r["runs"][kind])
        med = r["median"][kind]
        lines.append(f"| {label} | {med['wall_s']} | {med['peak_mib'] / 1024:.2f} | {per} |")
    lines += [
        "",
        f"Limits for a cold run: {r['limits']['wall_s']:.0f} s, "
        f"{r['limits']['peak_mib'] / 1024:.1f} GiB; every cold round within them: "
        f"{r['within_limits']}. The line a cold run prints: "
        f"`{r['runs']['cold'][0]['notice']}`.",
        "",
        "The former first run's conversion (Keras + tf2onnx, opset 17) in one process "
        f"of its own: {former['wall_s']} s, peak {former['peak_mib'] / 1024:.2f} GiB "
        "(whole process, including the comparison below). Step by step:",
        "",
        "| step | wall s | peak GiB during | RSS after, GiB |",
        "|---|---:|---:|---:|",
    ]
    for s in former["steps"]:
        lines.append(
            f"| {s['step']} | {s['wall_s']} | {s['peak_mib'] / 1024:.2f} | "
            f"{s['rss_after_mib'] / 1024:.2f} |"
        )
    fwd = former["forward"]
    lines += [
        "",
        f"ONNX Runtime forward pass, batch {fwd['batch']}, same weights: graph "
        f"converted by tf2onnx {fwd['img_s']['tf2onnx']} img/s "
        f"({former['converted_mib']} MiB), graph built by `resnet50.to_onnx` "
        f"{fwd['img_s']['built']} img/s ({former['built_mib']} MiB); lowest cosine "
        f"between their vectors {fwd['min_cosine']}.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    p = C.parser(__doc__, rounds=3)
    p.add_argument(
        "--forward_seconds", type=float, default=20.0, help="seconds of forward passes per graph"
    )
    p.add_argument(
        "--former",
        action="store_true",
        help="(internal) the former conversion, in the process run() starts",
    )
    args = p.parse_args()
    if args.former:
        former_conversion(args.forward_seconds)
        return
    if args.quick:
        args.rounds, args.forward_seconds = 1, 2.0
    result = run(args.rounds, args.forward_seconds)
    C.write_results(args.out, "first_run", result, markdown(result))


if __name__ == "__main__":
    main()
