"""Stylize a clip: decode -> flow -> the served model -> temporal blend -> encode, streaming.

The one way to stylize a video, whatever runs the model (an in-process model URI, a server URL, a
container): the executors' :class:`~neuralstyle.run.inference.Predictor` gets one frame per
request, two requests in flight so the network keeps both cores busy while this thread blends and
encodes; a decoder thread reads ahead (up to ``READ_AHEAD_BYTES``) and computes the optical flow.
An in-process model gets each frame as RGB pixels and answers pixels (its ``stylize_pixels``: the
pixels its ``predict`` gives for a lossless file of the frame, no codec either way), and starts
loading before the first frame is decoded, compiled to run the frames in flight at once (a core
each: ``LocalPredictor.with_streams``); a server gets JPEG quality 95 both ways. Memory holds
a bounded number of frames, never the clip. A painting (``style_image``) is sent with every frame,
but the model turns it into its style vector once (cached by the painting's sha256).
"""

from __future__ import annotations

import base64
import collections
import concurrent.futures
import contextlib
import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from neuralstyle import config
from neuralstyle.model.errors import StyleInputError, is_input_error
from neuralstyle.run.inference import PixelStylizer, Predictor, read_image_file, stylize_bytes
from neuralstyle.video import media, segments
from neuralstyle.video.temporal import DEFAULT_TEMPORAL, Blended, TemporalBlender

FRAME_QUALITY = 95  # frames travel to a server and back as JPEG at this quality
IN_FLIGHT = 2  # requests at once (the model stylizes STYLIZE_PARALLEL_PHOTOS=2 at a time)
# Decoded frames with their flows waiting for the network, bounded by bytes, not a count: ~4.4 MB
# a frame at 640x360 (~58 frames: the reader works ahead on the second core while the model
# loads and compiles), ~39 MB at 1920x1080 (~6 frames: a 1080p clip stays in bounded memory).
READ_AHEAD_BYTES = 256 * 1024 * 1024
Progress = Callable[[int, int], None]
FrameHook = Callable[[int, np.ndarray, np.ndarray, np.ndarray], None]


@dataclass(frozen=True)
class VideoResult:
    """What a clip's stylization wrote, for summaries, lineage and MLflow metrics."""

    output: Path
    frames: int
    width: int
    height: int
    style: str
    seconds: float
    audio: str  # "copied aac", "transcoded aac -> opus" or "none"
    cuts: int
    trusted: float  # mean share of pixels carried from the previous frame
    lineage: dict[str, Any]
    first_frame_seconds: float = 0.0  # until the first frame was encoded (model load, compile)

    @property
    def fps(self) -> float:
        """Frames per second end to end (decode, flow, network, encode), start-up included."""
        return self.frames / self.seconds if self.seconds else 0.0

    @property
    def steady_fps(self) -> float:
        """Frames per second after the first frame: the rate a long clip runs at."""
        rest = self.seconds - self.first_frame_seconds
        return (self.frames - 1) / rest if self.frames > 1 and rest > 0 else self.fps


def output_size(width: int, height: int, max_size: int) -> tuple[int, int]:
    """The stylized frame size: longest side at most ``max_size`` (never upscaled), even sides."""
    scale = min(1.0, max_size / max(width, height)) if max_size > 0 else 1.0
    return (media.even(round(width * scale)), media.even(round(height * scale)))


def _resize(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import cv2

    if (rgb.shape[1], rgb.shape[0]) == size:
        return rgb
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


def encode_jpeg(rgb: np.ndarray) -> bytes:
    """RGB uint8 -> JPEG bytes (OpenCV: ~2 ms at 640x360, a third of Pillow's time)."""
    import cv2

    ok, data = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, FRAME_QUALITY])
    if not ok:
        raise RuntimeError("OpenCV could not encode a frame as JPEG")
    return data.tobytes()


def decode_jpeg(data: bytes, size: tuple[int, int]) -> np.ndarray:
    """The model's encoded answer -> RGB uint8 at ``size``."""
    import cv2

    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise RuntimeError("the model answered a frame that is not an image")
    return _resize(np.ascontiguousarray(bgr[..., ::-1]), size)


_DONE = object()


