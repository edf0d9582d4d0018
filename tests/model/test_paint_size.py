"""``paint_size``: the network paints at one size, the result is brought to the output size guided by
the photo (``neuralstyle.model.guided``).

The guided upsampling is checked against a plainly written full-array colour guided filter (SciPy
window sums, ``np.linalg.solve``, ``map_coordinates`` for the bilinear step) on a seeded family of
sizes; the whole path (bytes in, bytes out) against onnxruntime's original graph followed by that
oracle; the edges against plain bicubic upsampling on a family of real photos.
"""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pandas as pd
import pytest
from oracle import decode_b64, oracle_float
from PIL import Image
from scipy import ndimage

from neuralstyle.builder.samples import SAMPLES, encode, sample_rgb
from neuralstyle.model import guided
from neuralstyle.model.contract import Params
from neuralstyle.model.errors import StyleInputError


def oracle_upsample(painted: np.ndarray, small: np.ndarray, photo: np.ndarray, radius: int,
                    eps: float, detail: float) -> np.ndarray:
    """He et al.'s colour guided filter on the whole small array, coefficients upsampled
    bilinearly (pixel centres aligned, edges clamped) and applied to the full-size photo."""
    guide = small.astype(np.float64) / 255
    p = painted.astype(np.float64)
    ones = np.ones((2 * radius + 1, 2 * radius + 1))
    count = ndimage.correlate(np.ones(guide.shape[:2]), ones, mode="constant")

    def mean(x: np.ndarray) -> np.ndarray:
        return ndimage.correlate(x, ones, mode="constant") / count

    h, w = guide.shape[:2]
    mean_i = np.stack([mean(guide[..., k]) for k in range(3)], -1)
    mean_p = np.stack([mean(p[..., c]) for c in range(3)], -1)
    sigma, cov = np.empty((h, w, 3, 3)), np.empty((h, w, 3, 3))
    for i in range(3):
        for j in range(3):
            sigma[..., i, j] = mean(guide[..., i] * guide[..., j]) - mean_i[..., i] * mean_i[..., j]
            cov[..., i, j] = mean(p[..., i] * guide[..., j]) - mean_p[..., i] * mean_i[..., j]
    sigma += eps * np.eye(3)
    a = np.swapaxes(np.linalg.solve(sigma, np.swapaxes(cov, -1, -2)), -1, -2)  # a sigma = cov
    b = mean_p - np.einsum("...ck,...k->...c", a, mean_i)
    a = np.stack([np.stack([mean(a[..., c, k]) for k in range(3)], -1) for c in range(3)], -2)
    b = np.stack([mean(b[..., c]) for c in range(3)], -1)
    b = (1 - detail) * b + detail * (p - np.einsum("...ck,...k->...c", a, guide))
    big_h, big_w = photo.shape[:2]
    ys = np.clip((np.arange(big_h) + 0.5) * h / big_h - 0.5, 0, h - 1)
    xs = np.clip((np.arange(big_w) + 0.5) * w / big_w - 0.5, 0, w - 1)
    grid = np.meshgrid(ys, xs, indexing="ij")

    def up(plane: np.ndarray) -> np.ndarray:
        return ndimage.map_coordinates(plane, grid, order=1, mode="nearest")

    full = photo.astype(np.float64) / 255
    out = [sum(up(a[..., c, k]) * full[..., k] for k in range(3)) + up(b[..., c])
           for c in range(3)]
    return np.clip(np.stack(out, -1), 0, 1)


def lanczos(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb).resize((width, height), Image.Resampling.LANCZOS))


