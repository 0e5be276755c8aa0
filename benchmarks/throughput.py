"""Throughput of the embedding pipeline against its limit and against the naive way.

  .venv/bin/python benchmarks/throughput.py
  .venv/bin/python benchmarks/throughput.py --quick    # fewer images, one run
  .venv/bin/python benchmarks/throughput.py --levers   # + the levers

Measured in one run, on the same machine and the same images:

  L  the limit: ResNet50 forward passes alone (streaming.model.EmbeddingModel, random:0
     weights, as E uses: compare L and E only on the same weights; ImageNet's need a
     download) on already decoded uint8 224x224 arrays, at
     its best batch size (each batch size in every round; one L round before the
     pipeline runs and one after each pipeline run; each batch size's rate is the median
     of its rounds).
  S  "the 2020 way": per image, full Pillow decode (no draft), resize to 224x224,
     keras preprocess_input, one model.predict(x[None]); measured on a slice of the
     set's images right after each pipeline run on that set, S = the median slice.
  E  this project's pipeline end to end in local mode (files in, rows + .npy out): a
     subprocess `python -m streaming.main --input_dir D --output_dir O --weights random:0`
     (through benchmarks/_child.py, which records the job's own timings: model loads,
     forward passes, object reads, decodes, file writes). Per run
         E = images / (last file write - first object read
                       - model loads and graph tracing in that window),
     i.e. all per-image work (read, decode, batching, inference, writing) without the
     start-up and one-off costs; median of the runs. Cross-check for the default
     configuration: a HEAD run on the first 4 images before each full run, and
         E_diff = (N - 4) / (wall(N) - wall(4)) of whole processes
     (noisier: it subtracts two whole-process start-ups).
  E/L  the median E over L, and the paired ratio the targets are checked on: per run,
     E / the mean of the two L rounds around it (the machine's speed drifts over
     minutes; a paired ratio compares numbers from the same minutes), median over runs.
     E/S likewise: per run, E / the S slice measured right after it.
  peak memory: the pipeline process tree's peak resident memory (a 0.1 s poll of the
     tree's summed VmRSS and of each process's VmHWM, the larger).

Every measurement also records the CPU other processes used meanwhile (`other cores`),
so a number taken while the machine was busy can be recognised.

Writes benchmarks/results/throughput.json and throughput.md.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

C.quiet_tf()

TARGETS = {"e_over_l_12mp": 0.7, "e_over_l_small": 0.9, "e_over_s": 3.0, "peak_gb": 3.0}


# --------------------------------------------------------------------------- images
def _variant(base: np.ndarray, k: int) -> np.ndarray:
    """Cheap distinct variants of one photo-like base (flips and shifts): new JPEG
    bytes with the same statistics, without generating 36 M noise samples each time."""
    out = base
    if k & 1:
        out = out[:, ::-1]
    if k & 2:
        out = out[::-1]
    if k >= 4:
        out = np.roll(out, (k * 131) % out.shape[1], axis=1)
    return np.ascontiguousarray(out)


def make_set(workdir: str, label: str, count: int, width: int, height: int,
             distinct: int, n_head: int, quality: int = 90) -> dict:
    """JPEG set `label` under workdir (reused when the same parameters made it)."""
    from PIL import Image
    from tools.samples import photo_like
    root = os.path.join(workdir, label)
    params = {"count": count, "width": width, "height": height, "distinct": distinct,
              "n_head": n_head, "quality": quality, "v": 1}
    manifest = os.path.join(root, "manifest.json")
    all_dir, head_dir = os.path.join(root, "all"), os.path.join(root, "head")
    if os.path.exists(manifest):
        with open(manifest) as f:
            if json.load(f) == params:
                return _set_info(label, all_dir, head_dir, params)
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(all_dir)
    os.makedirs(head_dir)
    t = time.perf_counter()
    bases = [photo_like(width, height, seed=1000 + i) for i in range(distinct)]
    for i in range(count):
        arr = _variant(bases[i % distinct], i // distinct)
        path = os.path.join(all_dir, f"img-{i:04d}.jpg")
        Image.fromarray(arr).save(path, "JPEG", quality=quality)
        if i < n_head:
            os.link(path, os.path.join(head_dir, f"img-{i:04d}.jpg"))
    with open(manifest, "w") as f:
        json.dump(params, f)
    print(f"  generated {count} {width}x{height} JPEGs in {time.perf_counter() - t:.0f} s "
          f"under {root}", flush=True)
    return _set_info(label, all_dir, head_dir, params)


def image_sets(workdir: str, wanted, n: int, n_small: int, head: int) -> dict:
    """The benchmark's image sets by name: `12mp` photos and `small` 1 MP images."""
    sets = {}
    if "12mp" in wanted:
        sets["12mp"] = make_set(workdir, f"photos-4000x3000-{n}", n, 4000, 3000,
                                distinct=min(8, n), n_head=head)
    if "small" in wanted:
        sets["small"] = make_set(workdir, f"small-1024x768-{n_small}", n_small, 1024, 768,
                                 distinct=n_small, n_head=head)
    return sets


def _set_info(label, all_dir, head_dir, params) -> dict:
    files = sorted(os.path.join(all_dir, f) for f in os.listdir(all_dir))
    return {"label": label, "all": all_dir, "head": head_dir, "files": files,
            "n": len(files), "n_head": len(os.listdir(head_dir)),
            "size": f"{params['width']}x{params['height']}",
            "megapixels": round(params["width"] * params["height"] / 1e6, 2),
            "mean_bytes": int(np.mean([os.path.getsize(p) for p in files]))}


