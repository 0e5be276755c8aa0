"""Synthetic photo-like images and broken files for tests, benchmarks and demos.

A developer tool, not part of the installed package (Dataflow workers do not need it):
run it from the repository root, `.venv/bin/python tools/samples.py DIR --count N
[--with-bad]`, or import `photo_like` from tests and benchmarks. The images are
generated, so any number of any size can be made without downloading anything."""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Sequence

import numpy as np
from PIL import Image

from streaming.config import cli


def photo_like(width: int, height: int, seed: int) -> np.ndarray:
    """An RGB uint8 image with smooth gradients, soft shapes and sensor-like noise,
    so JPEG sizes and decode costs resemble real photos."""
    rng = np.random.default_rng(seed)
    small_w, small_h = max(2, width // 32), max(2, height // 32)
    coarse = rng.integers(0, 256, (small_h, small_w, 3), dtype=np.uint8)
    base = np.asarray(
        Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.int16
    )
    yy, xx = np.mgrid[0:height, 0:width]
    for _ in range(3):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        r = rng.uniform(0.1, 0.35) * min(width, height)
        mask = ((xx - cx) ** 2 + (yy - cy) ** 2) < r * r
        base[mask] = (base[mask] * 0.4 + rng.integers(0, 256, 3) * 0.6).astype(np.int16)
    noise = rng.normal(0, 6, (height, width, 3)).astype(np.int16)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def jpeg_bytes(width: int, height: int, seed: int, quality: int = 92, **save_args) -> bytes:
    """A `photo_like` image encoded as JPEG, for code that uploads bytes rather than files."""
    buf = io.BytesIO()
    Image.fromarray(photo_like(width, height, seed)).save(buf, "JPEG", quality=quality, **save_args)
    return buf.getvalue()


def write_samples(
    directory: str, count: int, width: int, height: int, seed: int = 0, quality: int = 90
) -> list[str]:
    """Writes `count` JPEGs (and, for variety, every 4th as PNG) into `directory`."""
    os.makedirs(directory, exist_ok=True)
    paths = []
    for i in range(count):
        arr = photo_like(width, height, seed + i)
        ext = "png" if i % 4 == 3 else "jpg"
        path = os.path.join(directory, f"sample-{seed + i:04d}.{ext}")
        Image.fromarray(arr).save(path, quality=quality) if ext == "jpg" else Image.fromarray(
            arr
        ).save(path)
        paths.append(path)
    return paths


def write_bad_files(directory: str) -> list[str]:
    """Hostile and broken files, one per dead-letter reason the decoder knows, for demos
    and the hardening run (see docs/reliability.md)."""
    import struct
    import zlib

    def png_header(width: int, height: int) -> bytes:
        def chunk(kind: bytes, data: bytes) -> bytes:
            return (
                struct.pack(">I", len(data))
                + kind
                + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
            )

        return (
            b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b"")
        )

    good_jpeg = jpeg_bytes(640, 480, 7, quality=90)
    files = {
        "bad/empty.jpg": b"",
        "bad/truncated.jpg": good_jpeg[: len(good_jpeg) // 2],
        "bad/text.jpg": b"just some text, not a JPEG\n",
        "bad/page.jpg": b"<!doctype html><html><body>404 Not Found</body></html>",
        "bad/drawing.jpg": b"<svg xmlns='http://www.w3.org/2000/svg'><rect/></svg>",
        "bad/report.jpg": b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\n",
        "bad/bomb.png": png_header(100_000, 100_000),
        "bad/huge.png": png_header(12_000, 12_000),
        "bad/random.png": bytes(np.random.default_rng(0).integers(0, 256, 4096, np.uint8)),
    }
    paths = []
    for name, data in files.items():
        path = os.path.join(directory, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.ArgumentParser(prog="tools/samples.py", description=__doc__)
    parser.add_argument("directory", type=str, help="Folder to write into.")
    parser.add_argument("--count", type=int, default=24, help="Number of images.")
    parser.add_argument("--width", type=int, default=640, help="Width in pixels.")
    parser.add_argument("--height", type=int, default=480, help="Height in pixels.")
    parser.add_argument("--seed", type=int, default=0, help="First seed.")
    parser.add_argument(
        "--with-bad", action="store_true", help="Also write broken and hostile files under bad/."
    )
    args = parser.parse_args(argv)
    paths = write_samples(args.directory, args.count, args.width, args.height, args.seed)
    print(f"wrote {len(paths)} images to {args.directory}")
    if args.with_bad:
        print(f"wrote {len(write_bad_files(args.directory))} bad files to {args.directory}/bad")
    return 0


if __name__ == "__main__":
    sys.exit(main())
