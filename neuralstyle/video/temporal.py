"""Temporal consistency without retraining: carry the previous stylized frame along the optical flow.

For frame t the per-frame stylization S_t is blended with the previous *output* O_{t-1} warped to t
along DIS optical flow computed on the input frames, only where the warp is trusted: the forward and
backward flows agree (the occlusion test of Sundaram et al. 2010, as Ruder et al. 2016 and Lai et al.
2018 use it), the input pixels match after warping, and no scene cut happened:

    O_t = (1 - a*M) * S_t + a*M * warp(O_{t-1})

``a`` is the ``temporal`` strength (0 = every frame on its own, as the peer's ``smooth=0``); M is
the soft trust mask. Along a trajectory that stays visible the texture then follows the motion
instead of being repainted every frame (the flicker); where it does not, the frame is painted anew.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

DEFAULT_TEMPORAL = 0.8  # chosen by measurement: bench/results/video.md
DIS_PRESETS = ("ultrafast", "fast", "medium")
# A scene cut: fewer than this share of pixels can be followed from the previous frame.
CUT_TRUSTED_SHARE = 0.35
COLOUR_TOLERANCE = 0.06  # |I_t - warp(I_{t-1})| in 0..1 above which the warp is not trusted


def gray(rgb: np.ndarray) -> np.ndarray:
    """uint8 luma for the flow."""
    import cv2

    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


class FlowEstimator:
    """OpenCV's DIS optical flow (Kroeger et al. 2016): ~3-10 ms for 640x360 on one core."""

    def __init__(self, preset: str = "fast") -> None:
        import cv2

        if preset not in DIS_PRESETS:
            raise ValueError(f"flow preset {preset!r} is not one of {', '.join(DIS_PRESETS)}")
        code = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
                "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
                "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}[preset]
        self.dis = cv2.DISOpticalFlow_create(code)

    def __call__(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """Flow F (H, W, 2) such that first(x) ~ second(x + F(x)), on uint8 grey frames."""
        return self.dis.calc(first, second, None)


def warp(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Sample ``image`` at x + flow(x) (bilinear, edges replicated): brings it into flow's frame."""
    import cv2

    return cv2.remap(image, _sample_map(flow), None, cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE)


@functools.lru_cache(maxsize=4)
def _grid(height: int, width: int) -> np.ndarray:
    """(H, W, 2) float32 pixel coordinates (x, y): built once per frame size, read-only."""
    grid = np.empty((height, width, 2), np.float32)
    grid[..., 0] = np.arange(width, dtype=np.float32)[None, :]
    grid[..., 1] = np.arange(height, dtype=np.float32)[:, None]
    grid.flags.writeable = False
    return grid


def _sample_map(flow: np.ndarray) -> np.ndarray:
    """x + flow(x) as one two-channel map (cv2.remap's fastest form)."""
    return _grid(*flow.shape[:2]) + flow


def consistent(flow: np.ndarray, back: np.ndarray) -> np.ndarray:
    """Forward-backward check: True where following ``flow`` then ``back`` returns home.

    |F(x) + B(x + F(x))|^2 <= 0.01 (|F|^2 + |B(x+F)|^2) + 0.5 (Sundaram et al. 2010),
    and x + F(x) inside the picture.
    """
    back_there = warp(back, flow)
    loop = flow + back_there
    agree = _norm2(loop) <= 0.01 * (_norm2(flow) + _norm2(back_there)) + 0.5
    return agree & inside(flow)


def _norm2(field: np.ndarray) -> np.ndarray:
    """|v|^2 per pixel of a (H, W, 2) field (channel slices: ~4x numpy's ``(v**2).sum(-1)``)."""
    x, y = field[..., 0], field[..., 1]
    return x * x + y * y


def inside(flow: np.ndarray) -> np.ndarray:
    """True where x + flow(x) lies in the picture: content entering at an edge has no past."""
    height, width = flow.shape[:2]
    xs = np.arange(width, dtype=np.float32)[None, :] + flow[..., 0]
    ys = np.arange(height, dtype=np.float32)[:, None] + flow[..., 1]
    return (xs >= 0) & (xs <= width - 1) & (ys >= 0) & (ys <= height - 1)


@dataclass
class Blended:
    """One output frame and how much of it came from the previous one."""

    rgb: np.ndarray
    trusted: float  # share of pixels where the warp was trusted (0 on the first frame or a cut)
    cut: bool


class TemporalBlender:
    """Feeds frames in order; keeps the previous input and output to warp from."""

    def __init__(self, strength: float = DEFAULT_TEMPORAL, preset: str = "fast") -> None:
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"temporal={strength} must be in 0..1")
        self.strength = strength
        self.flow = FlowEstimator(preset) if strength > 0 else None
        self.previous_gray: np.ndarray | None = None
        self.previous_in: np.ndarray | None = None
        self.previous_out: np.ndarray | None = None

    def flows(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """Backward (t -> t-1) and forward (t-1 -> t) flow for the next input frame.

        Pure in the inputs, so a caller may run it ahead in another thread; ``blend`` takes it.
        """
        if self.flow is None:
            return None
        now = gray(frame)
        before, self.previous_gray = self.previous_gray, now
        if before is None:
            return None
        return self.flow(now, before), self.flow(before, now)

    def blend(self, frame: np.ndarray, stylized: np.ndarray,
              flows: tuple[np.ndarray, np.ndarray] | None) -> Blended:
        """The output frame for input ``frame`` whose per-frame stylization is ``stylized``."""
        previous_in, previous_out = self.previous_in, self.previous_out
        self.previous_in = frame
        if flows is None or previous_out is None or self.strength == 0:
            self.previous_out = stylized
            return Blended(stylized, 0.0, flows is not None)
        back, forward = flows
        mask = consistent(back, forward)
        seen = warp(previous_in, back)
        import cv2

        diff = cv2.absdiff(frame, seen)
        colour = np.maximum(np.maximum(diff[..., 0], diff[..., 1]), diff[..., 2])
        mask &= colour <= COLOUR_TOLERANCE * 255
        share = float(mask.mean())
        if share < CUT_TRUSTED_SHARE:
            self.previous_out = stylized
            return Blended(stylized, share, True)
        weight = cv2.GaussianBlur(mask.astype(np.float32), (5, 5), 0)
        weight *= self.strength
        # S + w (C - S), in place: the same as (1 - w) S + w C with fewer full-frame temporaries.
        out = warp(previous_out, back).astype(np.float32)
        fresh = stylized.astype(np.float32)
        out -= fresh
        out *= weight[..., None]
        out += fresh
        result = cv2.convertScaleAbs(out)  # rounds and saturates to uint8
        self.previous_out = result
        return Blended(result, share, False)
