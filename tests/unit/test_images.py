import io

import numpy as np
import pytest
from PIL import Image

from streaming.records import ImageRef, Rejected
from streaming.stages import load
from streaming.stages.load import decode_image
from tests import fixtures


def decoded(img: Image.Image, fmt="PNG", **kw):
    return decode_image(fixtures.encode(img, fmt, **kw))


def test_jpeg_becomes_224_rgb_uint8_with_original_size():
    out = decode_image(fixtures.jpeg(640, 480))
    assert out.pixels.shape == (224, 224, 3) and out.pixels.dtype == np.uint8
    assert (out.width, out.height, out.format) == (640, 480, "JPEG")


@pytest.mark.parametrize(
    "mode, colour, expected",
    [
        ("L", 128, (128, 128, 128)),
        ("1", 1, (255, 255, 255)),
        ("RGB", (10, 200, 30), (10, 200, 30)),
        ("CMYK", (0, 255, 255, 0), (255, 0, 0)),
        ("I;16", 65535, (255, 255, 255)),
        ("I;16", 32768, (128, 128, 128)),
        ("I", 65535, (255, 255, 255)),
        ("F", 77.0, (77, 77, 77)),
    ],
)
def test_every_mode_becomes_rgb(mode, colour, expected):
    fmt = {"CMYK": "JPEG", "I;16": "PNG", "I": "TIFF", "F": "TIFF"}.get(mode, "PNG")
    out = decoded(Image.new(mode, (50, 40), colour), fmt)
    assert out.pixels.shape == (224, 224, 3)
    np.testing.assert_allclose(out.pixels.reshape(-1, 3).mean(0), expected, atol=3)


@pytest.mark.parametrize("mode, colour", [("RGBA", (255, 0, 0, 0)), ("LA", (0, 0))])
def test_transparent_pixels_are_composited_over_white(mode, colour):
    out = decoded(Image.new(mode, (30, 30), colour))
    assert (out.pixels == 255).all()


def test_half_transparent_red_over_white_is_pink():
    out = decoded(Image.new("RGBA", (30, 30), (255, 0, 0, 128)))
    np.testing.assert_allclose(out.pixels[100, 100], (255, 127, 127), atol=2)


def test_palette_with_transparency_uses_white_for_the_transparent_index():
    img = Image.new("P", (40, 40), 0)
    img.putpalette([0, 0, 0] + [0, 255, 0] * 255)
    img.paste(1, (20, 0, 40, 40))  # right half green, left half index 0 (transparent)
    out = decoded(img, "PNG", transparency=0)
    np.testing.assert_array_equal(out.pixels[112, 10], (255, 255, 255))
    np.testing.assert_array_equal(out.pixels[112, 210], (0, 255, 0))


def test_gif_with_transparency_and_first_frame_of_animations():
    frames = [Image.new("RGB", (20, 20), c) for c in ((255, 0, 0), (0, 0, 255))]
    data = fixtures.encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    out = decode_image(data)
    assert out.format == "GIF"
    assert out.pixels[..., 0].mean() > 200 and out.pixels[..., 2].mean() < 50


@pytest.mark.parametrize(
    "orientation, top, bottom",
    [
        (6, (255, 0, 0), (0, 0, 255)),  # rotate 90 CW for display: left half -> top
        (8, (0, 0, 255), (255, 0, 0)),  # rotate 90 CCW: right half -> top
    ],
)
def test_exif_orientation_is_applied(orientation, top, bottom):
    out = decode_image(fixtures.exif_rotated_jpeg(orientation))
    assert (out.width, out.height) == (200, 300)  # as displayed
    np.testing.assert_allclose(out.pixels[20, 112], top, atol=20)
    np.testing.assert_allclose(out.pixels[200, 112], bottom, atol=20)


def test_without_exif_the_halves_stay_left_and_right():
    out = decoded(fixtures.halves(), "JPEG", quality=95)
    np.testing.assert_allclose(out.pixels[112, 10], (255, 0, 0), atol=20)
    np.testing.assert_allclose(out.pixels[112, 214], (0, 0, 255), atol=20)


