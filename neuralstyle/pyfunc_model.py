"""The pyfunc model contract: base64 photo + style in, base64 stylized photo out.

Runs the exported networks on onnxruntime (no torch at serving time). Heavy things (ONNX
sessions, the style catalog) load once in ``load_context``; ``predict`` is pure per row.
Logged as a model from code (``model_code.py``), so loading it unpickles no Python objects.
"""

from __future__ import annotations

import base64
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

from neuralstyle import imaging
from neuralstyle.config import DEFAULT_PARALLEL_PHOTOS, PARALLEL_PHOTOS_ENV
from neuralstyle.errors import StyleInputError
from neuralstyle.styles import Catalog, Resolved

ARTIFACT_KEY = "networks"
IDENTITY_FILE = "identity.json"  # {"fingerprint": ...}: the registry tags the version with the same
OUTPUT_COLUMNS = ["image", "width", "height", "style", "model"]
MAX_SIZE_LIMIT = 2048  # ~0.5 GB per 32-channel activation at 2048^2: keeps a server alive
SHRINK_ABOVE_PIXELS = 1024 * 1024  # larger runs give onnxruntime's arena memory back
SIZE_MULTIPLE = 4  # two stride-2 convolutions, then two x2 upsamplings
DEFAULT_PARAMS: dict[str, Any] = {
    "max_size": 1024,
    "strength": 1.0,
    "preserve_color": False,
    "format": "jpeg",
    "quality": 90,
}


@dataclass(frozen=True)
class Params:
    """Validated per-request parameters."""

    max_size: int
    strength: float
    preserve_color: bool
    format: str
    quality: int

    @classmethod
    def parse(cls, params: dict[str, Any] | None) -> Params:
        merged = {**DEFAULT_PARAMS, **{k: v for k, v in (params or {}).items() if v is not None}}
        unknown = sorted(set(merged) - set(DEFAULT_PARAMS))
        if unknown:
            raise StyleInputError(
                f"unknown params {unknown}: accepted are {', '.join(DEFAULT_PARAMS)}"
            )
        try:
            max_size = int(merged["max_size"])
            strength = float(merged["strength"])
            quality = int(merged["quality"])
        except (TypeError, ValueError) as exc:
            raise StyleInputError(f"params: {exc}") from None
        fmt = str(merged["format"]).lower().replace("jpg", "jpeg")
        if not 0 < max_size <= MAX_SIZE_LIMIT:
            raise StyleInputError(
                f"param max_size={max_size} must be in 1..{MAX_SIZE_LIMIT} (longest side in px)"
            )
        if not 0.0 <= strength <= 1.0:
            raise StyleInputError(f"param strength={strength} must be in 0..1")
        if fmt not in imaging.FORMATS:
            raise StyleInputError(
                f"param format={merged['format']!r} must be one of {', '.join(imaging.FORMATS)}"
            )
        if not 1 <= quality <= 100:
            raise StyleInputError(f"param quality={quality} must be in 1..100")
        preserve = merged["preserve_color"]
        if isinstance(preserve, str):
            preserve = preserve.strip().lower() in ("1", "true", "yes")
        return cls(max_size, strength, bool(preserve), fmt, quality)