# --------------------------------------------------------------------------- E
def pipeline_rate(workdir: str, img_set: dict, name: str, extra: list[str], env: dict,
                  reps: int = 1, head: bool = True, max_other: float = 1e9,
                  retries: int = 0) -> dict:
    """E for one configuration: per repetition a full run (E_window from its trace) and,
    with `head`, a HEAD run before it (E_diff). A repetition during which other processes
    used more than `max_other` cores is measured again (up to `retries` times)."""
    runs, discarded = [], []
    for _ in range(reps):
        for attempt in range(retries + 1):
            rep = {w: _run(workdir, img_set, name, extra, env, w)
                   for w in (("head", "all") if head else ("all",))}
            other = max(r["other_cores"] for r in rep.values())
            if other <= max_other or attempt == retries:
                break
            print(f"    ({name}: other processes used {other:.2f} cores; measuring again)",
                  flush=True)
            discarded.append(rep)
        runs.append(rep)
    out = _combine(img_set, name, extra, env, runs)
    out["discarded_runs"] = discarded
    return out


def _run(workdir, img_set, name, extra, env, which) -> dict:
    """One run of the pipeline on the HEAD folder or on the whole set."""
    slug = re.sub(r"[^A-Za-z0-9_.=-]+", "_", name)
    out = os.path.join(workdir, "out", f"{img_set['label']}-{slug}-{which}")
    shutil.rmtree(out, ignore_errors=True)
    argv = ["--input_dir", img_set[which], "--output_dir", out, "--weights", "random:0", *extra]
    trace = os.path.join(workdir, "out", f"trace-{img_set['label']}-{slug}-{which}.jsonl")
    C.wait_quiet()
    r = C.run_child(argv, env=env, trace_path=trace)
    summ = C.parse_summary(r.output)
    expected = img_set["n"] if which == "all" else img_set["n_head"]
    ok = r.rc == 0 and summ.get("embedded") == expected
    if not ok:
        print(f"    ! {name}/{which}: rc={r.rc} embedded={summ.get('embedded')} "
              f"(expected {expected})\n{r.output[-3000:]}", flush=True)
    return {"ok": ok, "wall_s": r.wall, "other_cores": r.other_cores, "own_cores": r.own_cores,
            "peak_mib": r.peak_mib, "maxrss_mib_wait4": r.maxrss_mib,
            **summ, **_trace_stats(r.trace, r.started)}


def _overlap(a0, a1, b0, b1) -> float:
    return max(0.0, min(a1, b1) - max(a0, b0))


def _trace_stats(trace, started: float) -> dict:
    """Per-run numbers from benchmarks/_child.py's trace; see e_window()."""
    if not trace:
        return {}
    ev = lambda kind: [e for e in trace if e["event"] == kind]  # noqa: E731
    loads, batches = ev("load"), ev("batch")
    reads, decodes, writes = ev("read"), ev("decode"), ev("write")
    out = {"model_loads_s": [round(e["dur"], 2) for e in loads],
           "batch_sizes": [e["n"] for e in batches],
           "batch_s": [round(e["dur"], 3) for e in batches],
           "traced_batches": [[e["n"], round(e["dur"], 2)] for e in batches if e.get("traced")]}
    plain = [e for e in batches if not e.get("traced")]
    if plain:
        out["inference_img_s"] = sum(e["n"] for e in plain) / sum(e["dur"] for e in plain)
    if decodes:
        out["decode_ms"] = 1000 * float(np.mean([e["dur"] for e in decodes]))
    if reads and writes and batches:
        t0 = min(e["t"] for e in reads)
        t1 = max(e["t"] + e["dur"] for e in writes)
        out.update(
            startup_s=t0 - started, window_s=t1 - t0, images_in_window=sum(e["n"] for e in batches),
            loads_in_window_s=sum(_overlap(t0, t1, e["t"], e["t"] + e["dur"]) for e in loads))
        out["E_window"] = e_window(out)
    return out


def e_window(run: dict):
    """E of one run:

      images / (last file write - first object read
                - model loads in that window
                - the tracing part of graph-tracing forward passes)

    i.e. all per-image work (read, decode, batching, inference, .npy + row writes) from
    the first read to the last write, without the one-off costs in between. The tracing
    part of a forward pass that traced a new graph = its duration - its images at the
    run's own forward-pass rate (the other batches); nothing is removed if there are none."""
    if run.get("window_s") is None:
        return None
    excess = 0.0
    rate = run.get("inference_img_s")
    if rate:
        excess = sum(max(0.0, d - n / rate) for n, d in run.get("traced_batches", []))
    busy = run["window_s"] - run["loads_in_window_s"] - excess
    return run["images_in_window"] / busy if busy > 0 else None


def recompute(res: dict) -> None:
    """Recomputes every E from the per-run fields stored in a results JSON (--report_from)."""
    entries = list(res["E"].values())
    for configs in res.get("levers", {}).get("pipeline", {}).values():
        entries += configs
    for e in entries:
        for rep in e["runs"]:
            for run in rep.values():
                if "window_s" in run and "images_in_window" not in run:  # older field names
                    run["images_in_window"] = sum(run["batch_sizes"])
                    run["loads_in_window_s"] = run["one_off_in_window_s"] - sum(
                        d for _, d in run.get("traced_batches", []))
                run["E_window"] = e_window(run)
        windows = [r["all"]["E_window"] for r in e["runs"] if r["all"].get("E_window")]
        e["E_window_each"] = windows
        e["E_img_s"] = float(np.median(windows)) if windows else None
    pair_with_l(res)


def pair_with_l(res: dict) -> None:
    """Per default run: E / L, where L is the mean of the two L rounds around that run
    (best batch size), and E / the run's own forward-pass rate. The machine's speed
    drifts over minutes; a ratio of numbers taken minutes apart carries that
    drift, a paired one mostly does not. Each set's figure is the median of its runs."""
    rounds = res["L"]["rounds"][str(res["L"]["best_batch_size"])]
    for label, e in res["E"].items():
        s_each = res.get("S", {}).get(label, {}).get("S_each", [])
        by_l, by_own, by_s = [], [], []
        for i, rep in enumerate(e["runs"]):
            a = rep["all"]
            if not (a.get("ok") and a.get("E_window")):
                continue
            if i < len(e.get("l_rounds_around", [])):
                around = e["l_rounds_around"][i]
                by_l.append(a["E_window"] / float(np.mean([rounds[j] for j in around])))
            if a.get("inference_img_s"):
                by_own.append(a["E_window"] / a["inference_img_s"])
            if i < len(s_each):
                by_s.append(a["E_window"] / s_each[i])
        for key, values in (("E_over_L_paired", by_l), ("E_over_own_fwd", by_own),
                            ("E_over_S_paired", by_s)):
            e[key + "_each"] = values
            e[key] = float(np.median(values)) if values else None


