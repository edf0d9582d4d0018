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

NumPy only, float32 on the output's scale; statistics in float64 (variances are small differences
of large sums). Memory is bounded whatever the output size: the coefficients live at the paint size
(48 bytes a painted pixel) and the full-size result is written in row bands of ``BAND_PIXELS``.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from neuralstyle.model.errors import StyleInputError
from neuralstyle.model.imaging import MIN_SIDE

# Window radius in painted pixels, and the regularisation in (0..1 colour)^2: a larger eps leans on
# the stylized picture, a smaller one on the photo's detail. DETAIL 1 keeps every stroke the
# window averages would blur (b takes the painted residual: q = up(p) + up(a) (I - up(I_small)),
# the photo's own detail carried by the local colour model); 0 is the plain fast guided filter,
# sharper edges but strokes smoothed over 2r+1 painted pixels. Chosen with bench/paint_size.py
# (edge alignment and stroke fidelity on a seeded family; its table has the other settings).
RADIUS = 2
EPS = 1e-3
DETAIL = 1.0
BAND_PIXELS = 1 << 19  # output pixels per band: ~25 MB of float32 coefficients at a time


def box_mean(x: np.ndarray, radius: int) -> np.ndarray:
    """The mean over each (2r+1)^2 window clipped at the array's borders, axes 0 and 1 (float64)."""
    out = np.asarray(x, np.float64)
    for axis in (0, 1):
        n = out.shape[axis]
        padded = np.concatenate([np.zeros_like(out.take([0], axis=axis)), out], axis=axis)
        sums = np.cumsum(padded, axis=axis)
        hi = np.minimum(np.arange(n) + radius + 1, n)
        lo = np.maximum(np.arange(n) - radius, 0)
        shape = [1] * out.ndim
        shape[axis] = n
        count = (hi - lo).reshape(shape)
        out = (sums.take(hi, axis=axis) - sums.take(lo, axis=axis)) / count
    return out


def coefficients(guide: np.ndarray, painted: np.ndarray, radius: int = RADIUS,
                 eps: float = EPS) -> tuple[np.ndarray, np.ndarray]:
    """The colour guided filter's per-pixel linear model at the paint size, window-averaged.

    ``guide`` and ``painted`` are [h, w, 3] in 0..1; returns ``a`` [h, w, 3, 3] (output channel,
    guide channel) and ``b`` [h, w, 3], float32, such that ``q = a @ I + b``. Computed in row bands
    with a halo of 2r rows, so the float64 temporaries stay a band's worth.
    """
    h, w = guide.shape[:2]
    a_out = np.empty((h, w, 3, 3), np.float32)
    b_out = np.empty((h, w, 3), np.float32)
    rows = max(1, BAND_PIXELS // (4 * max(1, w)))
    halo = 2 * radius
    for top in range(0, h, rows):
        lo, hi = max(0, top - halo), min(h, top + rows + halo)
        a, b = _raw_coefficients(guide[lo:hi], painted[lo:hi], radius, eps)
        keep = slice(top - lo, top - lo + min(rows, h - top))
        a_out[top:top + rows] = box_mean(a.reshape(hi - lo, w, 9), radius)[keep].reshape(-1, w, 3, 3)
        b_out[top:top + rows] = box_mean(b, radius)[keep]
    return a_out, b_out


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

    Returns float32 [H, W, 3] clipped to 0..1, written a band of rows at a time. The coefficients
    are upsampled bilinearly (pixel centres aligned, edges clamped) by Pillow on 32-bit float
    planes, each band cut from the whole plane by ``box``, so bands join seamlessly.
    """
    h, w = painted.shape[:2]
    big_h, big_w = guide.shape[:2]
    small = np.asarray(guide_small, np.float32) / 255.0
    a, b = coefficients(small, painted, radius, eps)
    if detail:  # what the averaged model leaves of the painting, back into b
        b += detail * (painted - np.einsum("hwck,hwk->hwc", a, small) - b)
    planes = [Image.fromarray(np.ascontiguousarray(plane), mode="F")
              for plane in np.moveaxis(np.concatenate([a.reshape(h, w, 9), b], axis=2), 2, 0)]
    del a, b
    out = np.empty((big_h, big_w, 3), np.float32)
    rows = max(1, BAND_PIXELS // max(1, big_w))
    scale = h / big_h
    for top in range(0, big_h, rows):
        bottom = min(big_h, top + rows)
        box = (0.0, top * scale, float(w), bottom * scale)
        field = [np.asarray(plane.resize((big_w, bottom - top), Image.Resampling.BILINEAR, box=box))
                 for plane in planes]  # a_00 .. a_22, b_0 .. b_2: [rows, W] each
        photo = guide[top:bottom].astype(np.float32) * np.float32(1 / 255)
        for c in range(3):  # q_c = a_c0 I_0 + a_c1 I_1 + a_c2 I_2 + b_c
            got = field[9 + c].copy()
            for k in range(3):
                got += field[3 * c + k] * photo[..., k]
            np.clip(got, 0.0, 1.0, out=out[top:bottom, :, c])
    return out


def paint_pixels(pixels: np.ndarray, paint_size: int, what: str) -> np.ndarray | None:
    """The photo as the network paints it: ``pixels`` (uint8 [H, W, 3], at the output size) scaled
    to ``paint_size`` on its longest side (Lanczos, as ``max_size`` scales), or None when the
    network paints at the output size (``paint_size`` 0, or at least the photo's longest side)."""
    height, width = pixels.shape[:2]
    if paint_size <= 0 or paint_size >= max(height, width):
        return None
    scale = paint_size / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if min(size) < MIN_SIDE:
        raise StyleInputError(
            f"{what} is {width}x{height} at the output size: at paint_size={paint_size} its short "
            f"side would be {min(size)} px, below {MIN_SIDE}; raise paint_size"
        )
    return np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.LANCZOS))
