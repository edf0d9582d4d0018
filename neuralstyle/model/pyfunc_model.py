"""The pyfunc model contract: base64 photo + style in, base64 stylized photo out.

Runs the exported networks on OpenVINO through :mod:`neuralstyle.model.runtime` (no torch at serving
time), at the precision a request asks for. Heavy things (compiled networks, the style catalog,
the per-style quality record) load once in ``load_context``; ``predict`` is pure per row.
Logged as a model from code (``model_code.py``), so loading it unpickles no Python objects.
"""

from __future__ import annotations

import base64
import json
import os
import threading
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

from neuralstyle.model import guided, imaging, painting, runtime, stats, tiling
from neuralstyle.model.contract import (
    DEFAULT_PARALLEL_PHOTOS,
    PARALLEL_PHOTOS_ENV,
    Params,
)
from neuralstyle.model.errors import StyleInputError
from neuralstyle.model.styles import ARBITRARY, Catalog, Resolved

ARTIFACT_KEY = "networks"
IDENTITY_FILE = "identity.json"  # {"fingerprint": ...}: the registry tags the version with the same
# {"checked": "bf16", "styles": {"style-07": {"psnr": .., "mean": .., "fast": true}, ...}}: which
# styles meet the quality bound at bf16, measured at packaging (builder.packaging.check_fast_quality).
QUALITY_FILE = "quality.json"
OUTPUT_COLUMNS = ["image", "width", "height", "style", "model", "precision"]
SIZE_MULTIPLE = 4  # two stride-2 convolutions, then two x2 upsamplings
# OpenVINO's compiled blobs, so a restart skips most of the compile (unset: ~/.cache/stylize).
CACHE_ENV = "STYLIZE_CACHE_DIR"
THREADS_ENV = "STYLIZE_THREADS"  # threads per inference; unset: every core

class Engine:
    """The compiled networks at both precisions, and which styles may run fast.

    Every network (the 26-style network, extra checkpoints, the arbitrary-style pair) is compiled
    by :func:`neuralstyle.model.runtime.compile_network`: one runtime, the same two precisions.
    """

    def __init__(self, root: str | Path, cache_dir: str | Path | None = None,
                 streams: int = 0) -> None:
        root = Path(root)
        self.streams = streams  # runtime.compile_network: >1 for a caller with frames in flight
        self.catalog = Catalog.load(root / "catalog.json")
        identity = root / IDENTITY_FILE  # absent in versions packaged before lineage existed
        self.fingerprint = json.loads(identity.read_text())["fingerprint"] if identity.is_file() else ""
        quality = root / QUALITY_FILE  # absent: nothing was checked, so nothing runs bf16
        self.quality = json.loads(quality.read_text()) if quality.is_file() else {}
        self.root = root
        self.cache_dir = cache_dir if cache_dir is not None else default_cache_dir()
        self.files = self.catalog.network_files()
        # The painting -> style vector network always runs exact: a vector is cached by the
        # painting's bytes whatever precision asked for it, and at 256 px it is cheap.
        self.predictor = (
            runtime.compile_network(root / self.catalog.arbitrary["predict"], "exact",
                                    self.cache_dir, _threads())
            if "predict" in self.catalog.arbitrary else None
        )
        self.style_vectors = painting.StyleVectorCache()
        self._compile_both()

    def _compile_both(self) -> None:
        """``exact`` and ``fast``: one set of networks where fast is fp32 here.

        Both compile before the server answers /ping (bench/RESULTS.md: +0.07 s with the blob
        cache, +0.2 s cold). Not in a background thread: a compile running beside the first
        requests' inference is a concurrency OpenVINO gains nothing from, and a server whose load
        test hung (every request, 120 s) had exactly that at start (the hang itself was most
        likely the first-conversion deadlock that ``runtime._core`` now prevents). Fast is decided by the
        version too: one packaged where bf16 was not checked runs fp32 on a bf16 CPU as well.
        """
        self.exact = self._compile("exact")
        self.fast = self.exact if self.fast_precision() == runtime.FP32 else self._compile("fast")

    def _compile(self, precision: str) -> dict[str | None, tiling.TiledNetwork]:
        """Each network, run in bands above ``tiling.TILE_PIXELS`` (one piece below)."""
        return {
            name: tiling.TiledNetwork(runtime.compile_network(
                self.root / file, precision, self.cache_dir, _threads(), pixels_input="image",
                streams=self.streams))
            for name, file in self.files.items()
        }

    def fast_precision(self) -> str:
        """bf16 when this CPU has it and packaging checked bf16 quality; else fp32."""
        if runtime.fast_precision() == runtime.FP32 or self.quality.get("checked") != runtime.BF16:
            return runtime.FP32
        return runtime.BF16

    def may_run_fast(self, style: Resolved) -> bool:
        """True when every style in ``style`` met the quality bound at packaging."""
        checked = self.quality.get("styles", {})
        return all(checked.get(name, {}).get("fast", False) for name in style.quality_keys())

    def network_for(self, style: Resolved, precision: str) -> tiling.TiledNetwork:
        """The compiled network that serves ``style`` at the requested precision."""
        fast = precision == "fast" and self.may_run_fast(style)
        if style.network_key == ARBITRARY and ARBITRARY not in self.files:
            raise self._no_arbitrary()
        return (self.fast if fast else self.exact)[style.network_key]

    def run(self, pixels: np.ndarray, style: Resolved, precision: str = "exact",
            eight_bit: bool = False) -> tuple[np.ndarray, str]:
        """Stylize uint8 RGB [H, W, 3]; returns float RGB [H, W, 3] in 0..1 (with ``eight_bit``:
        uint8, rounded band by band as the bands come, for a caller that only encodes) and
        what ran.

        The networks halve the image twice and double it twice, so a side that is not a
        multiple of 4 is reflect-padded up to one (bottom and right, as the original pipeline
        does) and the result cropped back. Running it unpadded and cropping would stretch the
        content by up to ~1.5 px toward the far edges. Conversion to float (/255) and the
        layout change run inside the compiled network. A photo above ``tiling.TILE_PIXELS`` runs
        in bands (``neuralstyle.model.tiling``): the same picture, in bounded memory.
        """
        height, width = pixels.shape[:2]
        x = np.ascontiguousarray(pad_to_multiple(pixels, SIZE_MULTIPLE)[None], dtype=np.uint8)
        network = self.network_for(style, precision)
        convert = _eight_bit if eight_bit else None
        out = network.run({"image": x, **style.feeds()}, convert)
        return out[0, :height, :width], network.precision

    def style_vector(self, square: np.ndarray) -> np.ndarray:
        """A painting prepared as [256, 256, 3] in 0..1 -> its style vector [100] (fp32)."""
        if self.predictor is None:
            raise self._no_arbitrary()
        return predict_style_vector(self.predictor, square)

    @staticmethod
    def _no_arbitrary() -> StyleInputError:
        return StyleInputError(
            f"this model version has no arbitrary-style networks: {painting.COLUMN} needs a "
            "version packaged with them (package_models.py)"
        )


