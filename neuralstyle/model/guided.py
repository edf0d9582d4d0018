"""Painting at one size, printing at another: the network's result brought up to the output size
guided by the photo itself (the ``paint_size`` request param; README, "The look at print size").

A network run at 8K paints tiny strokes; run at 1024 px and upscaled, its result is soft. The fast
guided filter (He and Sun, "Fast Guided Filter", arXiv:1505.00996, 2015; the colour guided filter
of He, Sun and Tang, TPAMI 2013) does both: at the paint size it fits, in each small window, the
stylized colours as a linear function of the photo's colours (``q = a I + b``, a 3x3 ``a`` per
pixel), window-averages ``a`` and ``b``, puts back into ``b`` what of the painting the averaged
model leaves out (``DETAIL``: no stroke is blurred away), then evaluates ``a`` and ``b``,
bilinearly upsampled, on the full-size photo: ``q = up(p) + up(a) (I - up(I_small))``. The strokes
come from the painting, the sharp edges from the full-size photo where it has them.

NumPy (and Pillow's bilinear resize of float planes) only, float32 on the output's scale;
statistics in float64 (variances are small differences of large sums). Memory is bounded whatever
the output and paint sizes: the coefficients are computed for a slab of painted rows at a time and
the full-size result is written in row bands of ``BAND_PIXELS``.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from neuralstyle.model.imaging import fitted_size

# Window radius in painted pixels, and the regularisation in (0..1 colour)^2: a larger eps leans on
# the stylized picture, a smaller one on the photo's detail. DETAIL 1 keeps every stroke the
# window averages would blur (b takes the painted residual: q = up(p) + up(a) (I - up(I_small)),
# the photo's own detail carried by the local colour model); 0 is the plain fast guided filter,
# sharper edges but strokes smoothed over 2r+1 painted pixels. Chosen with bench/paint_size.py
# (edge alignment and stroke fidelity on a seeded family; its table has the other settings).
RADIUS = 2
EPS = 1e-3
DETAIL = 1.0
BAND_PIXELS = 1 << 19  # output pixels per band (~25 MB of float32 coefficients); slabs ~1/4 of it
SAMPLING_MARGIN = 2  # painted rows a slab holds beyond those bilinear sampling reads


def box_mean(x: np.ndarray, radius: int) -> np.ndarray:
    """The mean over each (2r+1)^2 window clipped at the array's borders, axes 0 and 1 (float64).

    Running sums with their first and last value repeated r times, so every window is one
    difference of two slices (no index arrays, no copies but the sums).
    """
    out = np.asarray(x, np.float64)
    for axis in (0, 1):
        out = np.moveaxis(out, axis, 0)
        n = out.shape[0]
        sums = np.empty((n + 1 + 2 * radius, *out.shape[1:]), np.float64)
        sums[:radius + 1] = 0.0
        np.cumsum(out, axis=0, out=sums[radius + 1:radius + 1 + n])
        sums[radius + 1 + n:] = sums[radius + n]
        index = np.arange(n)
        count = np.minimum(index + radius + 1, n) - np.maximum(index - radius, 0)
        window = sums[2 * radius + 1:] - sums[:n]
        window /= count.reshape(-1, *[1] * (out.ndim - 1))
        out = np.moveaxis(window, 0, axis)
    return out


def coefficients(guide_small: np.ndarray, painted: np.ndarray, lo: int, hi: int,
                 radius: int = RADIUS, eps: float = EPS,
                 detail: float = DETAIL) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``lo:hi`` of the colour guided filter's linear model at the paint size.

    ``guide_small`` is the photo as the network saw it (uint8 [h, w, 3]), ``painted`` the
    painting [h, w, 3] in 0..1. Returns ``a`` [rows, w, 3, 3] (output channel, guide channel)
    and ``b`` [rows, w, 3], float32, window-averaged, with ``detail`` of the painting's residual
    in ``b``, such that ``q = a @ I + b``: the same values whatever rows are asked for (the slab
    read has a halo of 2r rows), so memory is a slab's worth, never the painting's.
    """
    h = guide_small.shape[0]
    top, end = max(0, lo - 2 * radius), min(h, hi + 2 * radius)
    guide = np.asarray(guide_small[top:end], np.float32) / 255.0
    a, b = _raw_coefficients(guide, painted[top:end], radius, eps)
    keep = slice(lo - top, hi - top)
    rows, w = end - top, guide.shape[1]
    a = box_mean(a.reshape(rows, w, 9), radius)[keep].reshape(-1, w, 3, 3).astype(np.float32)
    b = box_mean(b, radius)[keep].astype(np.float32)
    if detail:  # what the averaged model leaves of the painting, back into b
        b += detail * (painted[lo:hi] - np.einsum("hwck,hwk->hwc", a, guide[keep]) - b)
    return a, b


def _raw_coefficients(guide: np.ndarray, painted: np.ndarray, radius: int,
                      eps: float) -> tuple[np.ndarray, np.ndarray]:
    """``a`` = cov(I, p) (cov(I) + eps)^-1 and ``b`` = mean(p) - a mean(I), per window (float64)."""
    guide = np.asarray(guide, np.float64)
    painted = np.asarray(painted, np.float64)
    mean_i = box_mean(guide, radius)
    mean_p = box_mean(painted, radius)
    # cov(I)[k, l] and cov(I, p)[c, k], each from one box mean of the products.
    outer = guide[..., :, None] * guide[..., None, :]
    sigma = box_mean(outer.reshape(*guide.shape[:2], 9), radius).reshape(*guide.shape[:2], 3, 3)
    sigma -= mean_i[..., :, None] * mean_i[..., None, :]
    sigma += eps * np.eye(3)
    cross = painted[..., :, None] * guide[..., None, :]
    cov_ip = box_mean(cross.reshape(*guide.shape[:2], 9), radius).reshape(*guide.shape[:2], 3, 3)
    cov_ip -= mean_p[..., :, None] * mean_i[..., None, :]
    a = cov_ip @ _inverse_3x3(sigma)  # sigma is symmetric positive definite (eps > 0)
    b = mean_p - np.einsum("...ck,...k->...c", a, mean_i)
    return a, b


