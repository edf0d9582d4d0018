"""The pyfunc model contract: base64 photo + style in, base64 stylized photo out.

Runs the exported networks on OpenVINO through :mod:`neuralstyle.runtime` (no torch at serving
time), at the precision a request asks for. Heavy things (compiled networks, the style catalog,
the per-style quality record) load once in ``load_context``; ``predict`` is pure per row.
Logged as a model from code (``model_code.py``), so loading it unpickles no Python objects.
"""

from __future__ import annotations

import base64
import json
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

from neuralstyle import imaging, runtime
from neuralstyle.config import DEFAULT_PARALLEL_PHOTOS, PARALLEL_PHOTOS_ENV
from neuralstyle.errors import StyleInputError
from neuralstyle.styles import N_STYLES, Catalog, Resolved, style_name

ARTIFACT_KEY = "networks"
IDENTITY_FILE = "identity.json"  # {"fingerprint": ...}: the registry tags the version with the same
# {"checked": "bf16", "styles": {"style-07": {"psnr": .., "mean": .., "fast": true}, ...}}: which
# styles meet the quality bound at bf16, measured at packaging (packaging.check_fast_quality).
QUALITY_FILE = "quality.json"
OUTPUT_COLUMNS = ["image", "width", "height", "style", "model", "precision"]
MAX_SIZE_LIMIT = 2048  # ~0.5 GB per 32-channel activation at 2048^2: keeps a server alive
SIZE_MULTIPLE = 4  # two stride-2 convolutions, then two x2 upsamplings
RELEASE_ABOVE_PIXELS = 1024 * 1024  # larger runs hand the runtime's buffers back afterwards
# OpenVINO's compiled blobs, so a restart skips most of the compile (unset: ~/.cache/stylize).
CACHE_ENV = "STYLIZE_CACHE_DIR"
THREADS_ENV = "STYLIZE_THREADS"  # threads per inference; unset: every core
DEFAULT_PARAMS: dict[str, Any] = {
    "max_size": 1024,
    "strength": 1.0,
    "preserve_color": False,
    "format": "jpeg",
    "quality": 90,
    # fast: bf16 where the CPU has it and the style meets the quality bound, else fp32 (exact).
    "precision": "fast",
}


@dataclass(frozen=True)
class Params:
    """Validated per-request parameters."""

    max_size: int
    strength: float
    preserve_color: bool
    format: str
    quality: int
    precision: str = "fast"

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
        precision = str(merged["precision"]).strip().lower()
        if precision not in runtime.PRECISIONS:
            raise StyleInputError(
                f"param precision={merged['precision']!r} must be one of "
                f"{', '.join(runtime.PRECISIONS)} (exact: fp32, as the original graph; fast: bf16 "
                "where this CPU has it and the style meets the quality bound)"
            )
        preserve = merged["preserve_color"]
        if isinstance(preserve, str):
            preserve = preserve.strip().lower() in ("1", "true", "yes")
        return cls(max_size, strength, bool(preserve), fmt, quality, precision)


class Engine:
    """The compiled networks at both precisions, and which styles may run fast."""

    def __init__(self, root: str | Path, cache_dir: str | Path | None = None) -> None:
        root = Path(root)
        self.catalog = Catalog.load(root / "catalog.json")
        identity = root / IDENTITY_FILE  # absent in versions packaged before lineage existed
        self.fingerprint = json.loads(identity.read_text())["fingerprint"] if identity.is_file() else ""
        quality = root / QUALITY_FILE  # absent: nothing was checked, so nothing runs bf16
        self.quality = json.loads(quality.read_text()) if quality.is_file() else {}
        self.root = root
        self.cache_dir = cache_dir if cache_dir is not None else default_cache_dir()
        # Keyed by network name; None is the 26-style network.
        self.files = {None: self.catalog.multistyle_file} | {
            name: info["file"] for name, info in self.catalog.networks.items()
        }
        if self.fast_precision() == runtime.FP32:  # fast is exact here: one set of networks
            self.fast = self._compile("exact")
            self._exact: Future = Future()
            self._exact.set_result(self.fast)
        else:
            # The default (fast) compiles now; exact in the background, so a server answers
            # /ping without waiting for it (~0.3-0.8 s); the first exact request waits if needed.
            self.fast = self._compile("fast")
            pool = ThreadPoolExecutor(1, thread_name_prefix="compile-exact")
            self._exact = pool.submit(self._compile, "exact")
            pool.shutdown(wait=False)  # the thread ends when the compile does

    @property
    def exact(self) -> dict[str | None, runtime.Network]:
        """The fp32 networks (waits for the background compile the first time)."""
        return self._exact.result()

    def _compile(self, precision: str) -> dict[str | None, runtime.Network]:
        threads = int(os.environ.get(THREADS_ENV, "0") or 0)
        return {
            name: runtime.compile_network(self.root / file, precision, self.cache_dir, threads,
                                          pixels_input="image")
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
        if style.network is not None:
            names = [style.network]
        else:
            names = [style_name(i) for i in range(N_STYLES) if style.weights[i] > 0]
        return all(checked.get(name, {}).get("fast", False) for name in names)

    def network_for(self, style: Resolved, precision: str) -> runtime.Network:
        """The compiled network that serves ``style`` at the requested precision."""
        fast = precision == "fast" and self.may_run_fast(style)
        return (self.fast if fast else self.exact)[style.network]

    def run(self, pixels: np.ndarray, style: Resolved, precision: str = "exact") -> tuple[np.ndarray, str]:
        """Stylize uint8 RGB [H, W, 3]; returns float RGB [H, W, 3] in 0..1 and what ran.

        The networks halve the image twice and double it twice, so a side that is not a
        multiple of 4 is reflect-padded up to one (bottom and right, as the original pipeline
        does) and the result cropped back. Running it unpadded and cropping would stretch the
        content by up to ~1.5 px toward the far edges. Conversion to float (/255) and the
        layout change run inside the compiled network.
        """
        height, width = pixels.shape[:2]
        x = np.ascontiguousarray(pad_to_multiple(pixels, SIZE_MULTIPLE)[None], dtype=np.uint8)
        network = self.network_for(style, precision)
        feeds = {"image": x} if style.network is not None else {"image": x, "style_weights": style.weights}
        release = x.shape[1] * x.shape[2] > RELEASE_ABOVE_PIXELS
        out = network.run(feeds, release_memory=release)[0]
        return out[0, :height, :width], network.precision


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


def stylize_row(engine: Engine, image_b64: str, style_spec: str, params: Params, what: str) -> dict:
    """One request row: decode, check, resize, stylize, blend, encode."""
    style = engine.catalog.resolve(str(style_spec) if isinstance(style_spec, int) else style_spec)
    pixels = imaging.decode_pixels(imaging.b64decode(image_b64, what), what, params.max_size)
    out, ran = engine.run(pixels, style, params.precision)
    if params.preserve_color or params.strength < 1.0:
        original = pixels.astype(np.float32) / 255.0
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
        "precision": ran,
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