class _ByteQueue:
    """A FIFO between the reader thread and the frame loop, bounded by the bytes it holds (one
    item is always let in, however large); ``close`` drops what is held and frees a waiting
    ``put``."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.held = 0
        self.items: collections.deque[tuple[Any, int]] = collections.deque()
        self.closed = False
        self.changed = threading.Condition()

    def put(self, item: Any, size: int) -> bool:
        """Queue ``item`` once it fits; False when the queue was closed meanwhile."""
        with self.changed:
            while self.held and self.held + size > self.budget and not self.closed:
                self.changed.wait()
            if self.closed:
                return False
            self.items.append((item, size))
            self.held += size
            self.changed.notify_all()
            return True

    def get(self) -> Any:
        with self.changed:
            while not self.items:
                self.changed.wait()
            item, size = self.items.popleft()
            self.held -= size
            self.changed.notify_all()
            return item

    def close(self) -> None:
        with self.changed:
            self.closed = True
            self.items.clear()
            self.held = 0
            self.changed.notify_all()


def _nbytes(item: Any) -> int:
    """The memory a queued item holds: a frame with its motion (temporal.Motion), or an audio packet."""
    if not isinstance(item, tuple):
        return int(getattr(item, "size", 0) or 0) + 64
    _, small, motion = item  # temporal.Motion or None
    return small.nbytes + (motion.nbytes if motion is not None else 0)


def _read_ahead(video: str | Path, size: tuple[int, int], blender: TemporalBlender,
                what: str, **window: Any) -> Iterator[Any]:
    """Decoded, resized frames with their flows (and audio packets), from a reader thread that
    works up to ``READ_AHEAD_BYTES`` ahead.

    ``window`` (``start_pts``, ``stop_pts``, ``audio``) goes to ``media.read_clip``.
    """
    items = _ByteQueue(READ_AHEAD_BYTES)

    def produce() -> None:
        try:
            for item in media.read_clip(video, what, **window):
                if isinstance(item, media.Frame):
                    small = _resize(item.rgb, size)
                    item.rgb = small  # the full-size frame is not needed past here
                    item = (item, small, blender.flows(small))
                if not items.put(item, _nbytes(item)):
                    return
            items.put(_DONE, 0)
        except BaseException as exc:  # handed to the consumer, raised there
            items.put(exc, 0)

    thread = threading.Thread(target=produce, name="video-decode", daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        items.close()  # frees a producer waiting for room; it stops at its next frame
        thread.join()


class _Job:
    """What every frame of one clip shares: its size, the request, the painting, the model's
    answers about itself (resolved style, fingerprint, precision)."""

    def __init__(self, video: str | Path, output: str | Path, style: str, predictor: Predictor,
                 params: dict[str, Any] | None, temporal: float, flow_preset: str,
                 style_image: str | Path | None) -> None:
        from neuralstyle.model.contract import Params

        self.what = "video"
        self.fmt = media.output_format(output)
        if not 0.0 <= temporal <= 1.0:
            raise StyleInputError(f"param temporal={temporal} must be in 0..1 (0 = every frame "
                                  "on its own)")
        parsed = Params.parse({**(params or {}), "format": "jpeg"})
        self.info = media.probe(video, self.what)
        self.size = output_size(self.info.width, self.info.height, parsed.max_size)
        self.request = {**(params or {}), "max_size": max(self.size), "format": "jpeg",
                        "quality": FRAME_QUALITY}
        self.painting = (read_image_file(style_image, "style_image")
                         if style_image is not None else None)
        self._painting_b64 = (base64.b64encode(self.painting).decode("ascii")
                              if self.painting is not None else None)
        self._pixels: PixelStylizer | None | bool = False  # False: not asked yet
        # An in-process model runs the frames in flight at once, a core each (with_streams).
        with_streams = getattr(predictor, "with_streams", None)
        self.predictor = with_streams(IN_FLIGHT) if with_streams is not None else predictor
        self.video, self.style = video, style
        self.style_image, self.temporal, self.flow_preset = style_image, temporal, flow_preset
        self.label = f"{self.what} {video}"
        self.resolved = {"style": style, "model": "", "precision": ""}

    def run(self, index: int, small: np.ndarray) -> np.ndarray:
        """One frame through the model (a request thread): as RGB pixels both ways when the
        model runs in this process, else as JPEG (a server, a container)."""
        what = f"{self.label} frame {index}"
        stylizer = self._pixel_stylizer()
        if stylizer is not None:
            stylized, row = self._run_pixels(stylizer, small, what)
        else:
            encoded, row = stylize_bytes(encode_jpeg(small), self.style, self.predictor,
                                         self.request, what=what, style_image=self.painting,
                                         style_image_what=f"style_image {self.style_image}")
            stylized = decode_jpeg(encoded, self.size)
        self.resolved.update(style=str(row["style"]), model=str(row.get("model", "") or ""),
                             precision=str(row.get("precision", "") or ""))
        return stylized

    def _pixel_stylizer(self) -> PixelStylizer | None:
        """The in-process model's raw path (asked once; waits for the model to load)."""
        if self._pixels is False:
            ask = getattr(self.predictor, "pixel_stylizer", None)
            self._pixels = ask() if ask is not None else None
        return self._pixels  # type: ignore[return-value]

    def _run_pixels(self, stylizer: PixelStylizer, small: np.ndarray,
                    what: str) -> tuple[np.ndarray, dict[str, Any]]:
        try:
            stylized, row = stylizer(small, self.style or "", self.request,
                                     style_image=self._painting_b64, what=what)
        except Exception as exc:
            if not is_input_error(exc):
                raise
            # Name the painting's file, as the JPEG path does (the model names the frame).
            message = exc.message.replace(f"style_image {what}", f"style_image {self.style_image}")
            raise StyleInputError(message) from None
        if (stylized.shape[1], stylized.shape[0]) != self.size:
            stylized = _resize(stylized, self.size)
        return stylized, row