def _inverse_3x3(m: np.ndarray) -> np.ndarray:
    """Inverse of each [..., 3, 3] matrix by cofactors (vectorised; ~10x np.linalg.inv's speed)."""
    c = np.empty_like(m)
    c[..., 0, 0] = m[..., 1, 1] * m[..., 2, 2] - m[..., 1, 2] * m[..., 2, 1]
    c[..., 0, 1] = m[..., 0, 2] * m[..., 2, 1] - m[..., 0, 1] * m[..., 2, 2]
    c[..., 0, 2] = m[..., 0, 1] * m[..., 1, 2] - m[..., 0, 2] * m[..., 1, 1]
    c[..., 1, 0] = m[..., 1, 2] * m[..., 2, 0] - m[..., 1, 0] * m[..., 2, 2]
    c[..., 1, 1] = m[..., 0, 0] * m[..., 2, 2] - m[..., 0, 2] * m[..., 2, 0]
    c[..., 1, 2] = m[..., 0, 2] * m[..., 1, 0] - m[..., 0, 0] * m[..., 1, 2]
    c[..., 2, 0] = m[..., 1, 0] * m[..., 2, 1] - m[..., 1, 1] * m[..., 2, 0]
    c[..., 2, 1] = m[..., 0, 1] * m[..., 2, 0] - m[..., 0, 0] * m[..., 2, 1]
    c[..., 2, 2] = m[..., 0, 0] * m[..., 1, 1] - m[..., 0, 1] * m[..., 1, 0]
    det = m[..., 0, 0] * c[..., 0, 0] + m[..., 0, 1] * c[..., 1, 0] + m[..., 0, 2] * c[..., 2, 0]
    return c / det[..., None, None]


def upsample(painted: np.ndarray, guide_small: np.ndarray, guide: np.ndarray,
             radius: int = RADIUS, eps: float = EPS, detail: float = DETAIL) -> np.ndarray:
    """The stylized ``painted`` [h, w, 3] (0..1) at the size of ``guide`` [H, W, 3] (uint8 photo),
    guided by it; ``guide_small`` is the photo as the network saw it (uint8, [h, w, 3]).

    Returns float32 [H, W, 3] clipped to 0..1. Works in slabs of painted rows (their
    coefficients) and, within each, bands of output rows: the coefficients are upsampled
    bilinearly (pixel centres aligned, edges clamped) by Pillow on 32-bit float planes cut from
    the slab by ``box``, with ``SAMPLING_MARGIN`` rows to spare, so slabs and bands join seamlessly.
    """
    h, w = painted.shape[:2]
    big_h, big_w = guide.shape[:2]
    out = np.empty((big_h, big_w, 3), np.float32)
    scale = h / big_h
    band = max(1, BAND_PIXELS // max(1, big_w))  # output rows at a time
    slab = max(band, int(max(8, BAND_PIXELS // (4 * max(1, w))) / scale))  # output rows per slab
    for top in range(0, big_h, slab):
        bottom = min(big_h, top + slab)
        lo = max(0, int(np.floor(top * scale - 0.5)) - SAMPLING_MARGIN)
        hi = min(h, int(np.ceil(bottom * scale + 0.5)) + SAMPLING_MARGIN)
        a, b = coefficients(guide_small, painted, lo, hi, radius, eps, detail)
        planes = [Image.fromarray(np.ascontiguousarray(plane), mode="F")
                  for plane in np.moveaxis(np.concatenate([a.reshape(hi - lo, w, 9), b], 2), 2, 0)]
        del a, b
        for start in range(top, bottom, band):
            stop = min(bottom, start + band)
            box = (0.0, start * scale - lo, float(w), stop * scale - lo)
            field = [np.asarray(plane.resize((big_w, stop - start), Image.Resampling.BILINEAR,
                                             box=box))
                     for plane in planes]  # a_00 .. a_22, b_0 .. b_2: [rows, W] each
            photo = guide[start:stop].astype(np.float32) * np.float32(1 / 255)
            for c in range(3):  # q_c = a_c0 I_0 + a_c1 I_1 + a_c2 I_2 + b_c
                got = field[9 + c].copy()
                for k in range(3):
                    got += field[3 * c + k] * photo[..., k]
                np.clip(got, 0.0, 1.0, out=out[start:stop, :, c])
    return out


def paint_pixels(pixels: np.ndarray, paint_size: int, what: str) -> np.ndarray | None:
    """The photo as the network paints it: ``pixels`` (uint8 [H, W, 3], at the output size) scaled
    to ``paint_size`` on its longest side (Lanczos, as ``max_size`` scales), or None when the
    network paints at the output size (``paint_size`` 0, or at least the photo's longest side)."""
    height, width = pixels.shape[:2]
    if paint_size <= 0:
        return None
    size = fitted_size(width, height, paint_size, f"{what} at the output size", "paint_size")
    if size is None:
        return None
    return np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.LANCZOS))