def _combine(img_set, name, extra, env, runs) -> dict:
    diffs = []
    for rep in runs:
        if "head" in rep and rep["head"]["ok"] and rep["all"]["ok"]:
            dt = rep["all"]["wall_s"] - rep["head"]["wall_s"]
            diffs.append((img_set["n"] - img_set["n_head"]) / dt if dt > 0 else float("nan"))
    windows = [rep["all"]["E_window"] for rep in runs
               if rep["all"]["ok"] and rep["all"].get("E_window")]
    last = runs[-1]["all"]
    return {
        "config": name, "args": " ".join(extra), "env": " ".join(f"{k}={v}" for k, v in env.items()),
        "set": img_set["label"], "images": img_set["n"], "head_images": img_set["n_head"],
        "E_img_s": float(np.median(windows)) if windows else None,
        "E_window_each": windows,
        "E_diff_img_s": float(np.median(diffs)) if diffs else None,
        "E_diff_each": diffs,
        "wall_all_s": [r["all"]["wall_s"] for r in runs],
        "wall_head_s": [r["head"]["wall_s"] for r in runs if "head" in r],
        "startup_s": float(np.median([r["all"]["startup_s"] for r in runs
                                      if r["all"].get("startup_s") is not None] or [np.nan])),
        "naive_img_s": (img_set["n"] / last["summary_wall_s"]) if last.get("summary_wall_s") else None,
        "peak_mib": max(r[w]["peak_mib"] for r in runs for w in r),
        "other_cores": max(r[w]["other_cores"] for r in runs for w in r),
        "runs": runs,
    }


# --------------------------------------------------------------------------- L, S, decode
def decode_arrays(files: list[str]) -> tuple[np.ndarray, float]:
    from streaming.images import decode_image
    out, t = [], time.perf_counter()
    for p in files:
        with open(p, "rb") as f:
            out.append(decode_image(f.read()).pixels)
    return np.stack(out), (time.perf_counter() - t) / len(files)


def full_decode(data: bytes, size: int = 224) -> np.ndarray:
    """decode_image without the JPEG draft (same EXIF, RGB rule and centre crop)."""
    from PIL import Image, ImageOps
    from streaming import images
    img = Image.open(io.BytesIO(data))
    img.load()
    img = ImageOps.exif_transpose(img)
    return images.resize(images.to_rgb(img), "center_crop", size)


def time_model(fn, arrays: np.ndarray, bs: int, min_images: int, min_s: float = 3.0) -> float:
    """images/s of fn over full batches of `bs` drawn from `arrays` (cyclically)."""
    n = len(arrays)
    idx = 0
    done, t = 0, time.perf_counter()
    while done < min_images or time.perf_counter() - t < min_s:
        sel = [(idx + j) % n for j in range(bs)]
        idx = (idx + bs) % n
        np.asarray(fn(arrays[sel]))
        done += bs
    return done / (time.perf_counter() - t)


class Limit:
    """L per batch size: the pipeline's own compiled function (`EmbeddingModel`, traced
    once), fed decoded uint8 arrays. A shared VM's speed drifts over minutes,
    so rounds are spread over the run, between the pipeline runs they are
    compared with, and L is the median round at the batch size with the best median;
    the best single round is reported too."""

    def __init__(self, keras_model, arrays: np.ndarray, batch_sizes, min_images: int):
        from streaming.model import EmbeddingModel
        self.arrays, self.batch_sizes, self.min_images = arrays, batch_sizes, min_images
        self.model = EmbeddingModel(keras_model)
        self.model.warm_up()
        for bs in batch_sizes:
            self.model(np.resize(arrays, (bs, 224, 224, 3)))
        self.per = {bs: [] for bs in batch_sizes}
        self.other = 0.0

    def round(self) -> dict:
        for bs in self.batch_sizes:
            C.wait_quiet()
            with C.Meter() as m:
                self.per[bs].append(time_model(self.model, self.arrays, bs, self.min_images))
            self.other = max(self.other, m.other_cores)
        return {bs: v[-1] for bs, v in self.per.items()}

    def result(self) -> dict:
        best_bs = max(self.batch_sizes, key=lambda b: float(np.median(self.per[b])))
        return {"per_batch_size": {str(b): float(np.median(v)) for b, v in self.per.items()},
                "rounds": {str(b): v for b, v in self.per.items()},
                "best_batch_size": best_bs, "L_img_s": float(np.median(self.per[best_bs])),
                "L_best_round_img_s": max(max(v) for v in self.per.values()),
                "statistic": "median of rounds", "other_cores": self.other}


def measure_2020_way(keras_model, files: list[str]) -> dict:
    """S: full decode, resize to 224, preprocess_input, one predict per image."""
    from PIL import Image
    from keras.applications.resnet50 import preprocess_input

    def one(path):
        img = Image.open(path).convert("RGB").resize((224, 224), Image.BILINEAR)
        x = preprocess_input(np.asarray(img, dtype=np.float32))
        return keras_model.predict(x[None], verbose=0)[0]

    one(files[0])  # builds keras' predict function (not counted)
    C.wait_quiet()
    with C.Meter() as m:
        for p in files:
            one(p)
    return {"S_img_s": len(files) / m.wall, "images": len(files), "other_cores": m.other_cores}


# --------------------------------------------------------------------------- levers
MT2 = ["--runner", "DirectRunner", "--direct_num_workers", "2",
       "--direct_running_mode", "multi_threading"]
