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

from neuralstyle import imaging, painting
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
        # Arbitrary style (any painting): {"predict": painting -> vector, "transform": photo}.
        self.arbitrary = {
            role: ort.InferenceSession(str(root / file), options, providers=providers)
            for role, file in self.catalog.arbitrary.items()
        }
        self.style_vectors = painting.StyleVectorCache()
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
        if style.style_vector is not None:
            feeds = {"image": x, "style_vector": style.style_vector.reshape(1, -1)}
            out = self.arbitrary["transform"].run(None, feeds, options)[0]
        elif style.network is not None:
            out = self.networks[style.network].run(None, {"image": x}, options)[0]
        else:
            feeds = {"image": x, "style_weights": style.weights}
            out = self.multistyle.run(None, feeds, options)[0]
        return out[0, :, :height, :width].transpose(1, 2, 0)

    def style_vector(self, square: np.ndarray) -> np.ndarray:
        """A painting prepared as [256, 256, 3] in 0..1 -> its style vector [100]."""
        if "predict" not in self.arbitrary:
            raise StyleInputError(
                f"this model version has no arbitrary-style networks: {painting.COLUMN} needs a "
                "version packaged with them (package_models.py)"
            )
        x = np.ascontiguousarray(square.transpose(2, 0, 1)[None], dtype=np.float32)
        return self.arbitrary["predict"].run(None, {"painting": x})[0].reshape(-1)


def pad_to_multiple(rgb: np.ndarray, multiple: int) -> np.ndarray:
    """Reflect-pad [H, W, C] at the bottom and right so both sides are multiples of ``multiple``."""
    pad_h, pad_w = (-rgb.shape[0]) % multiple, (-rgb.shape[1]) % multiple
    if not (pad_h or pad_w):
        return rgb
    return np.pad(rgb, ((0, pad_h), (0, pad_w), (0, 0)), mode="reflect")


def _given(value: Any) -> bool:
    """A cell that holds something (not None, NaN or blank)."""
    return value is not None and not (isinstance(value, float) and np.isnan(value)) and (
        not isinstance(value, str) or bool(value.strip())
    )


def resolve_style(engine: Engine, style_spec: Any, style_image: Any, row: str) -> Resolved:
    """The row's style: a painting (``style_image``) or a style spec; both at once is refused.

    A blank ``style_image`` cell beside a style name is no painting (mixed batches); a blank one
    with no style name is an empty painting, reported as such.
    """
    painted = _given(style_image) or (isinstance(style_image, str) and not _given(style_spec))
    if painted:
        if _given(style_spec):
            raise StyleInputError(
                f"request {row} gives both style {style_spec!r} and {painting.COLUMN}: send one "
                "(a painting is not mixed with a named style; leave style empty to use the painting)"
            )
        return painting.resolve_painting(style_image, engine.style_vector, engine.style_vectors,
                                         f"{painting.COLUMN} {row}")
    return engine.catalog.resolve(str(style_spec) if isinstance(style_spec, int) else style_spec)


def stylize_row(
    engine: Engine, image_b64: str, style_spec: Any, params: Params, what: str,
    style_image: Any = None,
) -> dict:
    """One request row: decode, check, resize, stylize, blend, encode."""
    style = resolve_style(engine, style_spec, style_image, what.removeprefix("image "))
    original = imaging.decode_image(imaging.b64decode(image_b64, what), what, params.max_size)
    original = imaging.fit_within(original, params.max_size, what)  # modes decode did not fit
    if style.style_vector is not None:  # a painting: strength mixes style vectors, not pixels
        style = painting.with_strength(style, original, params.strength, engine.style_vector)
    out = engine.run(original, style)
    if params.preserve_color:
        out = imaging.preserve_colors(out, original)
    if params.strength < 1.0 and style.style_vector is None:
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
        columns = set(model_input.columns)
        missing = [c for c in ("image", "style") if c not in columns]
        if painting.COLUMN in columns:
            missing = [c for c in missing if c != "style"]  # a painting replaces the style name
        if missing:
            raise StyleInputError(
                f"input is missing column(s) {missing}: expected 'image' (base64) and 'style' "
                f"(or '{painting.COLUMN}', base64 of a painting)"
            )
        parsed = Params.parse(params)
        styles = model_input["style"] if "style" in columns else [None] * len(model_input)
        paintings = (model_input[painting.COLUMN] if painting.COLUMN in columns
                     else [None] * len(model_input))
        rows = []
        for i, (image, style, style_image) in enumerate(
                zip(model_input["image"], styles, paintings, strict=True)):
            with self.slots:  # per row, so one many-row request cannot hold every slot
                rows.append(stylize_row(self.engine, image, style, parsed, what=f"image (row {i})",
                                        style_image=style_image))
        return pd.DataFrame(rows, columns=OUTPUT_COLUMNS)
