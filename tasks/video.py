"""Stylize clips: one video (S3 or a path) or every clip under an S3 prefix or in a folder.

    luigi --module tasks StylizeVideo --image s3://clips/dog.mp4 --style 7 --output-path out/dog-7.mp4
    luigi --module tasks StylizeVideo --image dog.mov --temporal 0 --executor server \\
        --server-url http://127.0.0.1:5001
    luigi --module tasks PublishStylizedVideo --image dog.mp4 --s3-path s3://results/dog-7.mp4
    luigi --module tasks StylizeVideoBatch --images s3://clips/in/ --results s3://clips/out/
    luigi --module tasks StylizeVideo --image long.mp4 --segment-frames 300 --workers 2  # segments
    luigi --module tasks StylizeVideo --image s3://clips/long.mp4 --segment-frames 300 \
        --segments-uri s3://clips/work/ --scheduler-host luigid.example  # on many machines

The same executors, S3 downloads, forced reruns and atomic writes as photos (tasks.stylize); the
clip is decoded, stylized and encoded streaming (neuralstyle.video.clips), with a progress bar.
A clip longer than ``segment_frames`` becomes StylizeVideoSegment tasks (each its own committed
file, so a rerun skips the finished ones and workers share them), joined by StylizeVideo.
With ``segments_uri`` each finished segment is also committed to S3 (one PUT), so workers on
machines that share no filesystem (through ``luigid``) share them; the join fetches what it lacks
and removes them from S3 once the result is written.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import luigi
from luigi.util import inherits

from neuralstyle.video.media import OUTPUT_FORMATS, is_video_path
from neuralstyle.video.options import VIDEO_PARAMS
from tasks.base import _luigi_parameter, mirror_path
from tasks.batch import StylizeBatch, list_images, result_location
from tasks.stylize import STAGING_ROOT, PublishStylized, Stylize

logger = logging.getLogger("luigi-interface.tasks")


class _VideoParamsBase:
    def video_params(self) -> dict[str, Any]:
        """The video settings this task was given (neuralstyle.video.options)."""
        return {param.name: getattr(self, param.name) for param in VIDEO_PARAMS}


# temporal and flow_preset as Luigi parameters, built from their one declaration.
VideoParams = type("VideoParams", (_VideoParamsBase,), {
    "__doc__": "The video settings as Luigi parameters, built from neuralstyle.video.options.",
    "__module__": __name__,
    **{param.name: _luigi_parameter(param) for param in VIDEO_PARAMS},
})


class StylizeVideo(VideoParams, Stylize):
    """One clip -> the style-transfer model frame by frame -> an .mp4 or .webm, atomically."""

    image = luigi.Parameter(description="clip to stylize: s3://bucket/key or a local path")
    output_path = luigi.OptionalParameter(
        default=None,
        description="result clip; .mp4 (H.264) or .webm (VP9) "
        "(default: out/<clip stem>-<style or painting stem>.mp4)",
    )
    segments_uri = luigi.OptionalParameter(
        default=None,
        description="s3://bucket/prefix/ where a long clip's finished segments are committed, so "
        "workers on several machines share them (default: only the folder beside the result)",
    )

    def segment_identity(self) -> dict[str, Any] | None:
        """How the segments name the source where workers share them through S3: its URI and
        ETag (the same on every machine), not a local copy's path and time."""
        if not (self.segments_uri and str(self.image).startswith("s3://")):
            return None
        from tasks.targets import stat_s3_object

        head = stat_s3_object(str(self.image)) or {}
        return {"video": str(self.image), "etag": head.get("ETag"),
                "size": head.get("ContentLength")}

    def segments(self, painting: Path | None, source: Path) -> tuple[Any, list[Any], Path]:
        """The clip's job, its segments and their local folder (``clips.segment_job``)."""
        from neuralstyle.video.clips import segment_job

        return segment_job(
            source, self.output_file(), self.request_style(), None, self.model_params(),
            temporal=self.temporal, flow_preset=self.flow_preset,
            segment_frames=self.segment_frames, style_image=painting, model_uri=self.model_uri,
            identity=self.segment_identity())

    def output_file(self) -> str:
        from neuralstyle.video.clips import default_video_output

        label = Path(str(self.style_image)).stem if self.style_image else self.style
        return self.output_path or default_video_output(self.image, label)

    def run(self) -> Any:
        """Stylize the clip; a clip longer than ``segment_frames`` as StylizeVideoSegment tasks
        (Luigi's dynamic dependencies: run() starts again once they are done), then joined."""
        source, painting = self.local_inputs()
        with self._input_errors(source):
            job, pieces, folder = self.segments(painting, source)
        if len(pieces) > 1:
            yield [self.clone(StylizeVideoSegment, segment=piece.index) for piece in pieces]
            self._join(job, pieces, folder)
        else:
            self._whole(source, painting)

    def _join(self, job: Any, pieces: list[Any], folder: Path) -> None:
        import time

        from neuralstyle.video import segments
        from neuralstyle.video.clips import join_segments

        if self.segments_uri:
            fetch_segments(self.segments_uri, folder, pieces, f".{job.fmt.container}")
        self.result = join_segments(
            job, pieces, folder, self.output_file(), self.model_params(), time.perf_counter(),
            self.segment_frames, style_image_uri=str(self.style_image) if self.style_image else None,
            input_uri=str(self.image), model_uri=self.model_uri, tracking_uri=self.tracking_uri)
        logger.info("joined %d segments of %s -> %s (%d frames, audio %s)", len(pieces),
                    self.image, self.output_file(), self.result.frames, self.result.audio)
        if self.segments_uri:  # the result is committed: the shared segments are spent
            from tasks.targets import boto3_s3, parse_s3_uri

            bucket, prefix = parse_s3_uri(segments.remote_folder(self.segments_uri, folder))
            s3 = boto3_s3()
            for item in s3.list_objects_v2(Bucket=bucket, Prefix=prefix + "/").get("Contents", []):
                s3.delete_object(Bucket=bucket, Key=item["Key"])

    def _input_errors(self, source: Path) -> Any:
        """On bad input from S3, drop the download, so a rerun after a fix fetches it again."""
        import contextlib

        from neuralstyle.model.errors import is_input_error
        from tasks.stylize import one_line

        task = self

        @contextlib.contextmanager
        def guard() -> Any:
            try:
                yield
            except Exception as exc:
                if (is_input_error(exc) and str(source) in one_line(exc)
                        and str(task.image).startswith("s3://")):
                    source.unlink(missing_ok=True)
                raise

        return guard()

    def _whole(self, source: Path, painting: Path | None) -> None:
        from neuralstyle.video.clips import progress_bar, stylize_video

        with self._input_errors(source):
            with self.predictor() as predictor, progress_bar(str(self.image)) as progress:
                self.result = stylize_video(
                    source, self.output_file(), self.request_style(), predictor,
                    self.model_params(), input_uri=str(self.image), model_uri=self.model_uri,
                    tracking_uri=self.tracking_uri, style_image=painting,
                    style_image_uri=str(self.style_image) if self.style_image else None,
                    progress=progress, **{**self.video_params(), "segment_frames": 0},
                )
        logger.info("stylized %s -> %s (%d frames %dx%d, %.1f fps, audio %s, executor %s)",
                    self.image, self.output_file(), self.result.frames, self.result.width,
                    self.result.height, self.result.fps, self.result.audio,
                    self.resolved_executor())