def test_center_crop_keeps_the_middle_squash_and_pad_keep_everything():
    # 400x100: red 0-100, green 100-300, blue 300-400
    arr = np.zeros((100, 400, 3), np.uint8)
    arr[:, :100] = (255, 0, 0)
    arr[:, 100:300] = (0, 255, 0)
    arr[:, 300:] = (0, 0, 255)
    data = fixtures.encode(Image.fromarray(arr), "PNG")
    crop = decode_image(data, policy="center_crop").pixels
    assert (crop[..., 1] > 250).all()  # only the green middle survives
    squash = decode_image(data, policy="squash").pixels
    np.testing.assert_array_equal(squash[112, 5], (255, 0, 0))
    np.testing.assert_array_equal(squash[112, 218], (0, 0, 255))
    pad = decode_image(data, policy="pad").pixels
    np.testing.assert_array_equal(pad[5, 112], (255, 255, 255))  # letterbox band
    np.testing.assert_array_equal(pad[112, 112], (0, 255, 0))


@pytest.mark.parametrize("size", [(1, 500), (500, 1), (1, 1), (3000, 2)])
def test_one_pixel_wide_or_tall_images(size):
    out = decoded(Image.new("RGB", size, (9, 99, 199)))
    np.testing.assert_allclose(out.pixels.reshape(-1, 3).mean(0), (9, 99, 199), atol=1)


@pytest.mark.slow
def test_jpeg_draft_decoding_matches_a_full_decode(monkeypatch):
    data = fixtures.jpeg(4000, 3000, seed=3)
    seen = []
    real_load = Image.Image.load

    def spy(self):
        seen.append(self.size)
        return real_load(self)

    monkeypatch.setattr(Image.Image, "load", spy)
    fast = decode_image(data).pixels
    monkeypatch.undo()
    assert seen and max(seen[0]) <= 1000  # decoded at 1/4 or less, not 4000x3000
    full = Image.open(io.BytesIO(data)).convert("RGB")
    slow = load.resize(full, "center_crop")
    assert np.abs(fast.astype(int) - slow.astype(int)).mean() < 3


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty_object"),
        (b"hello, I am text in a .jpg", "not_an_image"),
        (b"<html><body>404</body></html>", "not_an_image"),
        (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n", "not_an_image"),
        (fixtures.truncated_jpeg(), "truncated_image"),
    ],
)
def test_bad_bytes_are_rejected_with_a_reason(data, reason):
    with pytest.raises(Rejected) as e:
        decode_image(data)
    assert e.value.reason == reason


def test_pixel_limit_is_checked_before_decoding():
    data = fixtures.jpeg(400, 300)
    with pytest.raises(Rejected) as e:
        decode_image(data, max_pixels=400 * 300 - 1)
    assert e.value.reason == "too_many_pixels"
    assert decode_image(data, max_pixels=400 * 300).pixels.shape == (224, 224, 3)


def test_read_bytes_reports_missing_and_large_objects(tmp_path):
    with pytest.raises(Rejected) as e:
        load.read_bytes(str(tmp_path / "gone.jpg"), 100)
    assert e.value.reason == "object_gone"
    big = tmp_path / "big.jpg"
    big.write_bytes(b"x" * 101)
    with pytest.raises(Rejected) as e:
        load.read_bytes(str(big), 100)
    assert e.value.reason == "too_large"
    assert load.read_bytes(str(big), 101) == b"x" * 101


@pytest.mark.parametrize("size, ok", [(None, True), (100, True), (101, False)])
def test_one_size_check_for_declared_and_read_sizes(size, ok):
    if ok:
        load.check_size(size, 100)
        return
    with pytest.raises(Rejected) as e:
        load.check_size(size, 100)
    assert e.value.reason == "too_large" and "100-byte limit" in str(e.value)


def test_a_declared_size_over_the_limit_is_rejected_unread():
    def read(ref):
        raise AssertionError("read an object whose declared size is over the limit")

    ref, stage, decoded, error = load.load_image(
        ImageRef("b", "big.jpg", 1, size=101), read, "center_crop", 10**6, 100
    )
    assert (stage, decoded, error.reason) == ("load", None, "too_large")