@dataclass
class _Tally:
    """What the frame loop counted."""

    frames: int = 0
    cuts: int = 0
    trusted: float = 0.0  # sum of the trusted shares
    first_frame: float = 0.0


def _stylize_frames(job: _Job, items: Iterator[Any], writer: media.ClipWriter,
                    blender: TemporalBlender, tally: _Tally, started: float, *,
                    keep_from_pts: int | None = None, index_offset: int = 0,
                    on_frame: FrameHook | None = None, progress: Progress | None = None,
                    total: int = 0) -> None:
    """The pipelined loop: IN_FLIGHT frames at the model while this thread blends and encodes.

    Frames before ``keep_from_pts`` only warm the blend (a segment's overlap) and are not written;
    the kept ones are written at ``pts - pts_shift`` (a segment's file starts at 0: MP4 would
    round a later start to its edit list's milliseconds).
    """
    pts_shift = keep_from_pts or 0
    pending: collections.deque[Any] = collections.deque()
    with _RequestPool() as pool:

        def finish_one() -> None:
            item = pending.popleft()
            if not isinstance(item, tuple):
                writer.write_audio(item)
                return
            frame, small, flows, future = item
            stylized = future.result()
            blended: Blended = blender.blend(small, stylized, flows)
            if keep_from_pts is not None and frame.pts < keep_from_pts:
                return
            tally.cuts += blended.cut
            tally.trusted += blended.trusted
            writer.write_frame(blended.rgb, frame.pts - pts_shift)
            if on_frame is not None:
                on_frame(index_offset + frame.index, small, stylized, blended.rgb)
            tally.frames += 1
            if tally.frames == 1:
                tally.first_frame = time.perf_counter() - started
            if progress is not None:
                progress(tally.frames, total)

        for item in items:
            if isinstance(item, tuple):
                frame, small, flows = item
                pending.append((frame, small, flows, pool.submit(job.run, frame.index, small)))
            else:
                pending.append(item)
            while sum(isinstance(p, tuple) for p in pending) > IN_FLIGHT:
                finish_one()
        while pending:
            finish_one()


@contextlib.contextmanager
def _opencv_threads(count: int) -> Iterator[None]:
    """OpenCV's own thread pool at ``count`` while a clip runs, as it was after."""
    import cv2

    before = cv2.getNumThreads()
    cv2.setNumThreads(count)
    try:
        yield
    finally:
        cv2.setNumThreads(before)


