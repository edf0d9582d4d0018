"""One way to stylize a file, whatever runs the model: in-process (a model URI) or a server URL.

``stylize.py`` and the Luigi ``Stylize`` task both call :func:`stylize_file`; the executors differ
only in the :class:`Predictor` they pass.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from neuralstyle import config
from neuralstyle.model import imaging
from neuralstyle.model.errors import StyleInputError, is_input_error


class Predictor(Protocol):
    """Anything that answers the pyfunc contract: a loaded model or a server client."""

    def predict(self, frame: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        ...


# The in-process model's raw path: (pixels, style, params, style_image=, what=) -> (RGB uint8,
# the row's other columns); ``neuralstyle.model.pyfunc_model.StyleTransferModel.stylize_pixels``.
PixelStylizer = Callable[..., tuple[np.ndarray, dict[str, Any]]]
_LOADING = threading.Lock()


def _load_model(model_uri: str, tracking_uri: str, streams: int = 0):
    """The loaded model, once per process (and ``streams``): a lock, because threads asking at
    once (a clip's request threads) would otherwise each load and compile it (lru_cache does not
    wait)."""
    with _LOADING:
        return _load_model_once(model_uri, tracking_uri, streams)


@functools.lru_cache(maxsize=4)
def _load_model_once(model_uri: str, tracking_uri: str, streams: int):
    import mlflow

    with config.mlflow_scope(tracking_uri):
        # suppress_warnings: skips MLflow's scan of every installed distribution against the
        # model's requirements (1-2.5 s of each CLI start, measured in bench/video.py's runs);
        # this process is the environment the model was packaged from (README, "Video").
        settings = {"streams": streams} if streams and _takes_streams(model_uri) else None
        return mlflow.pyfunc.load_model(model_uri, suppress_warnings=True, model_config=settings)


def _takes_streams(model_uri: str) -> bool:
    """Whether the version was packaged to take ``model_config={"streams": n}`` (its MLmodel says
    so; an older one runs one request at a time, and MLflow would warn that it ignored it)."""
    from mlflow.models import Model
    from mlflow.models.model import MODEL_CONFIG

    flavor = Model.load(model_uri).flavors.get("python_function", {})
    return "streams" in (flavor.get(MODEL_CONFIG) or {})


class LocalPredictor:
    """The registered model loaded in this process (cached per URI: loading costs ~1 s)."""

    def __init__(self, model_uri: str = config.DEFAULT_MODEL_URI, tracking_uri: str | None = None,
                 streams: int = 0):
        self.model_uri = model_uri
        self.tracking_uri = config.tracking_uri(tracking_uri)
        self.streams = streams  # >1: that many requests run at once (runtime.compile_network)

    def with_streams(self, streams: int) -> LocalPredictor:
        """The same model loaded to run ``streams`` requests at once, the cores split between
        them: for a caller that keeps that many in flight (a clip's frames). Loaded and compiled
        on its own: a process that stylizes photos and clips holds both."""
        return LocalPredictor(self.model_uri, self.tracking_uri, streams)

    def _model(self):
        return _load_model(self.model_uri, self.tracking_uri, self.streams)

    def predict(self, frame: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        return self._model().predict(frame, params=params)

    def load_in_background(self) -> None:
        """Start loading (and compiling) the model in a thread, so a caller with other work to
        do first (a clip's decoding and flow) overlaps it; ``predict`` then waits for it."""
        threading.Thread(target=self._load_quietly, name="model-load", daemon=True).start()

    def _load_quietly(self) -> None:
        with contextlib.suppress(Exception):  # not cached: the first predict raises it again
            self._model()

    def pixel_stylizer(self) -> PixelStylizer | None:
        """The loaded model's ``stylize_pixels`` (RGB uint8 in and out, no codec either way), or
        None for a model version packaged before it existed (then ``predict`` serves)."""
        python_model = self._model().unwrap_python_model()
        return getattr(python_model, "stylize_pixels", None)


@dataclass(frozen=True)
class StylizeResult:
    """What a stylize call wrote, for summaries and MLflow metrics."""

    output: Path
    width: int
    height: int
    style: str
    seconds: float
    bytes_written: int
    lineage: dict[str, Any] | None = None


def read_image_file(path: str | Path, what: str = "image") -> bytes:
    """Read an input file, with the errors a user needs (missing, a folder, unreadable)."""
    path = Path(path)
    if not path.exists():
        raise StyleInputError(f"{what} {path} does not exist")
    if path.is_dir():
        raise StyleInputError(f"{what} {path} is a folder, not an image file")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise StyleInputError(f"{what} {path} cannot be read ({exc.strerror})") from None


def stylize_bytes(
    data: bytes, style: str, predictor: Predictor, params: dict[str, Any] | None = None,
    what: str = "image", style_image: bytes | None = None, style_image_what: str = "style_image",
) -> tuple[bytes, pd.Series]:
    """Encoded image bytes -> encoded stylized bytes and the result row (width, height, style).

    With ``style_image`` (a painting's encoded bytes) the painting is the style and ``style``
    must be empty (the model refuses both).
    """
    columns = {"image": [base64.b64encode(data).decode("ascii")], "style": [style or ""]}
    if style_image is not None:
        columns["style_image"] = [base64.b64encode(style_image).decode("ascii")]
    try:
        row = predictor.predict(pd.DataFrame(columns), params=params).iloc[0]
    except Exception as exc:
        if not is_input_error(exc):
            raise
        # Name the files, not "row 0", when the model rejects a single request.
        message = exc.message.replace("style_image (row 0)", style_image_what)
        raise StyleInputError(message.replace("image (row 0)", what)) from None
    return base64.b64decode(row["image"]), row


def stylize_file(
    image: str | Path, output: str | Path, style: str, predictor: Predictor,
    params: dict[str, Any] | None = None, *, input_uri: str | None = None,
    model_uri: str | None = None, tracking_uri: str | None = None,
    style_image: str | Path | None = None, style_image_uri: str | None = None,
) -> StylizeResult:
    """Stylize one file into ``output`` atomically, with its lineage sidecar beside it.

    The format follows the output's suffix. The sidecar is written first: the result's existence
    is what marks the work done, so a crash between the two leaves no result without lineage.
    ``input_uri`` is where the photo came from (an s3:// URI) when ``image`` is a local copy;
    ``style_image`` is a painting file used as the style (``style_image_uri`` where it came from).
    """
    from neuralstyle.model.contract import DEFAULT_PARAMS
    from neuralstyle.run import lineage

    started = time.perf_counter()
    params = dict(params or {})
    params.setdefault("format", imaging.format_for_path(str(output)))
    data = read_image_file(image)
    painting = read_image_file(style_image, "style_image") if style_image is not None else None
    painting_uri = style_image_uri or (str(style_image) if style_image is not None else None)
    encoded, row = stylize_bytes(data, style, predictor, params, what=f"image {image}",
                                 style_image=painting, style_image_what=f"style_image {style_image}")
    requested = f"style_image {painting_uri}" if painting_uri else style
    record = lineage.build_record(
        input_uri=input_uri or str(image), input_bytes=data, output_uri=str(output),
        output_bytes=encoded, style=requested, resolved_style=str(row["style"]),
        params={**DEFAULT_PARAMS, **params}, fingerprint=str(row.get("model", "") or ""),
        model_uri=model_uri or getattr(predictor, "model_uri", None) or config.DEFAULT_MODEL_URI,
        tracking_uri=config.tracking_uri(tracking_uri),
        precision=str(row.get("precision", "") or "") or None,  # what ran, not what was asked
    )
    lineage.write_result(output, encoded, record)
    return StylizeResult(
        Path(output), int(row["width"]), int(row["height"]), str(row["style"]),
        time.perf_counter() - started, len(encoded), record,
    )


def default_output(image: str, style: str, folder: str = "out") -> str:
    """``out/<stem>-<style>.jpg``: derived only from the input and style, so reruns are idempotent."""
    stem = Path(image.split("://", 1)[-1]).stem or "image"
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in style.replace(",", "+"))
    return str(Path(folder) / f"{stem}-{safe}.jpg")
