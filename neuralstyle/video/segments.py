"""Long clips in segments: cut at fixed frame counts, each stylized and committed on its own.

A segment is ``segment_frames`` consecutive frames, named by their timestamps. Fixed lengths, not
keyframes: the frames are re-encoded anyway, so a cut need not fall on a keyframe of the source,
and keyframe spacing is the encoder's choice (a screen recording may have one keyframe a minute,
a phone one a second), which would make segments as uneven as it likes. The price is a little
decoding: a segment's reader seeks to the keyframe at or before its first frame and decodes
forward from there (milliseconds a frame, against the network's hundreds).

Consistency across a cut: a segment starts ``SEGMENT_OVERLAP`` frames early, stylizes and blends
them to warm the temporal blend (the carried picture), and discards them. The blend forgets its
start geometrically (the carried picture keeps a share ``(1 - c) a + c`` of itself per frame along
trusted motion, 0.66 at the default; less elsewhere: ``temporal.mix_weights``), so by the first kept
frame the two chains agree closely: tests/video/test_segments.py measures the seam.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Frames stylized before a segment's first frame to warm the blend. Measured on seeded pans
# (tests/video/test_segments.py): the seam pair's warping error is 1.2-1.8x the same pair's in
# the one-piece result with 8 frames, 1.03-1.05x with 12, 1.00-1.02x with 16.
SEGMENT_OVERLAP = 12
# 300 frames: 10-12 s, ~2 min of CPU at 640 px; an interruption loses at most that, and the
# overlap costs 12/300 = 4% more frames through the model.
SEGMENT_FRAMES = 300


@dataclass(frozen=True)
class Segment:
    """Frames ``start`` (inclusive) to ``stop`` (exclusive), stylized from ``warm`` on."""

    index: int
    start: int
    stop: int
    warm: int
    warm_pts: int
    start_pts: int
    stop_pts: int | None  # None for the last segment: to the end of the clip

    @property
    def frames(self) -> int:
        return self.stop - self.start

    @property
    def name(self) -> str:
        return f"{self.index:05d}-{self.start}-{self.stop}"


def plan(timestamps: list[int] | None, segment_frames: int,
         overlap: int | None = None) -> list[Segment]:
    """The segments of a clip whose frames have ``timestamps`` (presentation order).

    One segment when ``segment_frames`` is 0, the clip is not longer than it, or the timestamps
    are unknown; a last piece shorter than half a segment joins the one before it.
    """
    overlap = SEGMENT_OVERLAP if overlap is None else overlap
    count = len(timestamps or [])
    if not timestamps or segment_frames <= 0 or count <= segment_frames:
        return [Segment(0, 0, count, 0, timestamps[0] if timestamps else 0,
                        timestamps[0] if timestamps else 0, None)]
    starts = list(range(0, count, segment_frames))
    if len(starts) > 1 and count - starts[-1] < segment_frames // 2:
        starts.pop()
    segments = []
    for index, start in enumerate(starts):
        stop = starts[index + 1] if index + 1 < len(starts) else count
        warm = max(0, start - overlap)
        segments.append(Segment(index, start, stop, warm, timestamps[warm], timestamps[start],
                                timestamps[stop] if stop < count else None))
    return segments


def source_identity(video: str | Path) -> dict[str, Any]:
    """A local clip as its segments are keyed: path, size and modification time."""
    source = Path(video).stat()
    return {"video": str(Path(video).resolve()), "size": source.st_size,
            "mtime": source.st_mtime_ns}


def work_dir(output: str | Path, video: str | Path, settings: dict[str, Any],
             identity: dict[str, Any] | None = None) -> Path:
    """Where a clip's finished segments wait: beside the result, named by everything that
    changes their pixels (the source, style, params, model), so a rerun with other settings
    never reuses them. ``identity`` names the source where its local copy's path and time do
    not (an S3 clip downloaded on several machines: its URI and ETag); default: the file's."""
    key = json.dumps({**(identity or source_identity(video)), **settings}, sort_keys=True,
                     default=str)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    output = Path(output)
    return output.parent / f".{output.name}.segments-{digest}"


def remote_folder(segments_uri: str, folder: Path) -> str:
    """The S3 prefix holding the segments of ``folder`` (a ``work_dir``) for workers on other
    machines: ``<segments_uri>/<output name>.segments-<digest>``."""
    return f"{segments_uri.rstrip('/')}/{folder.name.lstrip('.')}"


def segment_path(folder: Path, segment: Segment, suffix: str) -> Path:
    """The committed segment (its existence marks it done); stats in a sidecar beside it."""
    return folder / f"{segment.name}{suffix}"


def stats_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")