class StylizeVideoSegment(StylizeVideo):
    """One segment of a long clip, committed on its own (a file in the clip's segment folder):
    any worker, on any machine sharing the folder through ``luigid``, can take it."""

    segment = luigi.IntParameter(description="which segment (0, 1, ...) of the clip")

    def _piece(self) -> tuple[Any, Any, Path]:
        source, painting = self.local_inputs()
        job, pieces, folder = self.segments(painting, source)
        if not 0 <= self.segment < len(pieces):
            raise ValueError(f"{self.image} has {len(pieces)} segments, not {self.segment + 1}")
        return job, pieces[self.segment], folder

    def complete(self) -> bool:
        """Not before the clip is here: a segment's name comes from the clip's frames. A worker
        on a new machine downloads it, then ``run`` finds the segment in S3 and stops."""
        source, painting = self.local_inputs()
        if not source.exists() or (painting is not None and not painting.exists()):
            return False
        return super().complete()

    def output(self) -> luigi.Target:
        """The committed segment: in the folder beside the result, or in S3 (``segments_uri``)."""
        from neuralstyle.video import segments

        job, piece, folder = self._piece()
        path = segments.segment_path(folder, piece, f".{job.fmt.container}")
        if self.segments_uri:
            from tasks.targets import S3ObjectTarget

            return S3ObjectTarget(f"{segments.remote_folder(self.segments_uri, folder)}/"
                                  f"{path.name}")
        return luigi.LocalTarget(str(path))

    def run(self) -> None:
        from neuralstyle.video import segments
        from neuralstyle.video.clips import progress_bar, stylize_segment
        from tasks.base import upload_file_atomic

        job, piece, folder = self._piece()
        if self.segments_uri and self.output().exists():
            logger.info("segment %s of %s is in %s already", piece.index, self.image,
                        self.segments_uri)
            return
        with self.predictor() as predictor, \
                progress_bar(f"{self.image} segment {piece.index}") as progress:
            job.predictor = predictor
            stylize_segment(job, piece, folder, progress=progress)
        if self.segments_uri:  # its stats first: the segment's object marks it done
            path = segments.segment_path(folder, piece, f".{job.fmt.container}")
            remote = segments.remote_folder(self.segments_uri, folder)
            stats = segments.stats_path(path)
            upload_file_atomic(stats, f"{remote}/{stats.name}")
            upload_file_atomic(path, f"{remote}/{path.name}")
        logger.info("stylized segment %s of %s (frames %d..%d)", piece.index, self.image,
                    piece.start, piece.stop - 1)


