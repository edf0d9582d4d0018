"""Stylize one photo with the served model, and publish the result to S3 or Canvas.

    luigi --module tasks Stylize --image s3://photos/cat.jpg --style 7 --output-path out/cat-7.jpg
    luigi --module tasks Stylize --image cat.jpg --executor server --server-url http://127.0.0.1:5001
    luigi --module tasks PublishStylized --image s3://photos/cat.jpg --s3-path s3://results/cat-7.jpg

Executors (where the model runs; the output is the same):
  local   the registered model loaded in this process (``model_uri``),
  server  a running ``mlflow models serve`` or build-docker container at ``server_url``,
  docker  a container this task starts from the model's build-docker image and removes after.
The default is ``server`` when a ``server_url`` is set (parameter or ``[Stylize]`` in luigi.cfg),
else ``local``. Every write is atomic: a failed task leaves no output and no temporary file.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import luigi
from luigi.util import inherits

from neuralstyle import config
from neuralstyle.model.errors import is_input_error
from neuralstyle.run.executors import EXECUTORS
from neuralstyle.run.inference import Predictor, StylizeResult, default_output
from tasks.base import (
    ForceableTask,
    LocalFileExists,
    RequestParams,
    S3Download,
    S3Upload,
    local_input_path,
    mirror_path,
    run_here,
)
from tasks.canvas import SubmitToCanvas
from tasks.targets import SuffixAtomicLocalTarget

logger = logging.getLogger("luigi-interface.tasks")

# Where results bound for S3 are written before their upload (mirrors the S3 key, like downloads).
STAGING_ROOT = "out"


def one_line(exc: BaseException) -> str:
    """An exception as one line: MLflow's ``message`` when it has one, else ``str``."""
    text = str(getattr(exc, "message", None) or exc) or type(exc).__name__
    return " ".join(text.split())


