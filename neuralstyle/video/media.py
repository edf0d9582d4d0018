"""Clips in and out with PyAV (FFmpeg in the wheel): frames from any container FFmpeg reads, stylized
frames into MP4 (H.264, yuv420p, fast start) or WebM (VP9) chosen by the output's suffix.

The sound is copied packet for packet (remuxed, not re-encoded) where the output container takes its
codec, else transcoded (AAC for MP4, Opus for WebM). Every frame keeps its own timestamp (variable
frame rate survives); rotation metadata is applied to the pixels, so results are upright.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from neuralstyle.model.errors import StyleInputError

# The largest frame we decode: 4096x2304 (DCI 4K fits); a 32-channel activation is then ~1.2 GB.
MAX_FRAME_PIXELS = 4096 * 2304
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".wmv",
                  ".flv", ".3gp", ".ogv")


@dataclass(frozen=True)
class OutputFormat:
    """How one output suffix is written: container, video encoder and options, audio it takes."""

    container: str
    video_codec: str
    video_options: dict[str, str]
    audio_copy: frozenset[str]  # audio codecs the container takes as they are
    audio_codec: str  # what other audio is transcoded to
    options: dict[str, str]


# libx264 in one thread: less CPU than its default threads (3.2 against 3.6 ms a 640x360 frame,
# 11.3 against 12.4 at 1280x720), and the network has the cores anyway. Not bit-repeatable either
# way: the same frames, encoded again in one process, now and then gave other bits (decoded, up to
# 3 levels apart; more often with default threads); the frames handed to it are repeatable.
OUTPUT_FORMATS: dict[str, OutputFormat] = {
    ".mp4": OutputFormat("mp4", "libx264", {"crf": "18", "preset": "veryfast", "threads": "1"},
                         frozenset({"aac", "mp3", "alac", "ac3", "eac3", "opus", "flac"}), "aac",
                         {"movflags": "+faststart"}),
    ".webm": OutputFormat("webm", "libvpx-vp9",
                          {"crf": "32", "b": "0", "deadline": "realtime", "cpu-used": "8",
                           "row-mt": "1"},
                          frozenset({"opus", "vorbis"}), "libopus", {}),
}


def is_video_path(path: str) -> bool:
    """True when a path or URI names a clip (by its suffix)."""
    return Path(path.split("?", 1)[0]).suffix.lower() in VIDEO_SUFFIXES


def output_format(output: str | Path) -> OutputFormat:
    """The format for an output path, or a clear error naming the suffixes we write."""
    suffix = Path(str(output)).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise StyleInputError(f"output {output}: a stylized clip is written as "
                              f"{' or '.join(OUTPUT_FORMATS)} (got {suffix or 'no suffix'!r})")
    return OUTPUT_FORMATS[suffix]


@dataclass(frozen=True)
class ClipInfo:
    """What a clip holds, read from its headers (``frames`` is 0 when the container does not say)."""

    path: str
    width: int  # upright, after rotation
    height: int
    rotation: int  # degrees counterclockwise the display matrix turns the coded frame
    fps: Fraction
    frames: int
    duration: float
    video_codec: str
    audio_codec: str | None
    audio_channels: int
    audio_rate: int


def _open(path: str | Path, what: str) -> Any:
    """``av.open`` with the errors a user needs: missing, a folder, not a video."""
    import av

    path = Path(path)
    if not path.exists():
        raise StyleInputError(f"{what} {path} does not exist")
    if path.is_dir():
        raise StyleInputError(f"{what} {path} is a folder, not a video file")
    if path.stat().st_size == 0:
        raise StyleInputError(f"{what} {path} is empty (0 bytes)")
    try:
        return av.open(str(path), metadata_errors="ignore")
    except av.FFmpegError as exc:
        raise StyleInputError(f"{what} {path} is not a video FFmpeg can read "
                              f"({_reason(exc)})") from None


def _reason(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or str(exc)


def _video_stream(container: Any, path: str | Path, what: str) -> Any:
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["no streams"]
        raise StyleInputError(f"{what} {path} has no video stream (it holds: {', '.join(kinds)})")
    stream = container.streams.video[0]
    if stream.codec_context is None or not stream.codec_context.name:
        raise StyleInputError(f"{what} {path}: FFmpeg has no decoder for its video codec")
    return stream


def probe(path: str | Path, what: str = "video") -> ClipInfo:
    """The clip's size, rate, length and streams; decodes one frame to learn the rotation."""
    import av

    with contextlib.closing(_open(path, what)) as container:
        stream = _video_stream(container, path, what)
        audio = container.streams.audio[0] if container.streams.audio else None
        rotation = 0
        try:
            for frame in container.decode(stream):
                rotation = int(frame.rotation or 0)
                break
        except av.FFmpegError as exc:
            raise StyleInputError(f"{what} {path} cannot be decoded ({_reason(exc)})") from None
        width, height = stream.codec_context.width, stream.codec_context.height
        if rotation % 180:
            width, height = height, width
        check_size(width, height, path, what)
        fps = stream.average_rate or stream.guessed_rate or Fraction(25)
        duration = (float(stream.duration * stream.time_base) if stream.duration
                    else (container.duration or 0) / 1e6)
        return ClipInfo(str(path), width, height, rotation, Fraction(fps), int(stream.frames or 0),
                        duration, stream.codec_context.name,
                        audio.codec_context.name if audio else None,
                        audio.codec_context.channels if audio else 0,
                        audio.codec_context.sample_rate if audio else 0)


