"""Temporal consistency at the default ``temporal`` on a seeded family of synthetic camera moves
(pans and zooms of several speeds, sub-pixel ones included) whose exact flow is known: the
warping error (Lai et al. 2018) is measured along that exact flow, never the DIS flow the method
uses, against the same frames stylized one by one by the real network, with fidelity beside it."""

from __future__ import annotations

import numpy as np
import pytest

from neuralstyle.builder.samples import sample_rgb
from neuralstyle.run.inference import LocalPredictor, stylize_bytes
from neuralstyle.video import metrics
from neuralstyle.video.clips import decode_jpeg, encode_jpeg
from neuralstyle.video.temporal import DEFAULT_TEMPORAL, TemporalBlender

pytestmark = pytest.mark.slow  # the registry fixture packages the real networks

SIZE = (192, 128)  # w, h
FRAMES = 10
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def camera(photo: np.ndarray, pan: tuple[float, float], zoom: float
           ) -> tuple[list[np.ndarray], list[tuple[np.ndarray, np.ndarray]]]:
    """Frames of a camera panning by ``pan`` px and zooming in by ``zoom`` per frame over
    ``photo``, resampled exactly (frame_t(x) = photo(s_t (x - c) + p_t)), and the exact
    (forward t-1 -> t, backward t -> t-1) flow of each pair."""
    import cv2

    width, height = SIZE
    scale = 1.8 * max(width / photo.shape[1], height / photo.shape[0])
    big = cv2.resize(photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    centre = np.array([(width - 1) / 2, (height - 1) / 2])
    start = np.array([big.shape[1] / 2, big.shape[0] / 2]) - np.array(pan) * FRAMES / 2
    scales = [zoom ** -t for t in range(FRAMES)]
    points = [start + t * np.array(pan) for t in range(FRAMES)]
    frames = []
    for s, p in zip(scales, points, strict=True):
        affine = np.array([[s, 0, p[0] - s * centre[0]], [0, s, p[1] - s * centre[1]]])
        frames.append(cv2.warpAffine(big, affine, SIZE, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                     borderMode=cv2.BORDER_REFLECT))
    xs, ys = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    grid = np.stack([xs, ys], -1)

    def flow(t_from: int, t_to: int) -> np.ndarray:
        seen = scales[t_from] * (grid - centre) + points[t_from]  # the photo point at x
        there = (seen - points[t_to]) / scales[t_to] + centre
        return (there - grid).astype(np.float32)

    return frames, [(flow(t - 1, t), flow(t, t - 1)) for t in range(1, FRAMES)]


def family() -> list[tuple[str, tuple[float, float], float]]:
    """Seeded: four pans (0.5 to 6 px a frame, any direction), three zooms (1 to 4 % a frame),
    one pan with a zoom."""
    rng = np.random.default_rng(18)
    moves = []
    for i, speed in enumerate((0.5, 1.5, 3.0, 6.0)):
        angle = rng.uniform(0, 2 * np.pi)
        moves.append((PHOTOS[i % 4], (speed * np.cos(angle), speed * np.sin(angle)), 1.0))
    for i, zoom in enumerate((1.01, 1.02, 1.04)):
        moves.append((PHOTOS[(i + 1) % 4], (0.0, 0.0), zoom))
    moves.append((PHOTOS[3], (2.0, -1.0), 1.02))
    return moves


@pytest.fixture(scope="module")
def clips(registry) -> list[tuple[str, list[np.ndarray], list[np.ndarray], list]]:
    """(label, input frames, the same frames stylized one by one, exact flows) per move."""
    predictor = LocalPredictor(registry.model_uri, registry.tracking_uri)
    params = {"max_size": max(SIZE), "format": "jpeg", "quality": 95}
    out = []
    for photo, pan, zoom in family():
        frames, flows = camera(sample_rgb(photo), pan, zoom)
        alone = [decode_jpeg(stylize_bytes(encode_jpeg(f), "7", predictor, params)[0], SIZE)
                 for f in frames]
        out.append((f"{photo} pan ({pan[0]:+.1f}, {pan[1]:+.1f}) zoom {zoom}", frames, alone,
                    flows))
    return out


def blended(frames: list[np.ndarray], alone: list[np.ndarray], temporal: float
            ) -> list[np.ndarray]:
    blender = TemporalBlender(temporal)
    return [blender.blend(f, s, blender.flows(f)).rgb for f, s in zip(frames, alone, strict=True)]


def test_the_default_halves_the_warping_error_along_the_exact_flow(clips) -> None:
    ratios, fidelities = [], []
    for label, frames, alone, flows in clips:
        base = metrics.warping_error(frames, alone, flows=flows)
        outs = blended(frames, alone, DEFAULT_TEMPORAL)
        ours = metrics.warping_error(frames, outs, flows=flows)
        ratios.append(ours / base)
        fidelities.append(metrics.fidelity(outs, alone))
        print(f"{label}: warping error per-frame {base:.5f}, temporal={DEFAULT_TEMPORAL} "
              f"{ours:.5f} ({ratios[-1]:.2f}x), fidelity {fidelities[-1]:.1f} dB")
    print(f"{len(ratios)} moves: ratio min {min(ratios):.2f} median {np.median(ratios):.2f} "
          f"worst {max(ratios):.2f}; fidelity min {min(fidelities):.1f} median "
          f"{np.median(fidelities):.1f} dB")
    assert max(ratios) <= 0.5
    assert min(fidelities) >= 27.0


def test_nothing_of_the_previous_shot_shows_after_a_cut(clips) -> None:
    """Two moves back to back: the first frame of the second shot is its own stylization,
    untouched, and so the frames after it carry nothing of the first shot."""
    (_, a_in, a_alone, _), (_, b_in, b_alone, _) = clips[2], clips[3]  # chelsea, rocket
    outs = blended(a_in + b_in, a_alone + b_alone, DEFAULT_TEMPORAL)
    cut = len(a_in)
    assert np.array_equal(outs[cut], b_alone[0])
    assert np.array_equal(outs[cut:], blended(b_in, b_alone, DEFAULT_TEMPORAL))
    assert not np.array_equal(outs[cut - 1], a_alone[-1])  # the blend was on before the cut


def test_zero_is_every_frame_on_its_own(clips) -> None:
    _, frames, alone, _ = clips[2]
    assert all(np.array_equal(o, s) for o, s in zip(blended(frames, alone, 0.0), alone,
                                                    strict=True))


def test_a_motion_counts_every_array_it_holds_and_a_cut_holds_none() -> None:
    """The read-ahead's byte budget reads ``Motion.nbytes``: it must count the sample map and
    both weights (a rename once left the map out, and the reader went 7 frames ahead, not 4)."""
    from neuralstyle.video.temporal import Motion

    where = np.zeros((80, 128, 2), np.float32)
    weight = np.zeros((80, 128, 1), np.float32)
    assert Motion(where, weight, weight.copy(), 0.5).nbytes == where.nbytes + 2 * weight.nbytes
    assert Motion(None, None, None, 0.0).nbytes == 0
