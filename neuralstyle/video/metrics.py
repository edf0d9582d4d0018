"""How flickery and how faithful a stylized clip is, measured with a flow the method does not use.

Warping error (Lai et al. 2018, ``evaluate_WarpError.py``): flow on the *input* frames, output t
warped back to t-1, a non-occlusion mask from the forward-backward check and motion boundaries,
mean squared difference over the unmasked pixels (0..1 scale: the mean over the three channels).
The flow here is OpenCV's Farneback (or a synthetic clip's exact flow), never the DIS flow the
method blends along, so the method cannot grade itself. Fidelity: PSNR of each output frame against
the same frame stylized on its own, so a frozen picture (zero warping error) cannot win.
Scene cuts (``scene_cuts``) are found on the input frames alone, with the same Farneback flow and
mask, so a per-shot figure can leave out the pairs across a cut without asking the method.
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


# A pair whose *input* frames differ this much along the metric's own flow and mask is a scene
# cut (bikes.mp4's cut: 0.18; every other pair of both bench clips: at most 0.0025).
CUT_INPUT_ERROR = 0.02


def pair_errors(inputs: Sequence[np.ndarray], outputs: Sequence[np.ndarray],
                flows: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[float | None]:
    """Per consecutive pair: sum M (warp(O_t) - O_{t-1})^2 / sum M (RGB in 0..1, mean over
    channels), None where the non-occlusion mask is empty."""
    errors: list[float | None] = []
    for t in range(1, len(inputs)):
        forward, backward = flows[t - 1]
        mask = non_occlusion(forward, backward)
        if not mask.any():
            errors.append(None)
            continue
        carried = warp(outputs[t], forward).astype(np.float64) / 255
        diff = ((carried - outputs[t - 1].astype(np.float64) / 255) ** 2).mean(-1)
        errors.append(float(diff[mask].sum() / mask.sum()))
    return errors


def scene_cuts(inputs: Sequence[np.ndarray],
               flows: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[bool]:
    """Per pair: True where the input frames themselves do not correspond (a cut between shots).

    Judged on the inputs only, with the metric's flow and mask, never the method's: Lai et al.
    evaluate single shots, and across a cut no flow has a meaning, so a blend that ghosts the old
    shot into the new one would be rewarded and a method that resets would be charged in full.
    """
    return [e is not None and e > CUT_INPUT_ERROR for e in pair_errors(inputs, inputs, flows)]


def warping_error(inputs: Sequence[np.ndarray], outputs: Sequence[np.ndarray],
                  flow: FlowFn = farneback,
                  flows: Sequence[tuple[np.ndarray, np.ndarray]] | None = None,
                  *, within_shots: bool = False) -> float:
    """Mean over t of sum M (warp(O_t) - O_{t-1})^2 / sum M (RGB in 0..1, mean over channels).

    ``flows`` gives (forward t-1 -> t, backward t -> t-1) per pair when they are known exactly
    (a synthetic clip) or precomputed; else ``flow`` estimates them on the input frames.
    ``within_shots`` leaves out the pairs across a scene cut (``scene_cuts``, inputs only).
    """
    if len(inputs) != len(outputs) or len(inputs) < 2:
        raise ValueError("warping error needs as many outputs as inputs, at least two")
    if flows is None:
        flows = [(flow(a, b), flow(b, a)) for a, b in zip(inputs[:-1], inputs[1:], strict=True)]
    errors = pair_errors(inputs, outputs, flows)
    cuts = scene_cuts(inputs, flows) if within_shots else [False] * len(errors)
    kept = [e for e, cut in zip(errors, cuts, strict=True) if e is not None and not cut]
    return float(np.mean(kept)) if kept else 0.0


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two uint8 images in dB (inf when equal)."""
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def fidelity(outputs: Sequence[np.ndarray], per_frame: Sequence[np.ndarray]) -> float:
    """Mean PSNR (dB) of each output frame against the same frame stylized on its own."""
    values = [min(psnr(o, p), 99.0) for o, p in zip(outputs, per_frame, strict=True)]
    return float(np.mean(values))