class Engine:
    """ONNX sessions for the multi-style network and any extra single-style networks."""

    def __init__(self, root: str | Path) -> None:
        import onnxruntime as ort

        root = Path(root)
        self.catalog = Catalog.load(root / "catalog.json")
        identity = root / IDENTITY_FILE  # absent in versions packaged before lineage existed
        self.fingerprint = json.loads(identity.read_text())["fingerprint"] if identity.is_file() else ""
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = ["CPUExecutionProvider"]
        self.multistyle = ort.InferenceSession(
            str(root / self.catalog.multistyle_file), options, providers=providers
        )
        self.networks = {
            name: ort.InferenceSession(str(root / info["file"]), options, providers=providers)
            for name, info in self.catalog.networks.items()
        }
        # onnxruntime's CPU arena keeps its peak forever (~1 GB after one 2048 px run, 3 GB seen
        # in a server). Runs above the default size hand it back; default-size runs keep the
        # arena, which is ~25% faster at 1024 px than no arena.
        self.shrink_arena = ort.RunOptions()
        self.shrink_arena.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    def run(self, rgb: np.ndarray, style: Resolved) -> np.ndarray:
        """Stylize RGB [H, W, 3] in 0..1 at its own size; the output has the input's size.

        The networks halve the image twice and double it twice, so a side that is not a
        multiple of 4 is reflect-padded up to one (bottom and right, as the original pipeline
        does) and the result cropped back. Running it unpadded and cropping would stretch the
        content by up to ~1.5 px toward the far edges.
        """
        height, width = rgb.shape[:2]
        padded = pad_to_multiple(rgb, SIZE_MULTIPLE)
        x = np.ascontiguousarray(padded.transpose(2, 0, 1)[None], dtype=np.float32)
        options = self.shrink_arena if x.shape[2] * x.shape[3] > SHRINK_ABOVE_PIXELS else None
        if style.network is not None:
            out = self.networks[style.network].run(None, {"image": x}, options)[0]
        else:
            feeds = {"image": x, "style_weights": style.weights}
            out = self.multistyle.run(None, feeds, options)[0]
        return out[0, :, :height, :width].transpose(1, 2, 0)


def pad_to_multiple(rgb: np.ndarray, multiple: int) -> np.ndarray:
    """Reflect-pad [H, W, C] at the bottom and right so both sides are multiples of ``multiple``."""
    pad_h, pad_w = (-rgb.shape[0]) % multiple, (-rgb.shape[1]) % multiple
    if not (pad_h or pad_w):
        return rgb
    return np.pad(rgb, ((0, pad_h), (0, pad_w), (0, 0)), mode="reflect")


def stylize_row(engine: Engine, image_b64: str, style_spec: str, params: Params, what: str) -> dict:
    """One request row: decode, check, resize, stylize, blend, encode."""
    style = engine.catalog.resolve(str(style_spec) if isinstance(style_spec, int) else style_spec)
    original = imaging.decode_image(imaging.b64decode(image_b64, what), what, params.max_size)
    original = imaging.fit_within(original, params.max_size, what)  # modes decode did not fit
    out = engine.run(original, style)
    if params.preserve_color:
        out = imaging.preserve_colors(out, original)
    if params.strength < 1.0:
        out = params.strength * out + (1.0 - params.strength) * original
    encoded = imaging.encode_image(out, params.format, params.quality)
    return {
        "image": base64.b64encode(encoded).decode("ascii"),
        "width": int(out.shape[1]),
        "height": int(out.shape[0]),
        "style": style.label,
        "model": engine.fingerprint,
    }


def parallel_photos() -> int:
    """``STYLIZE_PARALLEL_PHOTOS`` (default 2): bounds the decode/run memory of a busy server."""
    text = os.environ.get(PARALLEL_PHOTOS_ENV, "").strip() or str(DEFAULT_PARALLEL_PHOTOS)
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{PARALLEL_PHOTOS_ENV}={text!r} must be a whole number >= 1 "
                         f"(photos stylized at once; default {DEFAULT_PARALLEL_PHOTOS})")
    return int(text)


class StyleTransferModel(mlflow.pyfunc.PythonModel):
    """``models:/style-transfer@champion``: see DESIGN.md, "The model contract"."""

    def load_context(self, context) -> None:
        self.engine = Engine(context.artifacts[ARTIFACT_KEY])
        # The server runs predict in up to min(32, cpus + 4) threads at once; a decoded photo
        # near Pillow's limit alone peaks near 2 GB, so only a few are in memory at a time.
        self.slots = threading.BoundedSemaphore(parallel_photos())

    def predict(
        self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        # pd.DataFrame as the hint: MLflow validates against the logged signature instead.
        missing = [c for c in ("image", "style") if c not in model_input.columns]
        if missing:
            raise StyleInputError(
                f"input is missing column(s) {missing}: expected 'image' (base64) and 'style'"
            )
        parsed = Params.parse(params)
        rows = []
        for i, row in enumerate(model_input.itertuples(index=False)):
            with self.slots:  # per row, so one many-row request cannot hold every slot
                rows.append(stylize_row(self.engine, row.image, row.style, parsed,
                                        what=f"image (row {i})"))
        return pd.DataFrame(rows, columns=OUTPUT_COLUMNS)
