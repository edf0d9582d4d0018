"""How flickery and how faithful a stylized clip is, measured with a flow the method does not use.

Warping error (Lai et al. 2018, ``evaluate_WarpError.py``): flow on the *input* frames, output t
warped back to t-1, a non-occlusion mask from the forward-backward check and motion boundaries,
mean squared difference over the unmasked pixels (0..1 scale: the mean over the three channels).
The flow here is OpenCV's Farneback (or a synthetic clip's exact flow), never the DIS flow the
method blends along, so the method cannot grade itself. Fidelity: PSNR of each output frame against
the same frame stylized on its own, so a frozen picture (zero warping error) cannot win.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from neuralstyle.video.temporal import gray, inside, warp

FlowFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def farneback(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Farneback flow (first(x) ~ second(x + F(x))) on RGB uint8 frames: the independent flow."""
    import cv2

    return cv2.calcOpticalFlowFarneback(gray(first), gray(second), None, 0.5, 4, 21, 5, 7, 1.5,
                                        0)


def non_occlusion(forward: np.ndarray, backward: np.ndarray) -> np.ndarray:
    """Lai et al.'s mask in frame t-1: forward-backward consistent and off motion boundaries;
    also (our addition) pixels whose match lies outside frame t, which no flow can check."""
    back_there = warp(backward, forward)
    loop = ((forward + back_there) ** 2).sum(-1)
    inconsistent = loop > 0.01 * ((forward ** 2).sum(-1) + (back_there ** 2).sum(-1)) + 0.5
    du_y, du_x = np.gradient(forward[..., 0])
    dv_y, dv_x = np.gradient(forward[..., 1])
    boundary = (du_x ** 2 + dv_x ** 2 + du_y ** 2 + dv_y ** 2) > (
        0.01 * (forward ** 2).sum(-1) + 0.002)
    return ~(inconsistent | boundary) & inside(forward)


def warping_error(inputs: Sequence[np.ndarray], outputs: Sequence[np.ndarray],
                  flow: FlowFn = farneback,
                  flows: Sequence[tuple[np.ndarray, np.ndarray]] | None = None) -> float:
    """Mean over t of sum M (warp(O_t) - O_{t-1})^2 / sum M (RGB in 0..1, mean over channels).

    ``flows`` gives (forward t-1 -> t, backward t -> t-1) per pair when they are known exactly
    (a synthetic clip); else ``flow`` estimates them on the input frames.
    """
    if len(inputs) != len(outputs) or len(inputs) < 2:
        raise ValueError("warping error needs as many outputs as inputs, at least two")
    errors = []
    for t in range(1, len(inputs)):
        if flows is not None:
            forward, backward = flows[t - 1]
        else:
            forward, backward = flow(inputs[t - 1], inputs[t]), flow(inputs[t], inputs[t - 1])
        mask = non_occlusion(forward, backward)
        if not mask.any():
            continue
        carried = warp(outputs[t], forward).astype(np.float64) / 255
        diff = ((carried - outputs[t - 1].astype(np.float64) / 255) ** 2).mean(-1)
        errors.append(float(diff[mask].sum() / mask.sum()))
    return float(np.mean(errors)) if errors else 0.0


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two uint8 images in dB (inf when equal)."""
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def fidelity(outputs: Sequence[np.ndarray], per_frame: Sequence[np.ndarray]) -> float:
    """Mean PSNR (dB) of each output frame against the same frame stylized on its own."""
    values = [min(psnr(o, p), 99.0) for o, p in zip(outputs, per_frame, strict=True)]
    return float(np.mean(values))
