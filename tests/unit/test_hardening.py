"""Hostile images and messages: every input gives an array/record or a dead-letter
reason, never an uncaught exception."""

import io
import json
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import schemas
from streaming.records import DeadLetter, ImageRef, Rejected, redact
from streaming.sources.notifications import parse_notification
from streaming.stages.filters import FilterConfig, bucket_allowed
from streaming.stages.load import decode_image
from tests import fixtures


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG that declares huge dimensions (a decompression bomb's header)."""

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    "size, reason",
    [
        ((100_000, 100_000), "decompression_bomb"),  # > Pillow's hard limit: refused at open()
        ((12_000, 12_000), "too_many_pixels"),  # 144 MP: our limit, before decoding
    ],
)
def test_huge_declared_dimensions_are_refused_before_decoding(size, reason):
    data = png_header_only(*size)
    assert len(data) < 200
    with pytest.raises(Rejected) as e:
        decode_image(data)
    assert e.value.reason == reason


def test_multi_page_tiff_uses_the_first_page():
    pages = [Image.new("RGB", (64, 48), c) for c in ((0, 200, 0), (200, 0, 0))]
    data = fixtures.encode(pages[0], "TIFF", save_all=True, append_images=pages[1:])
    out = decode_image(data)
    assert out.format == "TIFF" and (out.width, out.height) == (64, 48)
    np.testing.assert_allclose(out.pixels.reshape(-1, 3).mean(0), (0, 200, 0), atol=2)


def test_animated_webp_uses_the_first_frame():
    frames = [Image.new("RGB", (32, 32), c) for c in ((0, 0, 250), (250, 250, 0))]
    data = fixtures.encode(
        frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True
    )
    out = decode_image(data)
    assert out.format == "WEBP"
    np.testing.assert_allclose(out.pixels.reshape(-1, 3).mean(0), (0, 0, 250), atol=3)


def test_format_comes_from_the_bytes_not_the_name_or_content_type():
    assert decode_image(fixtures.png()).format == "PNG"
    assert decode_image(fixtures.jpeg()).format == "JPEG"


@pytest.mark.parametrize(
    "data",
    [
        b"\x00\x00\x00\x1cftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 100,  # HEIC
        b"<?xml version='1.0'?><svg xmlns='http://www.w3.org/2000/svg'/>",
        b"GIF89a" + b"\xff" * 20,
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 30,
        b"\xff\xd8\xff\xe0" + b"\x00" * 40,
    ],
)
def test_formats_pillow_cannot_decode_are_dead_lettered(data):
    with pytest.raises(Rejected) as e:
        decode_image(data)
    assert e.value.reason in {"not_an_image", "decode_error", "truncated_image"}


def test_cmyk_jpeg_and_one_bit_and_sixteen_bit_inputs():
    for img, fmt in (
        (Image.new("CMYK", (40, 40), (0, 0, 0, 255)), "JPEG"),
        (Image.new("1", (40, 40), 0), "PNG"),
        (Image.new("I;16", (40, 40), 1000), "PNG"),
    ):
        out = decode_image(fixtures.encode(img, fmt))
        assert out.pixels.shape == (224, 224, 3)
        assert out.pixels.max() < 20  # all three are (near) black


VALID = [
    fixtures.jpeg(96, 64, seed=1),
    fixtures.png(96, 64, seed=2),
    fixtures.encode(Image.new("RGBA", (30, 20), (1, 2, 3, 4)), "GIF"),
    fixtures.exif_rotated_jpeg(),
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    base=st.sampled_from(VALID),
    cut=st.integers(0, 5000),
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), max_size=8),
    junk=st.binary(max_size=64),
)
def test_fuzz_decode_gives_an_array_or_a_reason(base, cut, flips, junk):
    data = bytearray(base[: max(0, len(base) - cut)] + junk)
    for pos, xor in flips:
        if data:
            data[pos % len(data)] ^= xor
    try:
        out = decode_image(bytes(data), max_pixels=4_000_000)
    except Rejected as e:
        assert e.reason and str(e)
    else:
        assert out.pixels.shape == (224, 224, 3) and out.pixels.dtype == np.uint8


ATTRS = schemas.notification_contract()["example"]["attributes"]
DATA = json.dumps(schemas.notification_contract()["example"]["data"]).encode()
text = st.text(max_size=40)


@settings(max_examples=400, deadline=None)
@given(
    data=st.one_of(
        st.binary(max_size=200),
        st.just(DATA),
        st.builds(
            lambda d: json.dumps(d).encode(),
            st.dictionaries(text, st.one_of(text, st.integers(), st.none()), max_size=6),
        ),
    ),
    attrs=st.one_of(
        st.just(ATTRS),
        st.dictionaries(st.sampled_from(list(ATTRS) + ["x"]), text, max_size=8),
        st.builds(
            lambda d: {**ATTRS, **d},
            st.dictionaries(st.sampled_from(list(ATTRS)), text, max_size=3),
        ),
    ),
)
def test_fuzz_parse_gives_a_record_or_a_reason(data, attrs):
    try:
        ref = parse_notification(data, attrs)
    except Rejected as e:
        assert e.reason
    else:
        assert ref.bucket and ref.name and ref.generation >= 0


def test_dead_letters_never_keep_credentials_or_signatures():
    signed = (
        "https://storage.googleapis.com/b/o.jpg?X-Goog-Algorithm=GOOG4-RSA-SHA256"
        "&X-Goog-Credential=sa%40p.iam&X-Goog-Signature=0badc0ffee"
    )
    row = DeadLetter(
        "load",
        "read_error",
        f"403 for {signed} (Authorization: Bearer ya29.a0Af)",
        ref=ImageRef("b", "o.jpg", 1),
        raw='{"access_token=abc&x": 1}',
    ).to_row()
    for secret in ("sa%40p.iam", "0badc0ffee", "ya29.a0Af", "abc&"):
        assert secret not in row["error"] + row["raw"]
    assert "X-Goog-Signature=REDACTED" in row["error"]
    assert redact("plain error text") == "plain error text"


def test_only_configured_buckets_are_read():
    cfg = FilterConfig(allowed_buckets=("photos",))
    assert bucket_allowed(ImageRef("photos", "a.jpg", 1), cfg)
    assert not bucket_allowed(ImageRef("secrets", "a.jpg", 1), cfg)
    assert bucket_allowed(ImageRef("secrets", "a.jpg", 1), FilterConfig())


def test_ycck_marked_jpeg_decodes_to_rgb():
    """A JPEG whose Adobe marker says YCCK (transform 2), as Photoshop writes CMYK
    photos: Pillow opens it as CMYK and the RGB rule applies."""
    data = bytearray(fixtures.encode(Image.new("CMYK", (48, 32), (10, 200, 30, 0)), "JPEG"))
    at = data.find(b"Adobe")
    assert at > 0
    data[at + 11] = 2  # APP14 transform byte: 0 = CMYK, 2 = YCCK
    with Image.open(io.BytesIO(bytes(data))) as img:
        assert img.mode == "CMYK" and img.info.get("adobe_transform") == 2
    out = decode_image(bytes(data))
    assert out.pixels.shape == (224, 224, 3) and out.format == "JPEG"