@_opencv_threads(1)  # DIS flow: 3.2 against 7.9 CPU ms with OpenCV's 2 threads; the network has the cores
def stylize_video(
    video: str | Path, output: str | Path, style: str, predictor: Predictor,
    params: dict[str, Any] | None = None, *, temporal: float = DEFAULT_TEMPORAL,
    flow_preset: str = "fast", segment_frames: int = 0, style_image: str | Path | None = None,
    style_image_uri: str | None = None, input_uri: str | None = None,
    model_uri: str | None = None, tracking_uri: str | None = None,
    progress: Progress | None = None, on_frame: FrameHook | None = None,
) -> VideoResult:
    """Stylize ``video`` into ``output`` (.mp4 or .webm) atomically, lineage sidecar beside it.

    ``temporal`` (0..1) is the consistency strength: 0 stylizes every frame on its own.
    ``segment_frames`` > 0 cuts a longer clip into segments committed one by one beside the
    output (neuralstyle.video.segments), so a rerun after an interruption resumes; they are
    joined when all are done. ``on_frame(index, input, per_frame, output)`` sees each frame
    (benchmarks and tests). Bad input raises StyleInputError naming the file, and leaves nothing
    at ``output``.
    """
    started = time.perf_counter()
    job = _Job(video, output, style, predictor, params, temporal, flow_preset, style_image)
    load = getattr(job.predictor, "load_in_background", None)
    if load is not None:  # an in-process model loads while the clip decodes and flows
        load()
    pieces = (segments.plan(media.frame_timestamps(video, job.what), segment_frames)
              if segment_frames > 0 else [])
    if len(pieces) > 1:
        folder = segment_folder(job, output, params, segment_frames, model_uri)
        for piece in pieces:
            def along(done: int, _: int, piece: segments.Segment = piece) -> None:
                if progress is not None:
                    progress(piece.start + done, pieces[-1].stop)

            if not stylize_segment(job, piece, folder, on_frame=on_frame, progress=along):
                along(piece.frames, 0)  # committed by an earlier, interrupted run
        return join_segments(job, pieces, folder, output, params, started, segment_frames,
                             style_image_uri=style_image_uri, input_uri=input_uri,
                             model_uri=model_uri, tracking_uri=tracking_uri)
    return _whole_clip(job, output, params, started, style_image_uri=style_image_uri,
                       input_uri=input_uri, model_uri=model_uri, tracking_uri=tracking_uri,
                       progress=progress, on_frame=on_frame)


def segment_job(video: str | Path, output: str | Path, style: str, predictor: Predictor | None,
                params: dict[str, Any] | None, *, temporal: float, flow_preset: str,
                segment_frames: int, style_image: str | Path | None = None,
                model_uri: str | None = None, identity: dict[str, Any] | None = None,
                ) -> tuple[_Job, list[segments.Segment], Path]:
    """A clip's job, its segments and their folder: what a segment task or the joining task needs
    (``predictor`` may be None for joining, which runs no model). ``identity``: see
    ``segments.work_dir``."""
    job = _Job(video, output, style, predictor, params, temporal, flow_preset,  # type: ignore[arg-type]
               style_image)
    pieces = segments.plan(media.frame_timestamps(video, job.what), segment_frames)
    return job, pieces, segment_folder(job, output, params, segment_frames, model_uri, identity)


def _whole_clip(job: _Job, output: str | Path, params: dict[str, Any] | None, started: float,
                **how: Any) -> VideoResult:
    """One pass: decode, stylize, blend and encode the clip with its sound."""
    import av

    from neuralstyle.atomic import atomic_path

    blender = TemporalBlender(job.temporal, job.flow_preset)
    tally = _Tally()
    progress, on_frame = how.pop("progress"), how.pop("on_frame")
    with atomic_path(output) as tmp:
        with av.open(str(job.video)) as source:
            template = source.streams.audio[0] if source.streams.audio else None
            writer = media.ClipWriter(tmp, job.size[0], job.size[1], _time_base(source),
                                      job.info.fps, template, job.fmt)
            audio = _audio_label(job, template, writer)
            try:
                _stylize_frames(job, _read_ahead(job.video, job.size, blender, job.what), writer,
                                blender, tally, started, on_frame=on_frame, progress=progress,
                                total=job.info.frames)
            finally:
                writer.close()
        record = _lineage(job, output, tmp, params, tally, audio, **how)
    return VideoResult(Path(output), tally.frames, job.size[0], job.size[1],
                       job.resolved["style"], time.perf_counter() - started, audio, tally.cuts,
                       tally.trusted / tally.frames if tally.frames else 0.0, record,
                       tally.first_frame)


def _audio_label(job: _Job, template: Any, writer: media.ClipWriter) -> str:
    if template is None:
        return "none"
    if writer.audio_copied:
        return f"copied {job.info.audio_codec}"
    return f"transcoded {job.info.audio_codec} -> {writer.audio.codec_context.name}"