ONE_TF_THREAD = {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}
NO_POOL = ["--decode_threads", "1", "--decode_window", "1"]
BOTH, BIG = ("12mp", "small"), ("12mp",)
PIPELINE_LEVERS = [
    # name, extra argv, env, sets it runs on by default (() = only when named)
    ("min=max_batch=16", ["--min_batch_size", "16", "--max_batch_size", "16"], {}, BOTH),
    ("min=max_batch=32", ["--min_batch_size", "32", "--max_batch_size", "32"], {}, ()),
    ("min=max_batch=64", ["--min_batch_size", "64", "--max_batch_size", "64"], {}, BIG),
    ("TF inter-op threads=1", [], {"TF_NUM_INTEROP_THREADS": "1"}, BIG),
    ("TF intra=1 inter=1", [], ONE_TF_THREAD, ()),
    ("DirectRunner (FnApiRunner, 1 worker)", ["--runner", "DirectRunner"], {}, BOTH),
    ("DirectRunner mt2", MT2, {}, BOTH),
    ("DirectRunner mt2 min_batch=32", MT2 + ["--min_batch_size", "32"], {}, ()),
    ("DirectRunner mt2 min_batch=32 TF threads=1",
     MT2 + ["--min_batch_size", "32"], ONE_TF_THREAD, ()),
    # each worker process loads its own model: slow start, twice the memory
    ("DirectRunner mp2 min=max_batch=16 TF threads=1",
     ["--runner", "DirectRunner", "--direct_num_workers", "2",
      "--direct_running_mode", "multi_processing", "--min_batch_size", "16",
      "--max_batch_size", "16"], ONE_TF_THREAD, ()),
    # the decode pool (LoadImages reads and decodes ahead of the model on threads)
    ("no decode pool (1 thread, window 1)", NO_POOL, {}, BOTH),
    ("decode window 32", ["--decode_window", "32"], {}, ()),
    ("decode threads 1", ["--decode_threads", "1"], {}, ()),
    ("decode threads 3", ["--decode_threads", "3"], {}, BIG),
    # the earlier default was 32; larger batches run slower per image on CPU
    ("max_batch=32 (the old default)", ["--max_batch_size", "32"], {}, BOTH),
    ("max_batch=16", ["--max_batch_size", "16"], {}, BOTH),
    ("min_batch=1 (BatchElements ramp from 1)", ["--min_batch_size", "1"], {}, BIG),
]


def decode_lever(img_set: dict, limit: int) -> dict:
    from streaming.images import decode_image
    files = img_set["files"][:limit]
    datas = [open(p, "rb").read() for p in files]
    res = {}
    for name, fn in (("draft (decode_image)", lambda d: decode_image(d).pixels),
                     ("full decode", full_decode)):
        fn(datas[0])
        C.wait_quiet()
        with C.Meter() as m:
            for d in datas:
                fn(d)
        res[name] = {"ms_per_img": 1000 * m.wall / len(datas), "other_cores": m.other_cores}
    res["max_abs_pixel_diff_first"] = int(np.abs(
        decode_image(datas[0]).pixels.astype(int) - full_decode(datas[0]).astype(int)).max())
    return res


def model_levers(keras_model, arrays: np.ndarray, bs: int, rounds: int) -> dict:
    """Forward-pass variants at batch size `bs`, interleaved rounds, best of each."""
    import tensorflow as tf
    from keras.applications.resnet50 import preprocess_input
    from streaming.model import EmbeddingModel

    def compiled(**kw):
        @tf.function(**kw)
        def fn(b):
            return keras_model(preprocess_input(tf.cast(b, tf.float32)), training=False)
        return fn
    fixed = compiled()
    fixed(arrays[:bs])  # traced on (bs, 224, 224, 3) only
    xla = compiled(jit_compile=True)
    t = time.perf_counter()
    xla(arrays[:bs])
    xla_compile_s = time.perf_counter() - t
    relaxed = compiled(reduce_retracing=True)  # the pipeline before input_signature
    relaxed(arrays[:1])
    t = time.perf_counter()
    relaxed(arrays[:2])  # a second shape: reduce_retracing retraces with a None batch dim
    retrace_s = time.perf_counter() - t
    t = time.perf_counter()
    relaxed(arrays[:3])
    third_shape_s = time.perf_counter() - t
    relaxed(arrays[:bs])
    pipeline = EmbeddingModel(keras_model)
    pipeline.warm_up()  # traced once, (None, 224, 224, 3)
    t = time.perf_counter()
    pipeline(arrays[:2])
    pipeline_second_shape_s = time.perf_counter() - t

    def eager(b):
        return keras_model(preprocess_input(tf.cast(b, tf.float32)), training=False)

    def predict(b):
        return keras_model.predict(preprocess_input(b.astype(np.float32)), batch_size=len(b),
                                   verbose=0)
    eager(arrays[:bs])
    predict(arrays[:bs])
    variants = {"EmbeddingModel, input_signature (None,224,224,3) [pipeline]": pipeline,
                "tf.function, fixed shape (bs,224,224,3)": fixed,
                "tf.function, XLA jit_compile": xla,
                "tf.function, reduce_retracing (traced 2x)": relaxed,
                "eager keras_model(x)": eager,
                "keras model.predict(batch)": predict}
    per = {k: [] for k in variants}
    names = list(variants)
    for r in range(rounds):
        # Each round starts with a different variant: the first after a quiet wait
        # runs on a cooler, less contended machine, and a fixed order biased the table.
        C.wait_quiet()
        for k in names[r % len(names):] + names[:r % len(names)]:
            per[k].append(time_model(variants[k], arrays, bs, min_images=bs, min_s=1.0))
    base = per[names[0]]
    return {"batch_size": bs, "img_s": {k: float(np.median(v)) for k, v in per.items()},
            "vs_pipeline": {k: float(np.median([a / b for a, b in zip(v, base)]))
                            for k, v in per.items()},
            "rounds": per,
            "retrace_second_shape_s": retrace_s, "third_shape_s": third_shape_s,
            "tracing_count_relaxed": int(relaxed.experimental_get_tracing_count()),
            "pipeline_second_shape_s": pipeline_second_shape_s,
            "xla_compile_s": xla_compile_s}