def fetch_segments(segments_uri: str, folder: Path, pieces: list[Any], suffix: str) -> None:
    """Download the committed segments (and their stats) this machine lacks into ``folder``."""
    from neuralstyle.video import segments
    from tasks.base import download_s3_object

    remote = segments.remote_folder(segments_uri, folder)
    for piece in pieces:
        path = segments.segment_path(folder, piece, suffix)
        if not path.exists():
            stats = segments.stats_path(path)
            download_s3_object(f"{remote}/{stats.name}", stats)
            download_s3_object(f"{remote}/{path.name}", path)


@inherits(StylizeVideo)
class PublishStylizedVideo(PublishStylized):
    """Stylize a clip and upload it to ``s3_path`` (one complete PUT or multipart upload)."""

    def requires(self) -> StylizeVideo:
        return self.clone(StylizeVideo, output_path=self.staging_file())


class StylizeVideoBatch(VideoParams, StylizeBatch):
    """Every clip under ``images`` -> a result under ``results`` (a folder or an S3 prefix)."""

    images = luigi.Parameter(description="s3://bucket/prefix/ or a local folder of clips")
    suffix = luigi.ChoiceParameter(
        default=".mp4", choices=tuple(OUTPUT_FORMATS), var_type=str,
        description="format of the results: .mp4 (H.264) or .webm (VP9) (default: .mp4)",
    )

    segments_uri = luigi.OptionalParameter(
        default=None, description="as StylizeVideo's: an S3 prefix for long clips' segments")

    def photos(self) -> list[str]:
        """The clips to stylize, listed once per task instance."""
        if self._listing is None:
            listing, skipped = list_images(self.images, accept=is_video_path)
            if not listing:
                raise FileNotFoundError(f"no clips under {self.images} ({skipped} other files)")
            logger.info("StylizeVideoBatch: %d clips under %s", len(listing), self.images)
            self._listing = listing
        return self._listing

    def requires(self) -> list[luigi.Task]:
        tasks: list[luigi.Task] = []
        settings = {**self.photo_settings(), **self.video_params(),
                    "segments_uri": self.segments_uri}
        for clip in self.photos():
            label = Path(str(self.style_image)).stem if self.style_image else self.style
            where = result_location(clip, self.images, self.results, label, self.suffix)
            if where.startswith("s3://"):
                staging = str(mirror_path(where, self.staging_root or STAGING_ROOT))
                tasks.append(PublishStylizedVideo(image=clip, s3_path=where, output_path=staging,
                                                  **settings))
            else:
                tasks.append(StylizeVideo(image=clip, output_path=where, **settings))
        return tasks