def photo_family(seed: int, count: int) -> list[np.ndarray]:
    """Seeded crops of the bundled photos, 200..512 px a side, some mirrored."""
    rng = np.random.default_rng(seed)
    crops = []
    for i in range(count):
        rgb = sample_rgb(SAMPLES[(seed + i) % len(SAMPLES)])
        h, w = (int(rng.integers(200, min(512, s) + 1)) for s in rgb.shape[:2])
        y, x = int(rng.integers(0, rgb.shape[0] - h + 1)), int(rng.integers(0, rgb.shape[1] - w + 1))
        crop = rgb[y:y + h, x:x + w]
        crops.append(np.ascontiguousarray(crop[:, ::-1] if rng.random() < 0.5 else crop))
    return crops


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_guided_upsampling_matches_a_plain_full_array_guided_filter(seed: int, monkeypatch) -> None:
    """Sizes, ratios (1.05x to 6x, odd sides), bands of a few rows: the oracle's figures within
    float32 rounding, at the shipped settings and at the plain filter's (detail 0)."""
    monkeypatch.setattr(guided, "BAND_PIXELS", 4096)  # many bands, joined where a bug would show
    rng = np.random.default_rng(seed)
    worst = []
    for photo in photo_family(seed, 3):
        big_h, big_w = photo.shape[:2]
        ratio = float(rng.uniform(1.05, 6.0))
        h, w = max(8, round(big_h / ratio)), max(8, round(big_w / ratio))
        small = lanczos(photo, w, h)
        painted = np.clip(small / 255.0 * rng.uniform(-1, 1, 3) + rng.uniform(0, 1, 3)
                          + rng.normal(0, 0.1, small.shape), 0, 1).astype(np.float32)
        for radius, eps, detail in ((guided.RADIUS, guided.EPS, guided.DETAIL), (1, 1e-2, 0.0)):
            got = guided.upsample(painted, small, photo, radius, eps, detail)
            want = oracle_upsample(painted, small, photo, radius, eps, detail)
            assert got.shape == photo.shape and got.dtype == np.float32
            worst.append(float(np.abs(got - want).max()))
    print(f"max |ours - oracle| over the family: min {min(worst):.2e}, "
          f"median {np.median(worst):.2e}, worst {max(worst):.2e}")
    assert max(worst) < 1e-5


def test_paint_size_limits_are_clear_errors() -> None:
    assert Params.parse({}).paint_size == 0  # today's behaviour: paints at the output size
    assert Params.parse({"paint_size": 1024, "max_size": 0}).paint_size == 1024
    assert Params.parse({"paint_size": "512.0", "max_size": 512}).paint_size == 512
    for params, message in (
        ({"paint_size": 2048}, "param paint_size=2048 is larger than the output (max_size=1024)"),
        ({"paint_size": 20000, "max_size": 0}, "param paint_size=20000 must be in 0..16384"),
        ({"paint_size": -1}, "param paint_size=-1 must be in 0..16384"),
        ({"paint_size": 16}, "param paint_size=16 is below 32 px"),
        ({"paint_size": "big"}, "param paint_size='big'"),
    ):
        with pytest.raises(StyleInputError, match=re.escape(message)):
            Params.parse(params)
    panorama = np.zeros((40, 400, 3), np.uint8)
    with pytest.raises(StyleInputError, match="at paint_size=100 its short side would be 10 px"):
        guided.paint_pixels(panorama, 100, "image x")
    assert guided.paint_pixels(panorama, 400, "image x") is None  # the output size: no detour
    assert guided.paint_pixels(panorama, 0, "image x") is None


def predict(model, photo: bytes, style: str = "7", **params) -> dict:
    frame = pd.DataFrame({"image": [base64.b64encode(photo).decode("ascii")], "style": [style]})
    return model.predict(frame, params={"format": "png", "precision": "exact", **params}).iloc[0]


@pytest.mark.slow
def test_output_has_the_requested_size_and_the_output_size_is_todays_path(model) -> None:
    """Whatever paint_size, the result has the output's size; painting at the output size (or
    above a photo's own size) is byte for byte today's result."""
    photo = encode(sample_rgb("chelsea"), "png")  # 451x300
    today = predict(model, photo, max_size=400)
    assert (today["width"], today["height"]) == (400, 266)
    painted = predict(model, photo, max_size=400, paint_size=160)
    assert (painted["width"], painted["height"]) == (400, 266)
    assert decode_b64(painted["image"]).shape == (266, 400, 3)
    assert painted["image"] != today["image"]
    assert predict(model, photo, max_size=400, paint_size=400)["image"] == today["image"]
    own = predict(model, photo, max_size=0)
    assert (own["width"], own["height"]) == (451, 300)
    assert predict(model, photo, max_size=0, paint_size=1024)["image"] == own["image"]