def bf16_lever(keras_model, arrays: np.ndarray, bs: int, rounds: int) -> dict:
    """A mixed_bfloat16 copy of the model (same weights): speed and cosine vs float32."""
    import keras
    from streaming.model import EmbeddingModel, build_resnet50
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    try:
        bf = build_resnet50(None)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    bf.set_weights(keras_model.get_weights())
    f32m, bfm = EmbeddingModel(keras_model), EmbeddingModel(bf)
    sample = arrays[:min(len(arrays), 64)]
    a = np.concatenate([f32m(sample[i:i + bs]) for i in range(0, len(sample), bs)])
    b = np.concatenate([np.asarray(bfm(sample[i:i + bs]), np.float32)
                        for i in range(0, len(sample), bs)])
    cos = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    f32m(arrays[:bs]), bfm(arrays[:bs])
    speed = {"float32": [], "mixed_bfloat16": []}
    for _ in range(rounds):
        C.wait_quiet()
        speed["float32"].append(time_model(f32m, arrays, bs, bs * 2, 2.5))
        speed["mixed_bfloat16"].append(time_model(bfm, arrays, bs, bs * 2, 2.5))
    return {"batch_size": bs, "img_s": {k: max(v) for k, v in speed.items()},
            "cosine_min": float(cos.min()), "cosine_mean": float(cos.mean()),
            "images_compared": int(len(cos)), "acceptable": bool(cos.min() >= 0.999)}


# --------------------------------------------------------------------------- report
def _f(x, nd=2):
    return "" if x is None else f"{x:.{nd}f}"


def report(res: dict) -> str:
    L = res["L"]["L_img_s"]
    lines = []
    lines.append(f"Machine: {res['info']['machine']['cores']} cores, "
                 f"{res['info']['machine']['cpu_model']} ({res['info']['machine']['cpu_flags']}), "
                 f"{res['info']['machine']['memory_gib']} GiB. Versions: "
                 + ", ".join(f"{k} {v}" for k, v in res["info"]["versions"].items()) + ".")
    lines.append(f"Settings: " + ", ".join(f"{k}={v}" for k, v in res["info"]["settings"].items())
                 + f". Date: {res['info']['date']}.")
    lines.append("")
    rounds = res["L"].get("rounds", {})
    lines.append("**L** (limit: forward passes on decoded uint8, images/s by batch size, "
                 f"{res['L'].get('statistic', 'best of rounds')}): "
                 + ", ".join(f"bs {b}: {v:.2f}" for b, v in res["L"]["per_batch_size"].items())
                 + f" -> L = {L:.2f} img/s at bs {res['L']['best_batch_size']} "
                 f"(other processes used up to {res['L']['other_cores']:.2f} cores meanwhile).")
    if rounds:
        lines.append("")
        lines.append("L rounds, in order (round 1 before the pipeline runs, then one after "
                     "each E run, the sets alternating): " + "; ".join(
                         f"bs {b}: " + " ".join(f"{x:.2f}" for x in v) for b, v in rounds.items())
                     + (f". Best single round: {res['L']['L_best_round_img_s']:.2f}."
                        if "L_best_round_img_s" in res["L"] else ""))
    lines.append("")
    rows = []
    for label, s in res["sets"].items():
        e, srate = res["E"][label], res["S"][label]
        E = e["E_img_s"]
        peak_gb = e["peak_mib"] / 1024
        rows.append([f"{label} ({s['size']}, {s['n']} JPEGs, {s['mean_bytes'] / 1e6:.2f} MB avg)",
                     _f(L), _f(srate["S_img_s"]),
                     " / ".join(_f(x) for x in srate.get("S_each", [])), _f(E),
                     " / ".join(_f(x) for x in e["E_window_each"]),
                     " / ".join(_f(x) for x in e["E_diff_each"]), _f(e["naive_img_s"]),
                     _f(E / L if E else None), _f(e.get("E_over_L_paired")),
                     _f(e.get("E_over_own_fwd")), _f(E / srate["S_img_s"] if E else None),
                     _f(e.get("E_over_S_paired")),
                     f"{peak_gb:.2f}",
                     _f(max(e["other_cores"], srate["other_cores"]))])
    lines.append(C.table(["image set", "L img/s", "S img/s", "S each slice", "E img/s", "E each run",
                          "E by difference", "E as printed", "E/L", "E/L paired",
                          "E/own fwd", "E/S", "E/S paired", "peak GB", "other cores"], rows))
    lines.append("")
    lines.append("E: `python -m streaming.main --input_dir D --output_dir O --weights random:0` "
                 "as a subprocess; images / (last file write - first object read - model load "
                 "and graph tracing in between), from the job's own timings (median of the "
                 "runs; the tracing part of a forward pass that traced a new graph = its "
                 "duration - its images at the run's forward-pass rate). `E by difference` = (N - 4) / (wall(N images) - wall(first 4 images)) "
                 "of whole processes, a cross-check that is noisier here (it subtracts two "
                 "~20 s start-ups). `E as printed` = N / the job's own summary `wall time` "
                 "(includes a model load). `S each slice` = S on each slice of images, measured "
                 "right after each E run on that set. `E/L` = median E / L. `E/L paired` = median over "
                 "the runs of E / the mean of the two L rounds around that run (best batch "
                 "size): the machine's speed drifts over minutes, and a paired ratio "
                 "compares numbers from the same minutes. `E/own fwd` = median over the runs "
                 "of E / that run's own forward-pass rate: what everything but the forward "
                 "pass costs. `other cores` = CPU used by other processes meanwhile (max).")
    lines.append("")
    checks = []
    for label, key in (("12mp", "e_over_l_12mp"), ("small", "e_over_l_small")):
        if label in res["E"] and res["E"][label]["E_img_s"]:
            e = res["E"][label]
            v = e.get("E_over_L_paired") or e["E_img_s"] / L
            how = "paired" if e.get("E_over_L_paired") else "medians"
            checks.append([f"E >= {TARGETS[key]} L ({label})",
                           f"{v:.2f} L" + (f" (paired; medians {e['E_img_s'] / L:.2f} L)" if how == "paired" else ""),
                           "met" if v >= TARGETS[key] else "NOT met"])
    for label, e in res["E"].items():
        if e["E_img_s"]:
            medians = e["E_img_s"] / res["S"][label]["S_img_s"]
            v = e.get("E_over_S_paired") or medians
            ceiling = L / res["S"][label]["S_img_s"]
            checks.append([f"E >= 3 S ({label})", f"{v:.2f} S" + (
                f" (paired; medians {medians:.2f} S)" if e.get("E_over_S_paired") else ""),
                ("met" if v >= TARGETS["e_over_s"] else "NOT met") + (
                    f" (L = {ceiling:.2f} S: not reachable even at E = L)"
                    if ceiling < TARGETS["e_over_s"] else "")])
    peak = max(e["peak_mib"] for e in res["E"].values()) / 1024
    checks.append(["peak memory <= 3 GB", f"{peak:.2f} GB", "met" if peak <= 3 else "NOT met"])
    lines.append(C.table(["target", "measured", ""], checks, "lrl"))
    lines.append("")
    rows = []
    for label, e in res["E"].items():
        for r in e["runs"]:
            a = r["all"]
            rows.append([label, _f(r["head"]["wall_s"], 1) if "head" in r else "",
                         _f(a["wall_s"], 1), _f(a.get("startup_s"), 1), _f(a.get("window_s"), 1),
                         " ".join(str(x) for x in a.get("model_loads_s", [])),
                         " ".join(f"{n}:{d}s" for n, d in a.get("traced_batches", [])),
                         _f(a.get("decode_ms"), 1), _f(a.get("inference_img_s")),
                         _compact(a.get("batch_sizes", []))])
    lines.append(C.table(["pipeline run", "wall head s", "wall all s", "start-up s",
                          "window s", "model loads s", "tracing batches", "decode ms/img",
                          "img/s in forward passes", "batch sizes"], rows, "lrrrrrrrrl"))
    lines.append("")
    lines.append("start-up = process start to first object read; window = first read to last "
                 "write; tracing batches = forward passes that traced a new graph (n:seconds).")
    if res.get("levers"):
        lines.append("")
        lines.append(levers_report(res))
    return "\n".join(lines)


