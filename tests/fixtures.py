"""Fixture images made in code: every mode, EXIF rotation, broken files."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from tools.samples import jpeg_bytes, photo_like


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def jpeg(width=320, height=240, seed=0, **kw) -> bytes:
    return jpeg_bytes(width, height, seed, **kw)


def png(width=320, height=240, seed=0) -> bytes:
    return encode(Image.fromarray(photo_like(width, height, seed)), "PNG")


def halves(width=300, height=200, left=(255, 0, 0), right=(0, 0, 255)) -> Image.Image:
    """Left half one colour, right half another: orientation is easy to check."""
    arr = np.zeros((height, width, 3), np.uint8)
    arr[:, : width // 2] = left
    arr[:, width // 2 :] = right
    return Image.fromarray(arr)


def exif_rotated_jpeg(orientation: int = 6) -> bytes:
    img = halves()
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(img, "JPEG", quality=95, exif=exif.tobytes())


def truncated_jpeg() -> bytes:
    data = jpeg(640, 480)
    return data[: len(data) // 2]


# A Dataflow job built offline (`--dry_run`): what the graph and option tests launch.
DATAFLOW_DRY_RUN = [
    "--runner",
    "DataflowRunner",
    "--dry_run",
    "True",
    "--project",
    "my-project",
    "--region",
    "us-central1",
    "--temp_location",
    "gs://my-temp-bucket/tmp",
]