def predict_style_vector(predictor: runtime.Network, square: np.ndarray) -> np.ndarray:
    """The painting -> vector network on a painting prepared as [256, 256, 3] in 0..1: [100]."""
    x = np.ascontiguousarray(square.transpose(2, 0, 1)[None], dtype=np.float32)
    return predictor.run({"painting": x})[0].reshape(-1)


def _threads() -> int:
    return int(os.environ.get(THREADS_ENV, "0") or 0)


def default_cache_dir() -> Path | None:
    """Where compiled blobs are kept: ``$STYLIZE_CACHE_DIR``, else ~/.cache; None if unwritable."""
    explicit = os.environ.get(CACHE_ENV)
    path = Path(explicit) if explicit else Path.home() / ".cache" / "stylize" / "openvino"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return path if os.access(path, os.W_OK) else None


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
    """One request row: decode, check, resize, stylize (``stylize_pixels``), encode."""
    style = resolve_style(engine, style_spec, style_image, what.removeprefix("image "))
    pixels = imaging.decode_pixels(imaging.b64decode(image_b64, what), what, params.max_size)
    imaging.check_encodable(pixels.shape[1], pixels.shape[0], params.format, what)
    out, row = _stylize(engine, pixels, style, params, what)
    encoded = imaging.encode_image(out, params.format, params.quality)
    return {"image": base64.b64encode(encoded).decode("ascii"), **row}


def stylize_pixels(
    engine: Engine, pixels: np.ndarray, style_spec: Any, params: Params, what: str,
    style_image: Any = None,
) -> tuple[np.ndarray, dict]:
    """Decoded RGB uint8 pixels -> stylized RGB uint8 and the row's other columns: what
    ``stylize_row`` gives for a lossless file of the same pixels, without encoding either way
    (an in-process caller's video frames: no JPEG noise, no codec time)."""
    style = resolve_style(engine, style_spec, style_image, what.removeprefix("image "))
    pixels = imaging.check_pixels(pixels, what, params.max_size)
    out, row = _stylize(engine, pixels, style, params, what)
    return imaging.to_uint8(out), row


