"""GPU check: does decoding keep one GPU fed? L and an end-to-end E per GPU.

Runs without TensorFlow and Beam (on a GPU machine that has PyTorch or JAX), so it uses
the same pieces the pipeline uses, without Beam:
`streaming.stages.preprocess.decode_image` (draft JPEG decoding, RGB rules, the ResNet
evaluation crop) in a process pool, and the same Keras ResNet50 trunk
(`include_top=False, pooling="avg"`) with ResNet50's `preprocess_input`, on the GPU
through a Keras backend that is there (`KERAS_BACKEND=torch` by default).

  KERAS_BACKEND=torch python3 benchmarks/gpu.py --out results/  # prints a table

Measures, in one run: decode images/s per CPU core and with all cores (12 MP JPEGs and
1 MP images); L = the forward pass on preprocessed batches at several batch sizes
(float32 and mixed bfloat16, with the cosine similarity of the two); E = files on disk
-> decode pool -> GPU batches -> 2048-d vectors, for both image sets.
"""

from __future__ import annotations

import argparse
import atexit
import json
import multiprocessing as mp
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "torch")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
from PIL import Image

from streaming.stages.preprocess import decode_image
from tools.samples import photo_like


def _make(args):
    path, w, h, seed = args
    Image.fromarray(photo_like(w, h, seed)).save(path, quality=90)
    return path


def _decode(path):
    with open(path, "rb") as f:
        return decode_image(f.read()).pixels


def make_images(folder, n, w, h, pool):
    os.makedirs(folder, exist_ok=True)
    jobs = [(os.path.join(folder, f"{i:04d}.jpg"), w, h, i) for i in range(n)]
    return pool.map(_make, jobs)


def decode_rate(paths, pool=None):
    t = time.perf_counter()
    if pool is None:
        for p in paths:
            _decode(p)
    else:
        list(pool.imap_unordered(_decode, paths, chunksize=2))
    return len(paths) / (time.perf_counter() - t)


def build_model(policy):
    import keras

    keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(0)
    model = keras.applications.ResNet50(
        include_top=False, weights=None, pooling="avg", input_shape=(224, 224, 3)
    )
    import contextlib

    from keras.applications.resnet50 import preprocess_input

    if keras.backend.backend() == "torch":
        import torch

        no_grad = torch.inference_mode  # Keras' torch backend records autograd otherwise
    else:
        no_grad = contextlib.nullcontext

    def embed(batch_uint8):
        with no_grad():
            x = preprocess_input(
                keras.ops.cast(keras.ops.convert_to_tensor(batch_uint8), "float32")
            )
            out = model(x, training=False)
            return keras.ops.convert_to_numpy(keras.ops.cast(out, "float32"))

    return model, embed


def forward_rate(embed, batch, repeats):
    embed(batch)  # warm-up (kernel selection)
    t = time.perf_counter()
    for _ in range(repeats):
        embed(batch)
    return batch.shape[0] * repeats / (time.perf_counter() - t)


def end_to_end(paths, embed, batch_size, pool):
    t = time.perf_counter()
    buf, n = [], 0
    for pixels in pool.imap(_decode, paths, chunksize=2):
        buf.append(pixels)
        if len(buf) == batch_size:
            embed(np.stack(buf))
            n += len(buf)
            buf = []
    if buf:
        embed(np.stack(buf))
        n += len(buf)
    return n / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n-large", type=int, default=96, help="12 MP JPEGs")
    ap.add_argument("--n-small", type=int, default=512, help="1 MP JPEGs")
    ap.add_argument("--batches", type=str, default="32,64,128,256")
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument(
        "--dir",
        type=str,
        default=None,
        help="generated images (default: a temporary folder, removed at exit)",
    )
    ap.add_argument("--out", type=str, default=None, help="folder for gpu.json / gpu.md")
    args = ap.parse_args()
    if args.dir is None:
        args.dir = tempfile.mkdtemp(prefix="gpu-bench-")
        atexit.register(shutil.rmtree, args.dir, ignore_errors=True)
    # Fork the decode workers before Keras/TF/torch start their threads.
    pool = mp.get_context("fork").Pool(args.workers)
    import keras

    try:
        gpu = (
            subprocess.run(
                ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                capture_output=True,
                text=True,
            ).stdout.strip()
            or "none"
        )
    except FileNotFoundError:
        gpu = "none"
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in open("/proc/cpuinfo")
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    info = {
        "gpu": gpu,
        "cpu": cpu,
        "cores": os.cpu_count(),
        "workers": args.workers,
        "python": platform.python_version(),
        "keras": keras.__version__,
        "backend": keras.backend.backend(),
        "pillow": Image.__version__,
    }
    if info["backend"] == "torch":
        import torch

        info["torch"] = torch.__version__
    print(json.dumps(info))
    res = {"info": info}
    with pool:
        t = time.perf_counter()
        large = make_images(os.path.join(args.dir, "large"), args.n_large, 4000, 3000, pool)
        small = make_images(os.path.join(args.dir, "small"), args.n_small, 1152, 864, pool)
        print(f"made images in {time.perf_counter() - t:.1f}s", flush=True)
        for name, paths in (("12mp", large), ("1mp", small)):
            res[f"decode_{name}_1core"] = decode_rate(paths[:16])
            res[f"decode_{name}_pool"] = decode_rate(paths, pool)
            print(
                name,
                "decode/s 1 core",
                round(res[f"decode_{name}_1core"], 1),
                f"{args.workers} workers",
                round(res[f"decode_{name}_pool"], 1),
                flush=True,
            )
        sizes = [int(b) for b in args.batches.split(",")]
        rng = np.random.default_rng(0)
        probe = np.stack([_decode(p) for p in small[:8]])
        for policy in ("float32", "mixed_bfloat16"):
            _, embed = build_model(policy)
            for b in sizes:
                batch = rng.integers(0, 256, (b, 224, 224, 3), dtype=np.uint8)
                res[f"L_{policy}_b{b}"] = forward_rate(embed, batch, max(3, 1024 // b))
                print(f"L {policy} batch {b}: {res[f'L_{policy}_b{b}']:.0f}/s", flush=True)
            res[f"probe_{policy}"] = embed(probe)
            best = max(sizes, key=lambda b: res[f"L_{policy}_b{b}"])
            for name, paths in (("12mp", large), ("1mp", small)):
                res[f"E_{policy}_{name}"] = end_to_end(paths, embed, best, pool)
                print(
                    f"E {policy} {name} (batch {best}): {res[f'E_{policy}_{name}']:.0f}/s",
                    flush=True,
                )
        a, b = res.pop("probe_float32"), res.pop("probe_mixed_bfloat16")
        cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        res["bf16_cosine_min"] = float(cos.min())
    lines = ["| measure | images/s |", "|---|---:|"]
    for k, v in res.items():
        if k != "info":
            lines.append(f"| {k} | {v:.4f} |" if k.startswith("bf16") else f"| {k} | {v:.0f} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "gpu.json"), "w") as f:
            json.dump(res, f, indent=1)
        with open(os.path.join(args.out, "gpu.md"), "w") as f:
            f.write(f"GPU: {gpu}; CPU: {cpu} x{os.cpu_count()}; {json.dumps(info)}\n\n{table}\n")


if __name__ == "__main__":
    main()