def check_size(width: int, height: int, path: str | Path, what: str) -> None:
    """Refuse frames that are empty or beyond MAX_FRAME_PIXELS, naming the file."""
    if width <= 0 or height <= 0:
        raise StyleInputError(f"{what} {path} has no frame size (0x0)")
    if width * height > MAX_FRAME_PIXELS:
        raise StyleInputError(f"{what} {path} is {width}x{height}: frames above "
                              f"{MAX_FRAME_PIXELS / 1e6:.1f} MP are not stylized; scale it down first")


@dataclass
class Frame:
    """One decoded frame, upright RGB, with its timestamp in ``time_base`` units."""

    index: int
    rgb: np.ndarray
    pts: int
    time_base: Fraction


def upright(rgb: np.ndarray, rotation: int) -> np.ndarray:
    """Apply a display-matrix rotation (degrees counterclockwise) to the pixels."""
    turns = round(rotation / 90) % 4
    return np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb


def read_clip(path: str | Path, what: str = "video", *, start_pts: int | None = None,
              stop_pts: int | None = None, audio: bool = True) -> Iterator[Frame | Any]:
    """Frames (upright RGB) and audio packets of the first audio stream, in file order.

    ``start_pts``/``stop_pts`` (the video stream's time base) read only the frames with
    ``start_pts <= pts < stop_pts``, seeking to the keyframe at or before the start (a segment of
    a long clip; their ``index`` then counts from the first frame read). Streams: one frame in
    memory at a time. A frame whose timestamp is missing gets the one
    after its predecessor; one not after its predecessor is moved just past it (the encoder needs
    strictly increasing timestamps). Raises StyleInputError for a clip that is corrupt, truncated
    before its first frame, or holds no frames.
    """
    import av

    container = _open(path, what)
    try:
        stream = _video_stream(container, path, what)
        stream.thread_type = "AUTO"
        sound = container.streams.audio[0] if audio and container.streams.audio else None
        tb = Fraction(stream.time_base or Fraction(1, 90000))
        fps = Fraction(stream.average_rate or stream.guessed_rate or 25)
        step = max(1, round(1 / (fps * tb))) if fps else 1
        index, last = 0, None
        wanted = [stream, sound] if sound is not None else [stream]
        partial = start_pts is not None or stop_pts is not None
        try:
            if start_pts:
                container.seek(start_pts, stream=stream, backward=True, any_frame=False)
            for packet in container.demux(*wanted):
                if packet.stream.type == "audio":
                    if packet.dts is not None and packet.size:
                        yield packet
                    continue
                for frame in packet.decode():
                    if index == 0:
                        check_size(frame.width, frame.height, path, what)
                    pts = frame.pts if frame.pts is not None else (
                        (last + step) if last is not None else 0)
                    if last is not None and pts <= last:
                        pts = last + 1
                    if start_pts is not None and pts < start_pts:
                        last = pts
                        continue
                    if stop_pts is not None and pts >= stop_pts:
                        return
                    rgb = upright(frame.to_ndarray(format="rgb24"), int(frame.rotation or 0))
                    yield Frame(index, rgb, pts, tb)
                    last, index = pts, index + 1
        except av.FFmpegError as exc:
            if index == 0:
                raise StyleInputError(f"{what} {path} cannot be decoded ({_reason(exc)}): "
                                      "is it truncated or corrupt?") from None
            raise StyleInputError(f"{what} {path} is truncated or corrupt after frame {index} "
                                  f"({_reason(exc)})") from None
        if index == 0:
            raise StyleInputError(f"{what} {path} holds no video frames")
        promised = int(stream.frames or 0)
        if promised and not partial and index < promised - max(1, promised // 100):
            # A fast-start file cut short: its index promises frames its data no longer holds.
            raise StyleInputError(f"{what} {path} is truncated: its index lists {promised} "
                                  f"frames, only {index} could be decoded")
    finally:
        container.close()


def frame_timestamps(path: str | Path, what: str = "video") -> list[int] | None:
    """Every video frame's timestamp in presentation order, from the packets (nothing decoded),
    or None when a packet has none (such a clip is not cut into segments)."""
    with contextlib.closing(_open(path, what)) as container:
        stream = _video_stream(container, path, what)
        stamps = []
        for packet in container.demux(stream):
            if packet.size == 0:
                continue  # the demuxer's flush packet
            if packet.pts is None:
                return None
            stamps.append(int(packet.pts))
    stamps.sort()
    return stamps


def read_audio(path: str | Path, what: str = "video") -> Iterator[Any]:
    """The first audio stream's packets (none when there is none), nothing decoded."""
    with contextlib.closing(_open(path, what)) as container:
        if not container.streams.audio:
            return
        for packet in container.demux(container.streams.audio[0]):
            if packet.dts is not None and packet.size:
                yield packet


def segment_format(fmt: OutputFormat) -> OutputFormat:
    """How a segment of a long clip is written: as the result, but H.264 without B-frames, so
    every packet's decode time equals its presentation time and segments join end to end."""
    if fmt.video_codec != "libx264":
        return fmt  # VP9 in WebM: no reordering, decode order is presentation order
    return OutputFormat(fmt.container, fmt.video_codec, {**fmt.video_options, "bf": "0"},
                        fmt.audio_copy, fmt.audio_codec, {})


# Channel count -> the layout of Opus's mapping family 1 (Vorbis channel order).
OPUS_SURROUND = {3: "3.0", 4: "quad", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1"}


class ClipWriter:
    """Writes stylized frames (and the source's audio) to ``path`` in the suffix's format.

    Open with the first frame's size; ``write_frame`` and ``write_audio`` in any interleaving
    (FFmpeg's muxer interleaves); ``close`` flushes the encoders and writes the index.
    With ``video_template`` (a segment's stream) video is not encoded: ``write_packet`` remuxes
    already encoded packets (the segments of a long clip joined end to end).
    """

    def __init__(self, path: str | Path, width: int, height: int, time_base: Fraction,
                 fps: Fraction, audio_template: Any = None, fmt: OutputFormat | None = None,
                 video_template: Any = None) -> None:
        import av

        self.fmt = fmt or output_format(path)
        self.container = av.open(str(path), "w", format=self.fmt.container,
                                 options=dict(self.fmt.options))
        self.width, self.height = even(width), even(height)
        self.encoding = video_template is None
        if video_template is not None:
            stream = self.container.add_stream_from_template(video_template)
        else:
            stream = self.container.add_stream(self.fmt.video_codec, rate=fps,
                                               options=dict(self.fmt.video_options))
            stream.width, stream.height, stream.pix_fmt = self.width, self.height, "yuv420p"
            stream.codec_context.time_base = time_base  # each frame keeps its own timestamp
            stream.time_base = time_base
        self.video = stream
        self.audio = self.decoder = self.resampler = None
        self.audio_copied = False
        if audio_template is not None:
            name = audio_template.codec_context.name
            if name in self.fmt.audio_copy:
                self.audio = self.container.add_stream_from_template(audio_template)
                self.audio_copied = True
            else:
                self._transcoder(audio_template)

    def _transcoder(self, template: Any) -> None:
        import av

        ctx = template.codec_context
        rate = 48000 if self.fmt.audio_codec == "libopus" else (ctx.sample_rate or 48000)
        layout = ctx.layout.name if ctx.layout else "stereo"
        options: dict[str, str] = {}
        if self.fmt.audio_codec == "libopus" and ctx.channels > 2:
            # libopus takes surround only with a channel mapping: family 1 (RFC 7845) carries
            # 3 to 8 channels in Vorbis order, which the resampler maps to; more: stereo.
            layout = OPUS_SURROUND.get(ctx.channels, "stereo")
            if layout != "stereo":
                options["mapping_family"] = "1"
        self.audio = self.container.add_stream(self.fmt.audio_codec, rate=rate, layout=layout,
                                               options=options)
        encoder = self.audio.codec_context
        self.decoder = av.CodecContext.create(ctx.name, "r")
        self.decoder.extradata = ctx.extradata
        self.decoder.sample_rate, self.decoder.layout = ctx.sample_rate, ctx.layout
        self.resampler = av.AudioResampler(format=encoder.format, layout=layout, rate=rate,
                                           frame_size=encoder.frame_size or None)

    def write_frame(self, rgb: np.ndarray, pts: int) -> None:
        """Encode one RGB frame (cropped to even sides) at ``pts`` (in the source's time base)."""
        import av

        frame = av.VideoFrame.from_ndarray(
            np.ascontiguousarray(rgb[: self.height, : self.width]), format="rgb24")
        frame.pts, frame.time_base = pts, self.video.codec_context.time_base
        self.container.mux(self.video.encode(frame))

    def write_packet(self, packet: Any) -> None:
        """Remux one encoded video packet (``video_template`` writers)."""
        packet.stream = self.video
        self.container.mux(packet)

    def write_audio(self, packet: Any) -> None:
        """Copy an audio packet as it is, or transcode it where the container cannot take it."""
        if self.audio is None:
            return
        if self.audio_copied:
            packet.stream = self.audio
            self.container.mux(packet)
            return
        for frame in self.decoder.decode(packet):
            frame.pts = None
            for chunk in self.resampler.resample(frame):
                self.container.mux(self.audio.encode(chunk))

    def close(self) -> None:
        """Flush the encoders and finish the file (fast start moves the index to the front)."""
        try:
            if self.encoding:
                self.container.mux(self.video.encode(None))
            if self.resampler is not None:
                for chunk in self.resampler.resample(None):
                    self.container.mux(self.audio.encode(chunk))
                self.container.mux(self.audio.encode(None))
        finally:
            self.container.close()


def even(side: int) -> int:
    """yuv420p needs even sides: drop the last row or column of an odd one."""
    return max(2, side - side % 2)