def _compact(sizes, limit: int = 48) -> str:
    """Batch sizes as runs: 1 1 2 32 32 32 -> 1x2 2 32x3 (cut after `limit` characters)."""
    out, i = [], 0
    while i < len(sizes):
        j = i
        while j < len(sizes) and sizes[j] == sizes[i]:
            j += 1
        out.append(f"{sizes[i]}x{j - i}" if j - i > 1 else str(sizes[i]))
        i = j
    text = " ".join(out)
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + f" ... ({len(sizes)})"


def levers_report(res: dict) -> str:
    lv = res["levers"]
    out = ["### Levers", ""]
    rows = []
    for label, configs in lv["pipeline"].items():
        base = configs[0]["E_img_s"]
        for c in configs:
            E = c["E_img_s"]
            r = c["runs"][-1]["all"]
            rows.append([label, c["config"], _f(E),
                         " / ".join(_f(x) for x in c["E_window_each"]),
                         _f(E / base if E and base else None),
                         _f(E / res["L"]["L_img_s"] if E else None),
                         f"{c['peak_mib'] / 1024:.2f}", _f(c["startup_s"], 1),
                         " ".join(f"{n}:{d}s" for n, d in r.get("traced_batches", [])),
                         _f(r.get("decode_ms"), 1), _f(r.get("inference_img_s")),
                         _compact(r.get("batch_sizes", [])), _f(c["other_cores"])])
    out.append(C.table(["set", "pipeline config", "E img/s", "each run", "x baseline", "E/L",
                        "peak GB", "start-up s", "tracing batches", "decode ms/img",
                        "img/s in fwd passes", "batch sizes", "other cores"], rows,
                       "llrrrrrrrrrlr"))
    out.append("")
    mt2 = any("mt2" in c["config"] for cs in lv["pipeline"].values() for c in cs)
    out.append("E as above (median of the runs; `x baseline` against the default row, whose "
               "runs alternate with the levers' runs). "
               + ("mt2 = `--runner DirectRunner --direct_num_workers 2 --direct_running_mode "
                  "multi_threading`. " if mt2 else "")
               + "The default pipeline decodes on a pool (`--decode_threads` / "
               "`--decode_window`, see Settings): `no decode pool` is the pipeline without it.")
    out.append("")
    rows = []
    for label, d in lv["decode"].items():
        a, b = d["draft (decode_image)"]["ms_per_img"], d["full decode"]["ms_per_img"]
        rows.append([label, f"{a:.1f}", f"{b:.1f}", f"{b / a:.1f}x"])
    out.append(C.table(["decode (one core)", "draft ms/img", "full ms/img", "draft speed-up"],
                       rows))
    out.append("")
    m = lv["model"]
    ratio = m.get("vs_pipeline", {})
    rows = [[k, _f(v), _f(ratio.get(k)), _f(v / res["L"]["L_img_s"])]
            for k, v in m["img_s"].items()]
    out.append(C.table([f"forward pass variant (bs {m['batch_size']})", "img/s",
                        "x pipeline's", "/ L"], rows))
    out.append("")
    out.append(f"Median of {len(next(iter(m['rounds'].values())))} rounds, each starting with "
               "a different variant; `x pipeline's` = median of the per-round ratios to the "
               "first row; `/ L` against the L above (the pipeline's EmbeddingModel at the "
               "best batch size, measured earlier in the run).")
    out.append("")
    out.append(f"First call with a second batch shape: reduce_retracing retraces, "
               f"{m['retrace_second_shape_s']:.2f} s (third shape: {m['third_shape_s']:.2f} s, "
               f"traces: {m['tracing_count_relaxed']}); the pipeline's input_signature "
               f"function: {m.get('pipeline_second_shape_s', float('nan')):.2f} s. XLA "
               f"compile on first call: {m.get('xla_compile_s', float('nan')):.1f} s.")
    b = lv["bf16"]
    out.append("")
    out.append(C.table(["precision (bs %d)" % b["batch_size"], "img/s", "cosine vs float32 (min / mean)"],
                       [["float32", _f(b["img_s"]["float32"]), "1"],
                        ["mixed_bfloat16", _f(b["img_s"]["mixed_bfloat16"]),
                         f"{b['cosine_min']:.5f} / {b['cosine_mean']:.5f}"
                         + (" (acceptable)" if b["acceptable"] else " (< 0.999: not acceptable)")]]))
    return "\n".join(out)