def _lineage(job: _Job, output: str | Path, written: Path, params: dict[str, Any] | None,
             tally: _Tally, audio: str, *, style_image_uri: str | None, input_uri: str | None,
             model_uri: str | None, tracking_uri: str | None,
             extra: dict[str, Any] | None = None, pieces: int = 1) -> dict[str, Any]:
    """The lineage record of ``written`` (the temporary result), stored as ``output``'s sidecar.

    The sidecar is written first: the result's existence marks the work done.
    """
    from neuralstyle.atomic import write_bytes_atomic
    from neuralstyle.model.contract import DEFAULT_PARAMS
    from neuralstyle.run import lineage

    requested = (f"style_image {style_image_uri or job.style_image}" if job.painting
                 else job.style)
    record = lineage.build_record(
        input_uri=input_uri or str(job.video), input_bytes=b"", output_uri=str(output),
        output_bytes=b"", style=requested, resolved_style=job.resolved["style"],
        params={**DEFAULT_PARAMS, **(params or {}), "format": job.fmt.container,
                "temporal": job.temporal, "flow_preset": job.flow_preset, **(extra or {})},
        fingerprint=job.resolved["model"],
        model_uri=(model_uri or getattr(job.predictor, "model_uri", None)
                   or config.DEFAULT_MODEL_URI),
        tracking_uri=config.tracking_uri(tracking_uri), precision=job.resolved["precision"] or None)
    info = job.info
    record["input"].update(sha256=_sha256_file(job.video), bytes=Path(job.video).stat().st_size)
    record["output"].update(sha256=_sha256_file(written), bytes=written.stat().st_size)
    record["video"] = {"frames": tally.frames, "width": job.size[0], "height": job.size[1],
                       "fps": float(info.fps), "audio": audio, "scene_cuts": tally.cuts,
                       "segments": pieces, "source": {"width": info.width, "height": info.height,
                                  "rotation": info.rotation, "codec": info.video_codec}}
    write_bytes_atomic(lineage.sidecar_path(output), lineage.to_json(record))
    return record


def segment_folder(job: _Job, output: str | Path, params: dict[str, Any] | None,
                   segment_frames: int, model_uri: str | None,
                   identity: dict[str, Any] | None = None) -> Path:
    """The folder of this clip's committed segments (named by what changes their pixels)."""
    painting = hashlib.sha256(job.painting).hexdigest() if job.painting else None
    return segments.work_dir(output, job.video, identity=identity, settings={
        "style": job.style, "painting": painting, "params": params or {},
        "temporal": job.temporal, "flow_preset": job.flow_preset, "segment_frames": segment_frames,
        "overlap": segments.SEGMENT_OVERLAP,
        "model": model_uri or getattr(job.predictor, "model_uri", None) or ""})


def stylize_segment(job: _Job, piece: segments.Segment, folder: Path, *,
                    on_frame: FrameHook | None = None, progress: Progress | None = None) -> bool:
    """Stylize one segment into ``folder`` (video only, committed atomically); False when it
    was already there. Its overlap frames warm the blend and are dropped."""
    import json

    import av

    from neuralstyle.atomic import atomic_path, write_bytes_atomic

    path = segments.segment_path(folder, piece, f".{job.fmt.container}")
    if path.exists():
        return False
    started = time.perf_counter()
    blender = TemporalBlender(job.temporal, job.flow_preset)
    tally = _Tally()
    items = _read_ahead(job.video, job.size, blender, job.what,  # the first: no seek
                        start_pts=piece.warm_pts if piece.warm else None,
                        stop_pts=piece.stop_pts, audio=False)
    with av.open(str(job.video)) as source:
        time_base = _time_base(source)
    with atomic_path(path) as tmp:
        writer = media.ClipWriter(tmp, job.size[0], job.size[1], time_base, job.info.fps, None,
                                  media.segment_format(job.fmt))
        try:
            _stylize_frames(job, items, writer, blender, tally, started,
                            keep_from_pts=piece.start_pts, index_offset=piece.warm,
                            on_frame=on_frame, progress=progress, total=piece.frames)
        finally:
            writer.close()
        if tally.frames != piece.frames:
            raise RuntimeError(f"{job.label}: segment {piece.name} decoded {tally.frames} "
                               f"frames, the clip's index lists {piece.frames}")
        stats = {"frames": tally.frames, "cuts": tally.cuts, "trusted": tally.trusted,
                 "start_pts": piece.start_pts,
                 "seconds": time.perf_counter() - started, "resolved": job.resolved}
        write_bytes_atomic(segments.stats_path(path), json.dumps(stats).encode())
    return True