def _stylize(engine: Engine, pixels: np.ndarray, style: Resolved, params: Params,
             what: str) -> tuple[np.ndarray, dict]:
    """Checked, fitted pixels -> RGB (at ``paint_size``, then guided up to the output size, when
    asked; colours kept; strength blended) and the row's other columns. The RGB is float in 0..1,
    or already uint8 where nothing after the network reads it (the same bytes either way)."""
    blend_pixels = params.strength < 1.0 and style.style_vector is None
    # The photo as float only where something reads it (12 bytes a pixel: 540 MB at 45 MP).
    needs_original = params.preserve_color or params.strength < 1.0
    original = pixels.astype(np.float32) / 255.0 if needs_original else None
    if style.style_vector is not None:  # a painting: strength mixes style vectors, not pixels
        style = painting.with_strength(style, original, params.strength, engine.style_vector)
    painted = guided.paint_pixels(pixels, params.paint_size, what)  # None: at the output size
    if painted is None:
        # Straight to 8-bit when nothing reads the float result (at 45 MP it alone is 545 MB).
        eight_bit = not params.preserve_color and not blend_pixels
        out, ran = engine.run(pixels, style, params.precision, eight_bit)
    else:  # strokes of the paint size, edges of the photo at the output size
        small, ran = engine.run(painted, style, params.precision)
        out = guided.upsample(small, painted, pixels)
        del small, painted
    del pixels
    if params.preserve_color:
        out = imaging.preserve_colors(out, original)
    if blend_pixels:
        out = params.strength * out + (1.0 - params.strength) * original
    stats.record_row(style_kind(style), ran, int(out.shape[1]), int(out.shape[0]))
    return out, {
        "width": int(out.shape[1]),
        "height": int(out.shape[0]),
        "style": style.label,
        "model": engine.fingerprint,
        "precision": ran,
    }


def _eight_bit(band: np.ndarray) -> np.ndarray:
    """A band of the network's output [1, rows, W, 3] in 0..1 -> uint8, rounded as ``to_uint8``."""
    return imaging.to_uint8(band[0])[None]


def style_kind(style: Resolved) -> str:
    """The kind of style a row ran, as the server's metrics label it."""
    if style.style_vector is not None:
        return stats.KIND_PAINTING
    return stats.KIND_STYLES26 if style.network is None else stats.KIND_CHECKPOINT


def parallel_photos() -> int:
    """``STYLIZE_PARALLEL_PHOTOS`` (default 2): bounds the decode/run memory of a busy server."""
    text = os.environ.get(PARALLEL_PHOTOS_ENV, "").strip() or str(DEFAULT_PARALLEL_PHOTOS)
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{PARALLEL_PHOTOS_ENV}={text!r} must be a whole number >= 1 "
                         f"(photos stylized at once; default {DEFAULT_PARALLEL_PHOTOS})")
    return int(text)


class StyleTransferModel(mlflow.pyfunc.PythonModel):
    """``models:/style-transfer@champion`` (its params: ``neuralstyle.model.contract``; README,
    "The model contract")."""

    def load_context(self, context) -> None:
        # model_config {"streams": n} (mlflow.pyfunc.load_model): n requests at once, the cores
        # split between them; what an in-process clip asks for (neuralstyle.video.clips).
        settings = getattr(context, "model_config", None) or {}
        self.engine = Engine(context.artifacts[ARTIFACT_KEY],
                             streams=int(settings.get("streams", 0) or 0))
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
            with stats.photo_slot(self.slots):  # per row: one many-row request cannot hold every slot
                rows.append(stylize_row(self.engine, image, style, parsed, what=f"image (row {i})",
                                        style_image=style_image))
        return pd.DataFrame(rows, columns=OUTPUT_COLUMNS)

    def stylize_pixels(
        self, pixels: np.ndarray, style: Any, params: dict[str, Any] | None = None,
        style_image: str | None = None, what: str = "image",
    ) -> tuple[np.ndarray, dict]:
        """One photo as RGB uint8 [H, W, 3] in, stylized RGB uint8 and the row's other columns
        (width, height, style, model, precision) out: ``predict`` for an in-process caller that
        already holds pixels (a video's frames), the same pixels as ``predict`` on a PNG of
        them. ``style_image``: a painting as base64, as the column."""
        parsed = Params.parse(params)
        with stats.photo_slot(self.slots):
            return stylize_pixels(self.engine, pixels, style, parsed, what, style_image)
