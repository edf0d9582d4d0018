"""Temporal consistency without retraining: carry the previous stylized frame along the optical flow.

For frame t the per-frame stylization S_t is mixed with the previous *output* O_{t-1}, warped to t
along DIS optical flow computed on the input frames (W), where the warp is trusted: the forward
and backward flows agree (the occlusion test of Sundaram et al. 2010, as Ruder et al. 2016 and Lai
et al. 2018 use it), the input pixels match after warping, and no scene cut happened (T, a soft
0..1 mask). A share of O_{t-1} is also kept in place (P), mostly where the warp is not trusted:

    O_t = k (S_t + a T (W - S_t)) + (1 - k) P,   k = (1 - c) (1 - b (1 - T))

with a, b, c from the one ``temporal`` knob (``mix_weights``; 0 = every frame on its own, as the
peer's ``smooth=0``). Along a trajectory that stays visible the texture follows the motion instead
of being repainted every frame (the flicker). The in-place share is what the peer's ``smooth``
does everywhere, and the price is the same (a faint trail behind fast motion): here it is small
where the warp is trusted (c = 0.4 a^2: 0.14 at the default) and it stops at a scene cut.
Everything that depends only on the input frames (flows, masks, weights) is in ``flows``, which
the pipeline runs ahead in its reader thread; ``blend`` is one warp and one mix.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

DEFAULT_TEMPORAL = 0.6  # chosen by measurement: bench/results/video.md
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
    return warp_at(image, sample_map(flow))


def warp_at(image: np.ndarray, where: np.ndarray) -> np.ndarray:
    """``warp`` with x + flow(x) made once (``sample_map``) for every image warped along it."""
    import cv2

    return cv2.remap(image, where, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


@functools.lru_cache(maxsize=4)
def _grid(height: int, width: int) -> np.ndarray:
    """(H, W, 2) float32 pixel coordinates (x, y): built once per frame size, read-only."""
    grid = np.empty((height, width, 2), np.float32)
    grid[..., 0] = np.arange(width, dtype=np.float32)[None, :]
    grid[..., 1] = np.arange(height, dtype=np.float32)[:, None]
    grid.flags.writeable = False
    return grid


def sample_map(flow: np.ndarray) -> np.ndarray:
    """x + flow(x) as one two-channel map (cv2.remap's fastest form)."""
    return _grid(*flow.shape[:2]) + flow


def consistent(flow: np.ndarray, back: np.ndarray, where: np.ndarray | None = None) -> np.ndarray:
    """Forward-backward check: True where following ``flow`` then ``back`` returns home.

    |F(x) + B(x + F(x))|^2 <= 0.01 (|F|^2 + |B(x+F)|^2) + 0.5 (Sundaram et al. 2010),
    and x + F(x) inside the picture. ``where``: ``sample_map(flow)``, if the caller has it.
    """
    where = sample_map(flow) if where is None else where
    back_there = warp_at(back, where)
    loop = flow + back_there
    agree = _norm2(loop) <= 0.01 * (_norm2(flow) + _norm2(back_there)) + 0.5
    return agree & _inside_map(where)


def _norm2(field: np.ndarray) -> np.ndarray:
    """|v|^2 per pixel of a (H, W, 2) field (channel slices: ~4x numpy's ``(v**2).sum(-1)``)."""
    x, y = field[..., 0], field[..., 1]
    return x * x + y * y


def inside(flow: np.ndarray) -> np.ndarray:
    """True where x + flow(x) lies in the picture: content entering at an edge has no past."""
    return _inside_map(sample_map(flow))


def _inside_map(where: np.ndarray) -> np.ndarray:
    height, width = where.shape[:2]
    xs, ys = where[..., 0], where[..., 1]
    return (xs >= 0) & (xs <= width - 1) & (ys >= 0) & (ys <= height - 1)


@dataclass
class Motion:
    """What ``flows`` learns from one pair of input frames, for ``blend``: where to sample the
    previous output (``where``) and how much of it to take, warped (``carried``) and in place
    (``held``), per pixel. None of it depends on the network, so it is computed ahead."""

    where: np.ndarray | None  # (H, W, 2) where frame t's pixels were at t-1: x + flow t -> t-1
    # (``sample_map``); None at a scene cut
    carried: np.ndarray | None  # (H, W, 1) float32 weight of warp(O_{t-1})
    held: np.ndarray | None  # (H, W, 1) float32 weight of O_{t-1} in place
    trusted: float  # share of pixels where the warp is trusted

    @property
    def cut(self) -> bool:
        return self.where is None

    @property
    def nbytes(self) -> int:
        """The memory its arrays hold (the read-ahead's budget counts it)."""
        arrays = (self.where, self.carried, self.held)
        return sum(array.nbytes for array in arrays if array is not None)


@dataclass
class Blended:
    """One output frame and how much of it came from the previous one."""

    rgb: np.ndarray
    trusted: float  # share of pixels where the warp was trusted (0 on the first frame or a cut)
    cut: bool


def mix_weights(strength: float) -> tuple[float, float, float]:
    """(warped where trusted, in place where not, in place everywhere) for one ``temporal``.

    Measured on the bench clips (bench/results/video.md): the warped carry alone levels off at
    ~0.5x the per-frame warping error, held back by pixels the warp does not trust (painted anew,
    so they flicker in full) and by pixels where two flows disagree by a pixel or more (the carried
    texture then shimmers against any other flow). A share of the previous output kept in place
    damps both, as a temporal low-pass: most where the warp is not trusted, a little everywhere
    (it grows as strength^2, so it stays small at the default and the motion is still followed).
    """
    return strength, 0.8 * strength, 0.4 * strength * strength


class TemporalBlender:
    """Feeds frames in order: ``flows`` for each input frame (may run ahead, in another thread),
    then ``blend`` for each stylized frame, in the same order."""

    def __init__(self, strength: float = DEFAULT_TEMPORAL, preset: str = "fast") -> None:
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"temporal={strength} must be in 0..1")
        self.strength = strength
        self.carry, self.hold_untrusted, self.hold = mix_weights(strength)
        self.flow = FlowEstimator(preset) if strength > 0 else None
        self.previous_gray: np.ndarray | None = None
        self.previous_in: np.ndarray | None = None
        self.previous_out: np.ndarray | None = None  # float32: no rounding carried frame to frame

    def flows(self, frame: np.ndarray) -> Motion | None:
        """Flows, trust mask and mixing weights for the next input frame (inputs only).

        Backward (t -> t-1) and forward (t-1 -> t) DIS flows, the forward-backward check, the
        colour check and the blurred weights: ``blend`` is left with one warp and one mix.
        """
        if self.flow is None:
            return None
        import cv2

        now = gray(frame)
        before, self.previous_gray = self.previous_gray, now
        before_rgb, self.previous_in = self.previous_in, frame
        if before is None or before_rgb is None:
            return None
        back, forward = self.flow(now, before), self.flow(before, now)
        where = sample_map(back)  # made once: three warps go along it
        mask = consistent(back, forward, where)
        diff = cv2.absdiff(frame, warp_at(before_rgb, where))
        colour = np.maximum(np.maximum(diff[..., 0], diff[..., 1]), diff[..., 2])
        mask &= colour <= COLOUR_TOLERANCE * 255
        share = float(mask.mean())
        if share < CUT_TRUSTED_SHARE:
            return Motion(None, None, None, share)
        trust = cv2.GaussianBlur(mask.astype(np.float32), (5, 5), 0)
        # out = k (S + a T (W - S)) + (1 - k) P with k = (1 - c)(1 - b (1 - T)):
        #     = S + k a T (W - S) + (1 - k) (P - S)
        kept = (1.0 - self.hold) * (1.0 - self.hold_untrusted * (1.0 - trust))
        carried = kept * self.carry * trust
        return Motion(where, carried[..., None], (1.0 - kept)[..., None], share)

    def blend(self, frame: np.ndarray, stylized: np.ndarray, flows: Motion | None) -> Blended:
        """The output frame for input ``frame`` whose per-frame stylization is ``stylized``."""
        import cv2

        del frame  # everything about the input is in ``flows``
        previous_out = self.previous_out
        fresh = stylized.astype(np.float32)
        if flows is None or previous_out is None or self.strength == 0 or flows.cut:
            self.previous_out = fresh
            return Blended(stylized, flows.trusted if flows else 0.0,
                           flows is not None and flows.cut)
        assert flows.where is not None and flows.carried is not None and flows.held is not None
        out = warp_at(previous_out, flows.where)
        out -= fresh
        out *= flows.carried
        held = previous_out - fresh
        held *= flows.held
        out += held
        out += fresh
        self.previous_out = out
        return Blended(cv2.convertScaleAbs(out), flows.trusted, False)  # rounds, saturates