def join_segments(job: _Job, pieces: list[segments.Segment], folder: Path, output: str | Path,
                  params: dict[str, Any] | None, started: float, segment_frames: int,
                  **how: Any) -> VideoResult:
    """Remux the finished segments end to end with the source's sound into ``output``
    (atomically, lineage first), then remove the segments."""
    import heapq
    import json
    import shutil

    import av

    from neuralstyle.atomic import atomic_path

    suffix = f".{job.fmt.container}"
    paths = [segments.segment_path(folder, piece, suffix) for piece in pieces]
    missing = [p.name for p in paths if not p.exists()]
    if missing:
        raise RuntimeError(f"{job.label}: segments not stylized yet: {', '.join(missing)}")
    tally = _Tally()
    starts = []
    for path in paths:
        stats = json.loads(segments.stats_path(path).read_text())
        starts.append(stats["start_pts"])
        tally.frames += stats["frames"]
        tally.cuts += stats["cuts"]
        tally.trusted += stats["trusted"]
        job.resolved.update(stats["resolved"])
    first = av.open(str(paths[0]))
    with atomic_path(output) as tmp, contextlib.closing(first), av.open(str(job.video)) as source:
        template = source.streams.audio[0] if source.streams.audio else None
        writer = media.ClipWriter(tmp, job.size[0], job.size[1], _time_base(source),
                                  job.info.fps, template, job.fmt,
                                  video_template=first.streams.video[0])
        audio = _audio_label(job, template, writer)
        try:
            video_packets = ((_seconds(p), 0, n, p) for n, p in
                             enumerate(_segment_packets(paths, starts, _time_base(source))))
            audio_packets = ((_seconds(p), 1, n, p)
                             for n, p in enumerate(media.read_audio(job.video, job.what)))
            for _, kind, _, packet in heapq.merge(video_packets, audio_packets,
                                                  key=lambda item: item[:3]):
                if kind == 0:
                    writer.write_packet(packet)
                else:
                    writer.write_audio(packet)
        finally:
            writer.close()
        record = _lineage(job, output, tmp, params, tally, audio,
                          extra={"segment_frames": segment_frames}, pieces=len(pieces), **how)
    shutil.rmtree(folder, ignore_errors=True)
    return VideoResult(Path(output), tally.frames, job.size[0], job.size[1],
                       job.resolved["style"], time.perf_counter() - started, audio, tally.cuts,
                       tally.trusted / tally.frames if tally.frames else 0.0, record)


def _segment_packets(paths: list[Path], starts: list[int], time_base: Any) -> Iterator[Any]:
    """The encoded video packets of the segments in order (each file opened in turn), moved
    back to their place in the clip: ``starts`` in the source's ``time_base``."""
    from fractions import Fraction

    import av

    for path, start in zip(paths, starts, strict=True):
        with av.open(str(path)) as container:
            for packet in container.demux(container.streams.video[0]):
                if packet.size and packet.dts is not None:
                    scale = Fraction(packet.time_base) / Fraction(time_base)
                    packet.pts = start + round(packet.pts * scale)
                    packet.dts = start + round(packet.dts * scale)
                    packet.duration = round(packet.duration * scale)
                    packet.time_base = time_base
                    yield packet


def _seconds(packet: Any) -> float:
    """A packet's decode time in seconds, to interleave streams."""
    return float(packet.dts * packet.time_base)


def default_video_output(video: str, style: str, folder: str = "out") -> str:
    """``out/<stem>-<style>.mp4``: derived only from the input and style, like a photo's."""
    from neuralstyle.run.inference import default_output

    return str(Path(default_output(video, style, folder)).with_suffix(".mp4"))


@contextlib.contextmanager
def progress_bar(what: str) -> Iterator[Progress]:
    """A tqdm bar on stderr (frames, frames per second, ETA) fed by ``stylize_video``."""
    from tqdm import tqdm

    bar = tqdm(desc=Path(what.split("://", 1)[-1]).name, unit="frame", dynamic_ncols=True)
    try:
        def update(done: int, total: int) -> None:
            if total and bar.total != total:
                bar.total = total
            bar.update(done - bar.n)

        yield update
    finally:
        bar.close()


def _time_base(container: Any) -> Any:
    stream = container.streams.video[0]
    return stream.time_base


def _sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class _RequestPool(concurrent.futures.ThreadPoolExecutor):
    """The request threads; on an error the frames still queued are cancelled, not run."""

    def __init__(self) -> None:
        super().__init__(max_workers=IN_FLIGHT, thread_name_prefix="video-predict")

    def __exit__(self, *exc: Any) -> bool:
        self.shutdown(wait=True, cancel_futures=True)
        return False