class Stylize(RequestParams, ForceableTask):
    """One photo (S3 or local) -> the style-transfer model -> an image file, atomically.

    ``--force`` removes the result and passes down to the S3 download, so both run again.
    """

    image = luigi.Parameter(description="photo to stylize: s3://bucket/key or a local path")
    style = luigi.Parameter(
        default=config.DEFAULT_STYLE,
        description=f"style index 0..25, a name or a blend '3:0.5,12:0.5' "
        f"(default: {config.DEFAULT_STYLE})",
    )
    style_image = luigi.OptionalParameter(
        default=None,
        description="a painting as the style instead of style: s3://bucket/key or a local path, "
        "fetched like the photo (default: none)",
    )
    output_path = luigi.OptionalParameter(
        default=None,
        description="result file; its suffix (.jpg/.png/.webp) sets the format "
        "(default: out/<image stem>-<style or painting stem>.jpg)",
    )
    executor = luigi.OptionalChoiceParameter(
        default=None, choices=EXECUTORS, var_type=str,
        description="local | server | docker (default: server if server_url is set, else local)",
    )
    model_uri = luigi.Parameter(
        default=config.DEFAULT_MODEL_URI,
        description=f"model for the local and docker executors (default: {config.DEFAULT_MODEL_URI})",
    )
    server_url = luigi.OptionalParameter(
        default=None, description="running server for executor server (default: none)"
    )
    tracking_uri = luigi.OptionalParameter(
        default=None, significant=False,
        description="MLflow registry for model_uri (default: $MLFLOW_TRACKING_URI, else "
        f"{config.DEFAULT_TRACKING_URI})",
    )
    # What the last run() in this process wrote (metrics for the entry point; not pickled back
    # from forked worker processes).
    result: StylizeResult | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.resolved_executor()  # executor=server without a URL fails here, before any work
        self.requires()  # a malformed S3 URI fails here, naming itself

    def resolved_executor(self) -> str:
        """The executor to use: the parameter, else ``server`` when a server URL is set."""
        from neuralstyle.run.executors import resolve_executor

        try:
            return resolve_executor(self.executor, self.server_url)
        except ValueError as exc:
            raise ValueError(f"Stylize {self.image}: {exc}") from None

    def output_file(self) -> str:
        """The result path: ``output_path``, else derived from the image and style only."""
        label = Path(str(self.style_image)).stem if self.style_image else self.style
        return self.output_path or default_output(self.image, label)

    def request_style(self) -> str:
        """The style sent with the photo: none when a painting is the style."""
        return "" if self.style_image else self.style

    def model_params(self) -> dict[str, Any]:
        """Per-request params of the model contract (the format follows the output suffix)."""
        return self.request_params()

    def requires(self) -> luigi.Task | dict[str, luigi.Task]:
        photo = self.fetch(self.image)
        if self.style_image:
            return {"image": photo, "style_image": self.fetch(self.style_image)}
        return photo

    def fetch(self, location: str) -> luigi.Task:
        """The task that provides a local copy: the atomic, size-checked S3 download or the file."""
        if str(location).startswith("s3://"):
            return S3Download(s3_path=location, force=self.force)
        return LocalFileExists(path=location)

    def local_inputs(self) -> tuple[Path, Path | None]:
        """The local photo and, when a painting is the style, the local painting."""
        if not self.style_image:
            return local_input_path(self), None
        inputs = self.input()
        return Path(inputs["image"].path), Path(inputs["style_image"].path)

    def output(self) -> SuffixAtomicLocalTarget:
        return SuffixAtomicLocalTarget(self.output_file(), format=luigi.format.Nop)

    def predictor(self) -> contextlib.AbstractContextManager[Predictor]:
        """The model for this task's executor; a docker container lives only inside the block."""
        from neuralstyle.run.executors import open_predictor

        return open_predictor(self.resolved_executor(), model_uri=self.model_uri,
                              server_url=self.server_url, tracking_uri=self.tracking_uri)

    def run(self) -> None:
        from neuralstyle.run.inference import stylize_file

        source, painting = self.local_inputs()
        try:
            with self.predictor() as predictor:
                # stylize_file writes through a suffix-keeping temporary, like this target.
                self.result = stylize_file(
                    source, self.output_file(), self.request_style(), predictor,
                    self.model_params(), input_uri=str(self.image), model_uri=self.model_uri,
                    tracking_uri=self.tracking_uri, style_image=painting,
                    style_image_uri=str(self.style_image) if self.style_image else None,
                )
        except Exception as exc:
            for local, remote in ((source, self.image), (painting, self.style_image)):
                bad = local is not None and is_input_error(exc) and str(local) in one_line(exc)
                if bad and str(remote).startswith("s3://"):
                    # The local copy of a bad photo (or painting) is useless: drop it, so that a
                    # rerun after it is fixed in S3 downloads it again instead of failing on it.
                    local.unlink(missing_ok=True)
            raise
        logger.info(
            "stylized %s -> %s (%dx%d, %s, %.2f s, executor %s)", self.image, self.output_file(),
            self.result.width, self.result.height, self.result.style, self.result.seconds,
            self.resolved_executor(),
        )

    def on_failure(self, exception: BaseException) -> str:
        """One line naming the photo and the problem (Luigi logs the traceback itself)."""
        message = one_line(exception)
        return message if str(self.image) in message else f"{self.image}: {message}"


@inherits(Stylize)
class PublishStylized(S3Upload):
    """Stylize a photo and upload the result to ``s3_path``; readers never see a partial object.

    The result is written first to ``output_path`` (default: out/<bucket>/<key>) and kept there,
    so a rerun after a failed upload does not stylize again. ``--force`` reruns all three steps.
    """

    def staging_file(self) -> str:
        """Where the result is written before the upload: the parameter, else mirrors the key."""
        return self.output_path or str(mirror_path(self.s3_path, STAGING_ROOT))

    def requires(self) -> Stylize:
        return self.clone(Stylize, output_path=self.staging_file())

    def run(self) -> None:
        """Upload the staged result; stylize it here first when it was staged on another machine.

        With a central ``luigid``, the Stylize step may have run in a worker on another machine
        (the scheduler then marks it done), so its local file is not here. The network is
        deterministic, so stylizing again here gives the same bytes; nothing is lost or doubled.
        """
        staged = self.requires()
        if not staged.complete():
            logger.info("%s: the staged result %s is not on this machine (another worker stylized "
                        "it): stylizing here before the upload", self.s3_path, staged.output_file())
            run_here(staged)
        super().run()

    def on_failure(self, exception: BaseException) -> str:
        """One line naming the photo, the destination and the problem."""
        return f"{self.image} -> {self.s3_path}: {one_line(exception)}"


@inherits(Stylize)
class StylizeToCanvas(SubmitToCanvas):
    """Stylize a photo and submit the result to a Canvas assignment (once; a receipt marks it)."""

    def requires(self) -> Stylize:
        return self.clone(Stylize)


def stylized_path(task: luigi.Task) -> Path:
    """The local result file of a Stylize or of the task that wraps one."""
    if isinstance(task, Stylize):
        return Path(task.output_file())
    return local_input_path(task)
