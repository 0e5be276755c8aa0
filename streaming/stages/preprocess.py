"""Decode image bytes into the model's 224x224 RGB input: the pure core of the load stage.

The pure core is `decode_image`: bytes -> uint8 (224, 224, 3). It is careful with what
people upload: EXIF orientation is applied; every Pillow mode becomes RGB by one rule
(alpha is composited over white, 16-bit channels keep their high byte, CMYK/YCCK go
through Pillow's conversion); pixel counts are checked from the header before any
decoding; JPEGs are DCT-scaled (`draft`) to just above the size the resize needs, so a
12-megapixel photo costs a fraction of a full decode. Animated images use their first
frame. ResNet50's `preprocess_input` is applied later, per batch, inside the model
(see `streaming/model/inference.py`): passing uint8 between stages keeps elements 4x smaller.
"""

from __future__ import annotations

import dataclasses
import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from streaming import failures
from streaming.config.flags import DEFAULT_MAX_PIXELS, RESIZE_POLICIES
from streaming.model.spec import INPUT_SIZE
from streaming.records import Rejected

# ResNet's evaluation crop: resize the short side to 256, keep the central 224.
CENTER_CROP_FRACTION = INPUT_SIZE / 256
BACKGROUND = (255, 255, 255)  # alpha is composited over white

# We enforce our own pixel limit before decoding; Pillow's warning/raise thresholds
# (89 / 179 MP) would only warn below ours, so silence the warning and keep the raise.
warnings.simplefilter("ignore", Image.DecompressionBombWarning)


@dataclasses.dataclass(frozen=True)
class DecodedImage:
    pixels: np.ndarray  # uint8 (224, 224, 3), RGB
    width: int  # original size, after EXIF orientation
    height: int
    format: str | None


def decode_image(
    data: bytes,
    *,
    policy: str = "center_crop",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    size: int = INPUT_SIZE,
) -> DecodedImage:
    """Decodes image bytes into the model's RGB input.

    Args:
      data: the encoded image.
      policy: `center_crop` (short side to 256/224 of the output, centre crop; the
        ResNet evaluation crop), `squash` (whole image, aspect ratio ignored) or `pad`
        (whole image, letterboxed on the white background).
      max_pixels: images with more pixels are refused before decoding.
      size: output side in pixels.

    Returns:
      The uint8 pixels and the original width, height and format.

    Raises:
      Rejected: `empty_object`, `not_an_image`, `too_many_pixels`,
        `decompression_bomb`, `truncated_image` or `decode_error`.
    """
    if policy not in RESIZE_POLICIES:
        raise ValueError(f"resize policy must be one of {RESIZE_POLICIES}, not {policy!r}")
    if not data:
        raise Rejected(failures.EMPTY_OBJECT, "object has zero bytes")
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise Rejected(failures.DECOMPRESSION_BOMB, str(e)) from None
    except UnidentifiedImageError:
        raise Rejected(
            failures.NOT_AN_IMAGE, "Pillow cannot identify the bytes as an image"
        ) from None
    except Exception as e:  # noqa: BLE001 - plugins raise anything on hostile headers
        raise Rejected(failures.NOT_AN_IMAGE, f"{type(e).__name__}: {e}") from None
    try:
        return _decode_opened(img, policy, max_pixels, size)
    except Rejected:
        raise
    except Image.DecompressionBombError as e:
        raise Rejected(failures.DECOMPRESSION_BOMB, str(e)) from None
    except (OSError, SyntaxError, EOFError) as e:
        reason = (
            failures.TRUNCATED_IMAGE
            if "truncat" in str(e).lower() or isinstance(e, EOFError)
            else failures.DECODE_ERROR
        )
        raise Rejected(reason, f"{type(e).__name__}: {e}") from None
    except Exception as e:  # noqa: BLE001 - a decoder bug must not kill the stream
        raise Rejected(failures.DECODE_ERROR, f"{type(e).__name__}: {e}") from None
    finally:
        img.close()


def _decode_opened(img: Image.Image, policy: str, max_pixels: int, size: int) -> DecodedImage:
    fmt = img.format
    width, height = img.size
    if width <= 0 or height <= 0:
        raise Rejected(failures.DECODE_ERROR, f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise Rejected(
            failures.TOO_MANY_PIXELS,
            f"{width}x{height} = {width * height} pixels > limit {max_pixels}",
        )
    orientation = img.getexif().get(0x0112, 1)
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    if fmt == "JPEG":
        # DCT scaling: decode at the smallest 1/2^k scale still at least as large as
        # the resize needs (the short side for center_crop, the long side otherwise).
        need = size / CENTER_CROP_FRACTION if policy == "center_crop" else size
        side = max(img.size) if policy == "pad" else min(img.size)
        scale = need / side
        img.draft("RGB", (max(1, int(img.size[0] * scale)), max(1, int(img.size[1] * scale))))
    img.load()
    img = ImageOps.exif_transpose(img)
    rgb = to_rgb(img)
    return DecodedImage(resize(rgb, policy, size), width, height, fmt)


def to_rgb(img: Image.Image) -> Image.Image:
    """Converts any Pillow mode to RGB.

    Alpha (RGBA, LA, PA, P with transparency) is composited over white; 16- and
    32-bit integer channels keep their high byte; float images are clipped to 0..255;
    1-bit, L, CMYK, YCbCr and LAB use Pillow's own conversion.
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # In place and in the source's own width (an int64 copy would hold 8 bytes a
        # pixel, see streaming/config/sizing.py).
        arr = np.array(img)
        if arr.dtype.kind == "i":
            np.clip(arr, 0, 65535, out=arr)
        arr >>= 8
        return Image.fromarray(arr.astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        arr = np.clip(np.nan_to_num(np.asarray(img)), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if mode == "P" and "transparency" in img.info or mode in ("PA", "LA", "La", "RGBa"):
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode == "RGBA":
        background = Image.new("RGB", img.size, BACKGROUND)
        background.paste(img, mask=img.getchannel("A"))
        return background
    return img.convert("RGB")


def resize(img: Image.Image, policy: str, size: int = INPUT_SIZE) -> np.ndarray:
    """Resizes an RGB image to (size, size, 3) uint8 by the given policy."""
    w, h = img.size
    if policy == "center_crop":
        side = min(w, h) * CENTER_CROP_FRACTION
        left, top = (w - side) / 2, (h - side) / 2
        out = img.resize((size, size), Image.BILINEAR, box=(left, top, left + side, top + side))
    elif policy == "squash":
        out = img.resize((size, size), Image.BILINEAR)
    else:
        scale = size / max(w, h)
        inner = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
        out = Image.new("RGB", (size, size), BACKGROUND)
        out.paste(inner, ((size - inner.size[0]) // 2, (size - inner.size[1]) // 2))
    return np.ascontiguousarray(np.asarray(out, dtype=np.uint8))