@pytest.mark.slow
@pytest.mark.parametrize("style", ["7", "style-19"])
def test_whole_path_matches_the_original_graph_then_the_oracle_filter(model, style: str) -> None:
    """Bytes in, bytes out: decode, Lanczos to paint_size, the original graph (onnxruntime),
    the plain guided filter, 8 bits; within 2 levels (the graph's own 1 level, through the
    filter's local colour model), most pixels exact."""
    diffs = []
    for photo in photo_family(7, 3):
        big_h, big_w = photo.shape[:2]
        paint = max(big_h, big_w) // 3
        got = decode_b64(predict(model, encode(photo, "png"), style, max_size=0,
                                 paint_size=paint)["image"])
        scale = paint / max(big_h, big_w)
        small = lanczos(photo, round(big_w * scale), round(big_h * scale))
        want = oracle_upsample(oracle_float(small, style), small, photo, guided.RADIUS,
                               guided.EPS, guided.DETAIL)
        want8 = np.clip(want * 255 + 0.5, 0, 255).astype(np.uint8)
        diff = np.abs(got.astype(int) - want8)
        diffs.append((int(diff.max()), float((diff > 0).mean())))
    print(f"{style}: max level difference per photo {[d for d, _ in diffs]}, "
          f"share of pixels off {[round(s, 4) for _, s in diffs]}")
    assert max(d for d, _ in diffs) <= 2 and max(s for _, s in diffs) < 0.05


def gradient_correlation(result: np.ndarray, photo: np.ndarray) -> float:
    """Pearson correlation of the luma gradient magnitudes: 1 when every edge sits where the
    photo's does, with the photo's relative strength."""
    def magnitude(rgb: np.ndarray) -> np.ndarray:
        luma = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        gy, gx = np.gradient(luma)
        return np.hypot(gx, gy).ravel()

    a, b = magnitude(result), magnitude(photo)
    a, b = a - a.mean(), b - b.mean()
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


@pytest.mark.slow
def test_edges_follow_the_photo_better_than_bicubic_upsampling(model) -> None:
    """Network at a third of the output size: the guided result's edges correlate with the
    photo's more than the same painting upscaled bicubically, on every photo of the family."""
    engine = model.unwrap_python_model().engine
    rows = []
    for i, photo in enumerate(photo_family(11, 6)):
        big_h, big_w = photo.shape[:2]
        style = engine.catalog.resolve(str((3 * i + 7) % 26))
        small = lanczos(photo, max(32, big_w // 3), max(32, big_h // 3))
        painted, _ = engine.run(small, style, "exact")
        bicubic = np.stack([np.asarray(Image.fromarray(painted[..., c]).resize(
            (big_w, big_h), Image.Resampling.BICUBIC)) for c in range(3)], -1)
        ours = guided.upsample(painted, small, photo)
        rows.append((gradient_correlation(ours, photo),
                     gradient_correlation(np.clip(bicubic, 0, 1), photo)))
    gains = [g - b for g, b in rows]
    print("gradient correlation with the photo, guided vs bicubic: "
          + ", ".join(f"{g:.3f} vs {b:.3f}" for g, b in rows)
          + f"; gain min {min(gains):.3f}, median {np.median(gains):.3f}")
    assert min(gains) > 0.05


@pytest.mark.slow
def test_a_photo_too_thin_at_paint_size_is_refused_by_the_model(model) -> None:
    panorama = io.BytesIO()
    Image.fromarray(np.full((64, 640, 3), 128, np.uint8)).save(panorama, "PNG")
    with pytest.raises(StyleInputError, match="paint_size=160 its short side would be 16 px"):
        predict(model, panorama.getvalue(), max_size=0, paint_size=160)
