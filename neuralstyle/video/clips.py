"""Stylize a clip: decode -> flow -> the served model -> temporal blend -> encode, streaming.

The one way to stylize a video, whatever runs the model (an in-process model URI, a server URL, a
container): the executors' :class:`~neuralstyle.run.inference.Predictor` gets one frame per request
(as JPEG quality 95), two requests in flight so the network keeps both cores busy while this thread
blends and encodes; a decoder thread reads ahead and computes the optical flow. Memory holds a few
frames, never the clip. A painting (``style_image``) is sent with every frame, but the model turns it
into its style vector once (cached by the painting's sha256).
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import hashlib
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from neuralstyle import config
from neuralstyle.model.errors import StyleInputError
from neuralstyle.run.inference import Predictor, read_image_file, stylize_bytes
from neuralstyle.video import media
from neuralstyle.video.temporal import DEFAULT_TEMPORAL, Blended, TemporalBlender

FRAME_QUALITY = 95  # frames travel to the model and back as JPEG at this quality
IN_FLIGHT = 2  # requests at once (the model stylizes STYLIZE_PARALLEL_PHOTOS=2 at a time)
READ_AHEAD = 8  # decoded frames (with their flow) waiting for the network
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


def _read_ahead(video: str | Path, size: tuple[int, int], blender: TemporalBlender,
                what: str) -> Iterator[Any]:
    """Decoded, resized frames with their flows (and audio packets), from a reader thread."""
    items: queue.Queue[Any] = queue.Queue(maxsize=READ_AHEAD)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in media.read_clip(video, what):
                if stop.is_set():
                    return
                if isinstance(item, media.Frame):
                    small = _resize(item.rgb, size)
                    item = (item, small, blender.flows(small))
                items.put(item)
            items.put(_DONE)
        except BaseException as exc:  # handed to the consumer, raised there
            items.put(exc)

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
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                items.get_nowait()
            except queue.Empty:
                thread.join(0.05)


def stylize_video(
    video: str | Path, output: str | Path, style: str, predictor: Predictor,
    params: dict[str, Any] | None = None, *, temporal: float = DEFAULT_TEMPORAL,
    flow_preset: str = "fast", style_image: str | Path | None = None,
    style_image_uri: str | None = None, input_uri: str | None = None,
    model_uri: str | None = None, tracking_uri: str | None = None,
    progress: Progress | None = None, on_frame: FrameHook | None = None,
) -> VideoResult:
    """Stylize ``video`` into ``output`` (.mp4 or .webm) atomically, lineage sidecar beside it.

    ``temporal`` (0..1) is the consistency strength: 0 stylizes every frame on its own.
    ``on_frame(index, input, per_frame, output)`` sees each frame (benchmarks and tests).
    Bad input raises StyleInputError naming the file, and leaves nothing at ``output``.
    """
    import av

    from neuralstyle.atomic import atomic_path, write_bytes_atomic
    from neuralstyle.model.contract import DEFAULT_PARAMS, Params
    from neuralstyle.run import lineage

    started = time.perf_counter()
    what = "video"
    fmt = media.output_format(output)
    if not 0.0 <= temporal <= 1.0:
        raise StyleInputError(f"param temporal={temporal} must be in 0..1 (0 = every frame on "
                              "its own)")
    parsed = Params.parse({**(params or {}), "format": "jpeg"})
    info = media.probe(video, what)
    size = output_size(info.width, info.height, parsed.max_size)
    request = {**(params or {}), "max_size": max(size), "format": "jpeg",
               "quality": FRAME_QUALITY}
    painting = read_image_file(style_image, "style_image") if style_image is not None else None
    blender = TemporalBlender(temporal, flow_preset)
    label = f"{what} {video}"
    resolved = {"style": style, "model": "", "precision": ""}

    def run(index: int, small: np.ndarray) -> np.ndarray:
        encoded, row = stylize_bytes(encode_jpeg(small), style, predictor, request,
                                     what=f"{label} frame {index}", style_image=painting,
                                     style_image_what=f"style_image {style_image}")
        resolved.update(style=str(row["style"]), model=str(row.get("model", "") or ""),
                        precision=str(row.get("precision", "") or ""))
        return decode_jpeg(encoded, size)

    frames = cuts = 0
    first_frame = 0.0
    trusted: list[float] = []
    with _RequestPool() as pool, atomic_path(output) as tmp:
        with av.open(str(video)) as source:
            template = source.streams.audio[0] if source.streams.audio else None
            writer = media.ClipWriter(tmp, size[0], size[1], _time_base(source), info.fps,
                                      template, fmt)
            audio = ("none" if template is None else
                     f"copied {info.audio_codec}" if writer.audio_copied else
                     f"transcoded {info.audio_codec} -> {writer.audio.codec_context.name}")
            try:
                pending: collections.deque[Any] = collections.deque()

                def finish_one() -> None:
                    nonlocal frames, cuts, first_frame
                    item = pending.popleft()
                    if not isinstance(item, tuple):
                        writer.write_audio(item)
                        return
                    frame, small, flows, future = item
                    stylized = future.result()
                    blended: Blended = blender.blend(small, stylized, flows)
                    cuts += blended.cut
                    trusted.append(blended.trusted)
                    writer.write_frame(blended.rgb, frame.pts)
                    if on_frame is not None:
                        on_frame(frame.index, small, stylized, blended.rgb)
                    frames += 1
                    if frames == 1:
                        first_frame = time.perf_counter() - started
                    if progress is not None:
                        progress(frames, info.frames)

                for item in _read_ahead(video, size, blender, what):
                    if isinstance(item, tuple):
                        frame, small, flows = item
                        pending.append((frame, small, flows, pool.submit(run, frame.index, small)))
                    else:
                        pending.append(item)
                    while sum(isinstance(p, tuple) for p in pending) > IN_FLIGHT:
                        finish_one()
                while pending:
                    finish_one()
            finally:
                writer.close()
        digest = _sha256_file(tmp)
        requested = f"style_image {style_image_uri or style_image}" if painting else style
        record = lineage.build_record(
            input_uri=input_uri or str(video), input_bytes=b"", output_uri=str(output),
            output_bytes=b"", style=requested, resolved_style=resolved["style"],
            params={**DEFAULT_PARAMS, **(params or {}), "format": fmt.container,
                    "temporal": temporal, "flow_preset": flow_preset},
            fingerprint=resolved["model"],
            model_uri=model_uri or getattr(predictor, "model_uri", None) or config.DEFAULT_MODEL_URI,
            tracking_uri=config.tracking_uri(tracking_uri), precision=resolved["precision"] or None)
        record["input"].update(sha256=_sha256_file(video), bytes=Path(video).stat().st_size)
        record["output"].update(sha256=digest, bytes=tmp.stat().st_size)
        record["video"] = {"frames": frames, "width": size[0], "height": size[1],
                           "fps": float(info.fps), "audio": audio, "scene_cuts": cuts,
                           "source": {"width": info.width, "height": info.height,
                                      "rotation": info.rotation, "codec": info.video_codec}}
        # The sidecar first: the result's existence marks the work done.
        write_bytes_atomic(lineage.sidecar_path(output), lineage.to_json(record))
    return VideoResult(Path(output), frames, size[0], size[1], resolved["style"],
                       time.perf_counter() - started, audio, cuts,
                       float(np.mean(trusted)) if trusted else 0.0, record, first_frame)


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