# --------------------------------------------------------------------------- main
def default_pipeline() -> str:
    """The default job's runner and batching, read from the code that decides them."""
    from apache_beam.options.pipeline_options import StandardOptions
    from streaming.main import make_options
    from streaming.pipeline import min_batch_size
    o = make_options(["--input_dir", "in", "--output_dir", "out"])
    return (f"default options ({o.view_as(StandardOptions).runner}, min/max batch "
            f"{min_batch_size(o)}/{o.max_batch_size}, decode threads/window "
            f"{o.decode_threads}/{o.decode_window})")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer images (a smoke run)")
    p.add_argument("--levers", action="store_true", help="also measure the levers")
    p.add_argument("--lever_sets", default="12mp,small",
                   help="image sets for the pipeline levers (comma-separated)")
    p.add_argument("--lever_configs", default=None,
                   help="only these pipeline levers: exact names from PIPELINE_LEVERS, "
                        "separated by ';'")
    p.add_argument("--lever_reps", type=int, default=2,
                   help="runs of each lever's configuration (E is the median)")
    p.add_argument("--max_other", type=float, default=0.3,
                   help="a pipeline run during which other processes used more cores than "
                        "this is measured again (up to --retries times)")
    p.add_argument("--retries", type=int, default=1)
    p.add_argument("--s_images", type=int, default=64,
                   help="images per set for S (per-image work, no fixed cost)")
    p.add_argument("--images", type=int, default=None,
                   help="12 MP images (default 96, quick 16)")
    p.add_argument("--images_small", type=int, default=None,
                   help="small images (default 256, quick 16)")
    p.add_argument("--quiet_below", type=float, default=0.5,
                   help="before each measurement wait until other processes use fewer cores "
                        "than this (1 s samples; negative: never wait)")
    p.add_argument("--quiet_max_wait", type=float, default=60,
                   help="longest wait for a quiet machine before each measurement (s)")
    p.add_argument("--head", type=int, default=4, help="images of the HEAD run (fixed cost)")
    p.add_argument("--reps", type=int, default=None,
                   help="runs of the default pipeline on each set, the sets alternating; "
                        "each is a HEAD run and a full run, then an L round and an S slice "
                        "(default 5, quick 1); E is the median")
    p.add_argument("--batch_sizes", default="4,8,16,32,64", help="batch sizes tried for L")
    p.add_argument("--sets", default="12mp,small", help="which image sets")
    p.add_argument("--workdir", default=None,
                   help="images and outputs (default: a temporary folder, removed at exit; "
                        "give a folder to keep the generated images for later runs)")
    p.add_argument("--out", default=C.RESULTS, help="where throughput.json/.md go")
    p.add_argument("--report_from", default=None,
                   help="only rewrite the tables from this results JSON (E recomputed)")
    args = p.parse_args(argv)
    if args.report_from:
        with open(args.report_from) as f:
            res = json.load(f)
        recompute(res)
        _save(res, args.out)
        return 0
    n = args.images or (16 if args.quick else 96)
    n_small = args.images_small or (16 if args.quick else 256)
    retry = {"max_other": args.max_other, "retries": args.retries}
    args.reps = args.reps or (1 if args.quick else 5)
    if args.quiet_below >= 0:
        C.QUIET.update(threshold=args.quiet_below, max_wait=args.quiet_max_wait)
    batch_sizes = [int(x) for x in args.batch_sizes.split(",")]
    sets_wanted = [s for s in args.sets.split(",") if s]
    settings = {"images_12mp": n, "images_small": n_small, "head_images": args.head, "reps": args.reps,
                "L_batch_sizes": batch_sizes, "jpeg_quality": 90, "weights": "random:0",
                "pipeline": default_pipeline(),
                "quick": args.quick, "levers": args.levers,
                "quiet_below_cores": args.quiet_below, "quiet_max_wait_s": args.quiet_max_wait}
    info = C.print_header("throughput", settings)
    t_start = time.perf_counter()

    print("\n-- images", flush=True)
    args.workdir = C.work_dir(args.workdir)
    sets = image_sets(args.workdir, sets_wanted, n, n_small, args.head)
    for k, s in sets.items():
        s["label"] = k
        print(f"  {k}: {s['n']} x {s['size']} JPEG q90, {s['mean_bytes'] / 1e6:.2f} MB avg "
              f"({s['all']})")

    res = {"info": info, "sets": {k: {x: v for x, v in s.items()
                                      if x not in ("files", "all", "head")}
                                  for k, s in sets.items()},
           "targets": TARGETS, "E": {}, "S": {}}
    print("\n-- L (forward passes alone) and E (the pipeline end to end, subprocesses), "
          "L rounds between the E runs", flush=True)
    from streaming.model import load_keras_model
    keras_model = load_keras_model("random:0")
    first = next(iter(sets.values()))
    arrays, _ = decode_arrays(first["files"])
    limit = Limit(keras_model, arrays, batch_sizes, min_images=min(n, 48))

    def l_round(label) -> int:
        """One L round; returns its index in the rounds."""
        print(f"  L ({label}): " + ", ".join(f"bs {b}: {v:.2f}"
                                            for b, v in limit.round().items()), flush=True)
        return len(next(iter(limit.per.values()))) - 1

    # E runs alternate between the sets, with an L round after each: every E run is
    # bracketed by two L rounds from the same minutes (the paired E/L below).
    last = l_round("round 1")
    e_runs = {k: [] for k in sets}
    s_segments = {k: [] for k in sets}
    s_slice = max(1, args.s_images // args.reps)
    for rep in range(args.reps):
        for k, s in sets.items():
            e = pipeline_rate(args.workdir, s, "default", [], {}, reps=1, **retry)
            print(f"  E {k} run {rep + 1}: {_f(e['E_img_s'])} img/s (by difference "
                  f"{_f(e['E_diff_img_s'])}), peak {e['peak_mib']:.0f} MiB, other cores "
                  f"{e['other_cores']:.2f}", flush=True)
            after = l_round(f"after E {k} run {rep + 1}")
            e_runs[k].append((e, [last, after]))
            last = after
            # S on this set's next slice of images, in the same minutes as this E run
            seg = measure_2020_way(keras_model, s["files"][rep * s_slice:(rep + 1) * s_slice])
            s_segments[k].append(seg)
            print(f"  S {k} slice {rep + 1}: {seg['S_img_s']:.2f} img/s", flush=True)
    for k, s in sets.items():
        e = _combine(s, "default", [], {}, [r for x, _ in e_runs[k] for r in x["runs"]])
        e["discarded_runs"] = [r for x, _ in e_runs[k] for r in x["discarded_runs"]]
        e["l_rounds_around"] = [rounds for x, rounds in e_runs[k] for _ in x["runs"]]
        res["E"][k] = e
        print(f"  E {k}: {_f(e['E_img_s'])} img/s (runs {[_f(x) for x in e['E_window_each']]};"
              f" by difference {[_f(x) for x in e['E_diff_each']]})", flush=True)

    for k, segs in s_segments.items():
        res["S"][k] = {"S_img_s": float(np.median([g["S_img_s"] for g in segs])),
                       "S_each": [g["S_img_s"] for g in segs],
                       "images": sum(g["images"] for g in segs),
                       "other_cores": max(g["other_cores"] for g in segs)}
        print(f"  S {k}: {res['S'][k]['S_img_s']:.2f} img/s (median of the slices)", flush=True)
    res["L"] = limit.result()
    pair_with_l(res)
    print(f"  -> L = {res['L']['L_img_s']:.2f} img/s at bs {res['L']['best_batch_size']} "
          f"(median of {len(limit.per[res['L']['best_batch_size']])} rounds; best round "
          f"{res['L']['L_best_round_img_s']:.2f})", flush=True)

    if args.levers:
        lv = res["levers"] = {"pipeline": {}, "decode": {}}
        print("\n-- levers: decode", flush=True)
        for k, s in sets.items():
            lv["decode"][k] = decode_lever(s, limit=min(n, 32))
            print(f"  {k}: {json.dumps(lv['decode'][k])}", flush=True)
        print("\n-- levers: forward pass variants", flush=True)
        # Many short rounds: each ratio compares measurements seconds apart, which the
        # VM's drift over minutes affects less than a few long rounds.
        lv["model"] = model_levers(keras_model, arrays, res["L"]["best_batch_size"], rounds=12)
        print("  " + json.dumps(lv["model"]["img_s"]), flush=True)
        lv["bf16"] = bf16_lever(keras_model, arrays, res["L"]["best_batch_size"], rounds=2)
        print("  bf16: " + json.dumps({k: lv["bf16"][k] for k in ("img_s", "cosine_min")}),
              flush=True)
        print("\n-- levers: pipeline options", flush=True)
        wanted = [w.strip() for w in args.lever_configs.split(";")] if args.lever_configs else None
        unknown = set(wanted or ()) - {c[0] for c in PIPELINE_LEVERS}
        if unknown:
            raise SystemExit(f"unknown --lever_configs {sorted(unknown)}; known: "
                             + "; ".join(c[0] for c in PIPELINE_LEVERS))
        for k in [x for x in args.lever_sets.split(",") if x in sets]:
            configs = [("default", [], {})] + [
                c[:3] for c in PIPELINE_LEVERS
                if (c[0] in wanted if wanted else k in c[3])]
            # Interleaved (default, lever, lever, ..., default, lever, ...): each lever is
            # compared with default runs from the same minutes.
            # Odd repetitions run in reverse order, so no lever always follows the default.
            runs = {name: [] for name, _, _ in configs}
            for rep in range(args.lever_reps):
                for name, extra, env in (configs if rep % 2 == 0 else configs[::-1]):
                    e = pipeline_rate(args.workdir, sets[k], name, extra, env, reps=1,
                                      head=False, **retry)
                    runs[name].append(e)
                    print(f"  {k} {name}: E = {_f(e['E_img_s'])} img/s, peak "
                          f"{e['peak_mib']:.0f} MiB, start-up {_f(e['startup_s'], 1)} s, "
                          f"other {e['other_cores']:.2f}", flush=True)
            lv["pipeline"][k] = []
            for name, extra, env in configs:
                merged = _combine(sets[k], name, extra, env,
                                  [r for e in runs[name] for r in e["runs"]])
                merged["discarded_runs"] = [r for e in runs[name] for r in e["discarded_runs"]]
                lv["pipeline"][k].append(merged)

    res["elapsed_s"] = time.perf_counter() - t_start
    res["waited_for_quiet_s"] = C.QUIET["waited"]
    _save(res, args.out)
    return 0


def _save(res: dict, out: str) -> None:
    md = report(res)
    print("\n" + md)
    print(f"\n(total {res['elapsed_s']:.0f} s, of which {res['waited_for_quiet_s']:.0f} s waiting "
          "for other processes to quieten)")
    os.makedirs(out, exist_ok=True)
    C.write_json(os.path.join(out, "throughput.json"), res)
    settings = res["info"]["settings"]
    with open(os.path.join(out, "throughput.md"), "w") as f:
        f.write("## Throughput (`benchmarks/throughput.py"
                + (" --quick" if settings.get("quick") else "")
                + (" --levers" if settings.get("levers") else "") + "`)\n\n" + md + "\n")


if __name__ == "__main__":
    sys.exit(main())
