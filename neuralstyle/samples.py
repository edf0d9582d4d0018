"""Real sample photos bundled in the scikit-image wheel (no network), for the demo and tests."""

from __future__ import annotations

import io

import numpy as np

SAMPLES = ("astronaut", "chelsea", "coffee", "rocket")


def sample_rgb(name: str = "chelsea") -> np.ndarray:
    """A bundled photo as uint8 RGB [H, W, 3]."""
    from skimage import data

    if name not in SAMPLES:
        raise ValueError(f"sample {name!r} is not one of {', '.join(SAMPLES)}")
    return np.ascontiguousarray(getattr(data, name)()[..., :3])


def sample_jpeg(name: str = "chelsea", quality: int = 95) -> bytes:
    """A bundled photo encoded as JPEG bytes."""
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(sample_rgb(name)).save(out, "JPEG", quality=quality)
    return out.getvalue()
