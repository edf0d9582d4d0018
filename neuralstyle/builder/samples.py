"""Real sample photos bundled in the scikit-image wheel (no network), for the demo and tests."""

from __future__ import annotations

import io

import numpy as np

SAMPLES = ("astronaut", "chelsea", "coffee", "rocket")
LARGE_PHOTO = "retina"  # 1411x1411, the only bundled photo above 1024 px (full-resolution checks)
# Real textures and colourful images bundled in scikit-image, used as style images ("paintings").
PAINTINGS = ("hubble_deep_field", "immunohistochemistry", "brick", "gravel", "grass")


def sample_rgb(name: str = "chelsea") -> np.ndarray:
    """A bundled photo as uint8 RGB [H, W, 3]."""
    from skimage import data

    if name not in (*SAMPLES, LARGE_PHOTO):
        raise ValueError(f"sample {name!r} is not one of {', '.join((*SAMPLES, LARGE_PHOTO))}")
    return np.ascontiguousarray(getattr(data, name)()[..., :3])


def sample_jpeg(name: str = "chelsea", quality: int = 95) -> bytes:
    """A bundled photo encoded as JPEG bytes."""
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(sample_rgb(name)).save(out, "JPEG", quality=quality)
    return out.getvalue()


def sample_painting(name: str = "hubble_deep_field") -> np.ndarray:
    """A bundled texture or colourful image as uint8 RGB [H, W, 3] (grey ones stacked to RGB)."""
    from skimage import data

    if name not in PAINTINGS:
        raise ValueError(f"painting {name!r} is not one of {', '.join(PAINTINGS)}")
    rgb = getattr(data, name)()
    if rgb.ndim == 2:
        rgb = np.stack([rgb] * 3, axis=-1)
    return np.ascontiguousarray(rgb[..., :3])


def encode(rgb: np.ndarray, fmt: str = "PNG") -> bytes:
    """uint8 RGB -> encoded image bytes (PNG by default: lossless, so parity is exact input)."""
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(rgb).save(out, fmt)
    return out.getvalue()


def mosaic(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A seeded ``width`` x ``height`` mosaic of the bundled photos, each scaled 0.6-1.6x and
    maybe mirrored: the full-resolution photos (to 45 MP) that no bundled photo is."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    photos = [Image.fromarray(sample_rgb(name)) for name in (*SAMPLES, LARGE_PHOTO)]
    canvas = Image.new("RGB", (width, height))
    y = 0
    while y < height:
        x, row_height = 0, 0
        while x < width:
            img = photos[int(rng.integers(len(photos)))]
            scale = float(rng.uniform(0.6, 1.6))
            img = img.resize((max(32, int(img.width * scale)), max(32, int(img.height * scale))),
                             Image.Resampling.BILINEAR)
            if rng.random() < 0.5:
                img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            canvas.paste(img, (x, y))
            x += img.width
            row_height = max(row_height, img.height)
        y += row_height
    return np.asarray(canvas)
