"""A preview strip: a few frames of the original above the same frames stylized (for MLflow runs,
the README and the benchmark's report)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np


def sample_frames(path: str | Path, count: int) -> list[np.ndarray]:
    """``count`` frames spread over the clip, upright RGB (decodes the clip once, streaming)."""
    from neuralstyle.video import media

    info = media.probe(path)
    total = info.frames or int(info.duration * float(info.fps)) or count
    wanted = {round(i * (total - 1) / max(1, count - 1)) for i in range(count)}
    picked = []
    for item in media.read_clip(path):
        if isinstance(item, media.Frame) and item.index in wanted:
            picked.append(item.rgb)
    return picked[:count]


def strip(rows: list[list[np.ndarray]], height: int = 180, gap: int = 4) -> np.ndarray:
    """Rows of frames side by side, each scaled to ``height``, rows stacked: one RGB picture."""
    import cv2

    lines = []
    for frames in rows:
        scaled = [cv2.resize(f, (round(f.shape[1] * height / f.shape[0]), height),
                             interpolation=cv2.INTER_AREA) for f in frames]
        pad = np.full((height, gap, 3), 255, np.uint8)
        lines.append(np.concatenate([x for f in scaled for x in (f, pad)][:-1], axis=1))
    width = max(line.shape[1] for line in lines)
    lines = [np.pad(line, ((0, gap), (0, width - line.shape[1]), (0, 0)), constant_values=255)
             for line in lines]
    return np.concatenate(lines, axis=0)[:-gap]


def preview_png(original: str | Path, stylized: str | Path, count: int = 4) -> bytes:
    """PNG bytes of ``count`` frames: the original clip above the stylized one."""
    from PIL import Image

    picture = strip([sample_frames(original, count), sample_frames(stylized, count)])
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, "PNG")
    return buffer.getvalue()
