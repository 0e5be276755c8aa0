"""A burst of the largest allowed images through the local multi-process runner stays
within the peak memory that streaming/config/sizing.py (and docs/performance.md) budget for it."""

import json
import os
import time

import numpy as np
import pytest
from PIL import Image

from streaming.config import sizing
from tools import processes

ROOT = processes.ROOT
LAYOUTS = os.path.join(ROOT, "benchmarks", "results", "layouts.json")
WORKERS, DECODE_THREADS, WINDOW = 2, 2, 8
WIDTH, HEIGHT = 4000, 2000
MAX_PIXELS = WIDTH * HEIGHT  # every image is as large as the job allows
MAX_BYTES = 64 * 1024 * 1024


def process_mib() -> float:
    """One SDK process at work, measured: the multi-process layout's peak minus the
    single-process one's, over the extra processes (benchmarks/layouts.py)."""
    with open(LAYOUTS) as f:
        result = json.load(f)
    extra = result["settings"]["processes"] - 1
    return (
        result["summary"]["many"]["peak_rss_mib"] - result["summary"]["one"]["peak_rss_mib"]
    ) / extra


def largest_images(folder, count: int) -> None:
    """RGBA PNGs at the pixel limit: no DCT shortcut, the costliest conversion."""
    rng = np.random.default_rng(0)
    small = (rng.random((HEIGHT // 50, WIDTH // 50, 4)) * 255).astype(np.uint8)
    big = Image.fromarray(small, "RGBA").resize((WIDTH, HEIGHT), Image.NEAREST)
    first = os.path.join(folder, "big000.png")
    big.save(first, compress_level=1)
    data = open(first, "rb").read()
    for i in range(1, count):
        with open(os.path.join(folder, f"big{i:03d}.png"), "wb") as f:
            f.write(data)


@pytest.mark.slow
def test_a_burst_of_the_largest_images_stays_within_the_budget(tmp_path):
    images, out = tmp_path / "images", tmp_path / "out"
    images.mkdir()
    count = 2 * WORKERS * DECODE_THREADS  # every decode thread busy, twice over
    largest_images(str(images), count)
    argv = processes.python_module(
        "streaming.main",
        "--input_dir",
        str(images),
        "--output_dir",
        str(out),
        "--weights",
        "random:0",
        "--runner",
        "DirectRunner",
        "--direct_running_mode",
        "multi_processing",
        "--direct_num_workers",
        str(WORKERS),
        "--decode_threads",
        str(DECODE_THREADS),
        "--decode_window",
        str(WINDOW),
        "--max_pixels",
        str(MAX_PIXELS),
        "--max_bytes",
        str(MAX_BYTES),
    )
    peak = 0
    with processes.Child(argv) as child:
        while child.poll() is None:
            peak = max(peak, processes.tree_rss(child.pid))
            time.sleep(0.1)
        output = child.output()
    assert child.returncode == 0, output[-3000:]
    assert f"images embedded: {count}" in output, output[-3000:]
    # The launcher holds a model too (its start-up check): one more process at rest.
    budget = (
        sizing.peak_bytes(
            processes=WORKERS,
            harness_threads=1,
            decode_threads=DECODE_THREADS,
            decode_window=WINDOW,
            max_pixels=MAX_PIXELS,
            max_bytes=MAX_BYTES,
            base_mib=process_mib(),
        )
        + process_mib() * 2**20
    )
    print(f"peak {peak / 2**20:.0f} MiB, budget {budget / 2**20:.0f} MiB")
    assert peak <= budget, f"peak {peak / 2**20:.0f} MiB > budget {budget / 2**20:.0f} MiB"
