"""Input checks a user hits first: every bad image gets one clear message naming it."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from neuralstyle.model import imaging
from neuralstyle.model.errors import StyleInputError


def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **kw)
    return out.getvalue()


def test_not_an_image(photos) -> None:
    with pytest.raises(StyleInputError, match=r"photo\.txt is not a JPEG/PNG/WebP image "
                                              r"\(got 12 bytes of text"):
        imaging.decode_image(b"hello world\n", "photo.txt")


def test_zero_bytes() -> None:
    with pytest.raises(StyleInputError, match=r"empty\.jpg is empty \(0 bytes\)"):
        imaging.decode_image(b"", "empty.jpg")


def test_truncated_jpeg(photos) -> None:
    data = photos["chelsea"]
    with pytest.raises(StyleInputError, match=r"cut\.jpg is truncated or corrupt"):
        imaging.decode_image(data[: len(data) // 2], "cut.jpg")


def test_too_small() -> None:
    with pytest.raises(StyleInputError, match=r"tiny\.png is too small: 31x100"):
        imaging.decode_image(encode(Image.new("RGB", (31, 100))), "tiny.png")


def test_decompression_bomb() -> None:
    bomb = encode(Image.new("1", (10_000, 10_000)))  # 100 MP, ~12 KB compressed
    assert len(bomb) < 100_000
    with pytest.raises(StyleInputError, match=r"bomb\.png is too large"):
        imaging.decode_image(bomb, "bomb.png")


def test_bad_base64() -> None:
    with pytest.raises(StyleInputError, match="image .row 0. is not valid base64"):
        imaging.b64decode("not base64!!", "image (row 0)")


@pytest.mark.parametrize("mode", ["RGBA", "P", "L", "CMYK", "LA", "I;16"])
def test_any_mode_becomes_rgb(mode: str) -> None:
    img = Image.new("RGB", (40, 50), (200, 100, 50)).convert(mode)
    rgb = imaging.decode_image(encode(img, "TIFF" if mode in ("CMYK", "I;16") else "PNG"), mode)
    assert rgb.shape == (50, 40, 3) and rgb.dtype == np.float32
    assert 0.0 <= rgb.min() and rgb.max() <= 1.0


def test_transparent_pixels_become_white() -> None:
    img = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    rgb = imaging.decode_image(encode(img), "clear.png")
    assert np.allclose(rgb, 1.0)


def test_exif_orientation_is_honoured() -> None:
    img = Image.new("RGB", (80, 40), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    rgb = imaging.decode_image(encode(img, "JPEG", exif=exif), "rotated.jpg")
    assert rgb.shape[:2] == (80, 40)


def test_fit_within_scales_down_only() -> None:
    big = np.zeros((300, 600, 3), np.float32)
    assert imaging.fit_within(big, 300, "x").shape == (150, 300, 3)
    assert imaging.fit_within(big, 2000, "x").shape == (300, 600, 3)
    with pytest.raises(StyleInputError, match="below 32"):
        imaging.fit_within(np.zeros((40, 4000, 3), np.float32), 1000, "strip.png")


@pytest.mark.parametrize(("mode", "fmt"), [("RGB", "JPEG"), ("L", "PNG"), ("CMYK", "TIFF")])
def test_early_downscale_gives_the_same_pixels(photos, mode: str, fmt: str) -> None:
    """Scaling 8-bit photos before the float conversion (to save memory) changes no pixel."""
    img = Image.open(io.BytesIO(photos["coffee"])).convert(mode)
    data = encode(img, fmt)
    early = imaging.decode_image(data, "coffee", max_size=256)
    late = imaging.fit_within(imaging.decode_image(data, "coffee"), 256, "coffee")
    assert early.shape == late.shape == (171, 256, 3)
    assert np.array_equal(imaging.to_uint8(early), imaging.to_uint8(late))


@pytest.mark.parametrize(("height", "width"), [(1, 1), (33, 47), (300, 451), (1024, 1024)])
def test_png_writer_is_lossless_and_readable(photos, height: int, width: int) -> None:
    """Our PNG writer (one thread below 1 MB, parallel slices above) decodes to the same pixels."""
    rng = np.random.default_rng(height)
    photo = np.asarray(Image.open(io.BytesIO(photos["astronaut"])).convert("RGB").resize((width, height)))
    for pixels in (photo, rng.integers(0, 256, (height, width, 3), dtype=np.uint8)):
        data = imaging.encode_png(pixels)
        img = Image.open(io.BytesIO(data))
        img.load()  # verifies every chunk CRC and the zlib Adler-32
        assert (img.format, img.mode, img.size) == ("PNG", "RGB", (width, height))
        assert np.array_equal(np.asarray(img), pixels)


def test_png_and_webp_are_smaller_than_raw(photos) -> None:
    rgb = imaging.decode_image(photos["astronaut"], "astronaut")
    raw = rgb.shape[0] * rgb.shape[1] * 3
    png = imaging.encode_image(rgb, "png", 90)
    webp = imaging.encode_image(rgb, "webp", 90)
    assert len(png) < 0.8 * raw and len(webp) < 0.2 * raw
    assert Image.open(io.BytesIO(webp)).format == "WEBP"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), imaging.to_uint8(rgb))


def test_a_45_megapixel_camera_photo_is_accepted() -> None:
    """8256x5504 (a full-frame camera): under the model's limit, decoded and fitted."""
    camera = encode(Image.new("1", (8256, 5504)))
    assert imaging.decode_pixels(camera, "camera.png", max_size=512).shape == (341, 512, 3)


def test_above_the_model_limit_is_refused_with_the_limit_named() -> None:
    over = encode(Image.new("1", (8193, 8193)))  # 67,125,249 px: just above 64 MiP
    with pytest.raises(StyleInputError, match=rf"over\.png is too large: .*{imaging.MAX_PIXELS}"):
        imaging.decode_pixels(over, "over.png")


def test_max_size_zero_is_the_photos_own_size_up_to_16k() -> None:
    from neuralstyle.model.contract import MAX_SIZE_LIMIT, Params

    assert imaging.fitted_size(5000, 3000, 0, "photo") is None
    assert imaging.fitted_size(20000, 1000, 0, "panorama") == (MAX_SIZE_LIMIT, 819)
    assert Params.parse({"max_size": 0}).max_size == 0
    assert Params.parse({"max_size": "16384"}).max_size == MAX_SIZE_LIMIT == 16384
    with pytest.raises(StyleInputError, match=r"max_size=16385 must be in 0\.\.16384"):
        Params.parse({"max_size": 16385})
