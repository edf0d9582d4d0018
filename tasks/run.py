"""Run the Stylize pipeline (Luigi, local scheduler) and log it as an MLflow run.

    mlflow run . -e stylize --env-manager local -P image=s3://bucket/photo.jpg -P style=7 \\
        -P output=out/photo-7.jpg
    python -m tasks.run --image s3://bucket/photo.jpg --style 7 --output out/photo-7.jpg
    python -m tasks.run --image s3://bucket/in/ --output s3://bucket/out/ --workers 2   # a batch
    python -m tasks.run --image photo.jpg --executor server --server-url http://127.0.0.1:5001

``--image`` is one photo (s3://bucket/key or a path), or many: an S3 prefix ending in ``/`` or
a folder. ``--output`` is a file or an s3:// key (one photo), a folder or an s3:// prefix (many).
Under ``mlflow run`` the run MLflow created (``MLFLOW_RUN_ID``) gets the params, latency metrics
and the result image; otherwise a new run is started. Exit status: 0 when every photo was
stylized, 1 when one failed (the last lines say which and why) or the executor could not start,
2 for bad arguments (a malformed s3:// URI, executor server without a URL).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neuralstyle import config
from neuralstyle.run.executors import EXECUTORS, resolve_executor
from neuralstyle.run.flags import add_request_flags, request_params

DEFAULT_BATCH_RESULTS = "out"


def _optional(text: str) -> str | None:
    """MLflow passes an empty parameter as ''; treat it as "not given"."""
    return text or None


def _executor(text: str) -> str | None:
    if not text:
        return None
    if text not in EXECUTORS:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(EXECUTORS)}")
    return text


def _whole(text: str) -> int:
    """An integer, also written as MLflow's float parameters are (``1024.0``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value != int(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    return int(value)


def build_parser() -> argparse.ArgumentParser:
    """CLI flags (the MLproject ``stylize`` entry maps its parameters onto these one to one)."""
    parser = argparse.ArgumentParser(
        prog="python -m tasks.run", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--image", required=True,
                        help="s3://bucket/key or a path; many: s3://bucket/prefix/ or a folder")
    parser.add_argument("--style", default=config.DEFAULT_STYLE,
                        help="index 0..25, a name or a blend '3:0.5,12:0.5' (default: %(default)s)")
    parser.add_argument("--style-image", type=_optional, default=None,
                        help="a painting as the style instead of --style: s3://bucket/key or a "
                             "path (default: none)")
    parser.add_argument("--output", type=_optional, default=None,
                        help="result file or s3:// key; for many photos a folder or s3:// prefix "
                             "(default: out/<image stem>-<style>.jpg; many: out/)")
    parser.add_argument("--executor", type=_executor, default=None,
                        help="local | server | docker (default: server if --server-url is given, "
                             "else local)")
    parser.add_argument("--model-uri", default=config.DEFAULT_MODEL_URI,
                        help="model for the local and docker executors (default: %(default)s)")
    parser.add_argument("--server-url", type=_optional, default=None,
                        help="running server for the server executor (default: none)")
    parser.add_argument("--tracking-uri", type=_optional, default=None,
                        help="MLflow tracking/registry URI (default: $MLFLOW_TRACKING_URI, else "
                             f"{config.DEFAULT_TRACKING_URI})")
    add_request_flags(parser)
    parser.add_argument("--workers", type=_whole, default=1,
                        help="Luigi workers, photos stylized at once (default: %(default)s)")
    parser.add_argument("--force", action="store_true",
                        help="download and stylize again even if the result exists (default: off)")
    return parser


@dataclass(frozen=True)
class Job:
    """What one ``tasks.run`` invocation asks for, typed, so the helpers below do not take the
    whole argparse namespace."""

    image: str
    output: str | None
    style: str | None
    style_image: str | None
    model_uri: str
    tracking_uri: str
    workers: int
    force: bool
    request: dict[str, Any]  # the contract's request params (max_size, precision, ...)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Job:
        return cls(args.image, args.output, args.style, args.style_image, args.model_uri,
                   args.tracking_uri, args.workers, args.force, request_params(args))

    def photo_settings(self, executor: str | None, server_url: str | None) -> dict[str, Any]:
        """The Stylize parameters every photo's task gets."""
        return {
            "style": self.style, "style_image": self.style_image, "executor": executor,
            "model_uri": self.model_uri, "server_url": server_url,
            "tracking_uri": self.tracking_uri, **self.request, "force": self.force,
        }


def build_task(job: Job, executor: str | None, server_url: str | None) -> Any:
    """The one task to build: a Stylize, a PublishStylized (s3:// output) or a StylizeBatch."""
    from tasks.batch import StylizeBatch, is_batch_location
    from tasks.stylize import PublishStylized, Stylize

    settings = job.photo_settings(executor, server_url)
    if is_batch_location(job.image):
        return StylizeBatch(images=job.image, results=job.output or DEFAULT_BATCH_RESULTS,
                            **settings)
    if job.output and job.output.startswith("s3://"):
        return PublishStylized(image=job.image, s3_path=job.output, **settings)
    return Stylize(image=job.image, output_path=job.output, **settings)


def photo_tasks(task: Any) -> list[Any]:
    """The per-photo tasks a summary counts (the batch's children, or the task itself)."""
    from tasks.batch import StylizeBatch

    if isinstance(task, StylizeBatch):
        try:
            return list(task.requires())
        except Exception:
            return [task]
    return [task]


def where(task: Any) -> str:
    """Where the result of one photo task is, for the final message."""
    from tasks.batch import StylizeBatch
    from tasks.stylize import PublishStylized

    if isinstance(task, StylizeBatch):
        return task.results
    if isinstance(task, PublishStylized):
        return f"{task.s3_path} (local copy {Path(task.staging_file()).resolve()})"
    return str(Path(task.output_file()).resolve())


def _log_params(client: Any, run_id: str, params: dict[str, Any]) -> None:
    """Log params the run does not have yet (``mlflow run`` has logged the entry's own)."""
    from mlflow.entities import Param

    have = client.get_run(run_id).data.params
    fresh = [Param(k, str(v)) for k, v in params.items() if k not in have and v is not None]
    if fresh:
        client.log_batch(run_id, params=fresh)


def _stylize_results(tasks: list[Any]) -> list[Any]:
    """StylizeResults of the photos run in this process (forked workers do not send them back)."""
    from tasks.stylize import Stylize

    found = []
    for task in tasks:
        try:
            stylize = task if isinstance(task, Stylize) else task.requires()
        except Exception:  # a batch whose listing failed
            continue
        if isinstance(stylize, Stylize) and stylize.result is not None:
            found.append(stylize.result)
    return found


def warm_local_model(model_uri: str, tracking_uri: str | None) -> None:
    """Load the model in this process before Luigi forks its workers.

    Each worker process is a fork: with the model already loaded it shares it (copy on write)
    instead of loading it again for every photo (~2 s each on 2 cores). Loading it here is also
    what keeps a forked worker from replacing the parent's model-from-code, whose runtime
    sessions (onnxruntime then, OpenVINO now) would then be freed in the child, which hangs.
    """
    import io

    from PIL import Image

    from neuralstyle.run.inference import LocalPredictor, stylize_bytes

    blank = io.BytesIO()
    Image.new("RGB", (64, 64)).save(blank, "PNG")
    stylize_bytes(blank.getvalue(), config.DEFAULT_STYLE, LocalPredictor(model_uri, tracking_uri),
                  {"max_size": 64})


def run_pipeline(job: Job, executor: str | None, server_url: str | None
                 ) -> tuple[Any, Any, float]:
    """Build the task with Luigi; return (task, Luigi's result, seconds)."""
    import luigi
    from luigi.configuration import get_config

    started = time.perf_counter()
    task = build_task(job, executor, server_url)
    if job.workers > 1 and resolve_executor(executor, server_url) == "local":
        warm_local_model(job.model_uri, job.tracking_uri)
    # Local scheduler unless luigi.cfg says otherwise ([core] local_scheduler = false -> luigid).
    local = get_config().getboolean("core", "local_scheduler", True)
    result = luigi.build([task], local_scheduler=local, workers=job.workers,
                         detailed_summary=True)
    return task, result, time.perf_counter() - started


def model_version(model_uri: str, tracking_uri: str) -> str | None:
    """The registry version ``model_uri`` points at now, for the run's params; None if unknown."""
    try:
        from neuralstyle.registry import resolve_model

        return resolve_model(model_uri, tracking_uri).version
    except Exception:  # not registered (yet): the task itself will say so, clearly
        return None


def _lineage_records(photos: list[Any]) -> list[dict[str, Any]]:
    """The lineage sidecars of the results that exist (workers write them to disk)."""
    from neuralstyle.run import lineage
    from tasks.stylize import stylized_path

    records = []
    for photo in photos:
        try:
            record = lineage.read_sidecar(stylized_path(photo))
        except Exception:  # a batch whose listing failed, an unreadable sidecar
            continue
        if record is not None:
            records.append(record)
    return records


def log_outcome(task: Any, result: Any, seconds: float) -> tuple[str, int]:
    """Metrics, Luigi's summary and the result image into the active run; (summary line, failed)."""
    import mlflow

    from tasks.report import outcomes, summary_line
    from tasks.stylize import stylized_path

    photos = photo_tasks(task)
    found = outcomes(result, photos)
    line = summary_line(found)
    ok = sum(o.ok for o in found)
    failed = len(found) - ok
    metrics = {"seconds_total": seconds, "photos_ok": ok, "photos_failed": failed}
    if ok:
        metrics["seconds_per_photo"] = seconds / ok
    stylized = _stylize_results(photos)
    if stylized:
        metrics["seconds_stylize_mean"] = sum(r.seconds for r in stylized) / len(stylized)
        if len(stylized) == 1:
            metrics.update(width=stylized[0].width, height=stylized[0].height,
                           output_bytes=stylized[0].bytes_written)
    mlflow.log_metrics(metrics)
    mlflow.log_text(f"{result.summary_text}\n{line}\n", "luigi_summary.txt")
    records = _lineage_records(photos)
    if records:
        mlflow.log_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records),
                        "lineage.jsonl")
    if len(photos) == 1 and found[0].ok:
        mlflow.log_artifact(str(stylized_path(photos[0])), artifact_path="result")
    return line, failed


def photo_records(task: Any, result: Any) -> list[Any]:
    """Each photo's source, local input and result files, outcome and the model version its
    lineage names, for the run's page."""
    from neuralstyle.run import lineage
    from neuralstyle.ui.stylize_run import PhotoRecord
    from tasks.base import local_input_path
    from tasks.report import outcomes
    from tasks.stylize import Stylize, stylized_path

    records = []
    for outcome in outcomes(result, photo_tasks(task)):
        try:  # a Stylize, or a task that wraps one (PublishStylized)
            stylize = outcome.task if isinstance(outcome.task, Stylize) else outcome.task.requires()
            source = local_input_path(stylize) if isinstance(stylize, Stylize) else None
            output = stylized_path(outcome.task)
        except Exception:  # a photo that never got as far as a local file
            source, output = None, None
        record = lineage.read_sidecar(output) if output is not None and outcome.ok else None
        model = (record or {}).get("model") or {}
        used = (model["name"], model["version"]) if model.get("name") and model.get("version") \
            else None
        records.append(PhotoRecord(outcome.image, source, output, outcome.ok, outcome.reason, used))
    return records


def describe_run(run_id: str, job: Job, task: Any, result: Any, executor: str,
                 server_url: str | None) -> None:
    """Run name, note, the model version used, the input beside the result (neuralstyle)."""
    import mlflow

    from neuralstyle.ui.stylize_run import describe_stylize_run
    from tasks.batch import is_batch_location

    describe_stylize_run(
        mlflow.MlflowClient(), run_id, image=job.image, style=job.style,
        batch=is_batch_location(job.image), photos=photo_records(task, result),
        executor=executor, model_uri=job.model_uri, server_url=server_url,
    )


def run_scoped(parser: argparse.ArgumentParser,
               body: Callable[[argparse.Namespace, str], int], argv: list[str] | None) -> int:
    """Parse, point MLflow at ``--tracking-uri`` for the whole run, then leave it as it was."""
    args = parser.parse_args(argv)
    with config.mlflow_scope(args.tracking_uri) as tracking:
        args.tracking_uri = tracking
        return body(args, tracking)


def main(argv: list[str] | None = None) -> int:
    return run_scoped(build_parser(), _main, argv)


def _main(args: argparse.Namespace, tracking: str) -> int:
    """The pipeline as one MLflow run, inside ``main``'s MLflow scope."""
    import mlflow

    from neuralstyle.run.container import model_container
    from tasks.stylize import one_line

    try:
        executor = resolve_executor(args.executor, args.server_url)
    except ValueError as exc:
        print(f"stylize: error: {exc}", file=sys.stderr)
        return 2
    from neuralstyle.ui.stylize_run import default_experiment_id, how_to_see

    job = Job.from_args(args)
    with mlflow.start_run(run_id=os.environ.get("MLFLOW_RUN_ID") or None,
                          experiment_id=default_experiment_id(mlflow.MlflowClient())) as run:
        run_id = run.info.run_id
        params: dict[str, Any] = {k: v for k, v in vars(args).items() if k != "tracking_uri"}
        params["executor_used"] = executor
        if executor in ("local", "docker"):
            params["model_version"] = model_version(args.model_uri, tracking)
        _log_params(mlflow.MlflowClient(), run_id, params)
        try:
            if executor == "docker":
                # One container for the whole build (a batch too), removed when it ends.
                with model_container(args.model_uri, tracking_uri=tracking) as url:
                    task, result, seconds = run_pipeline(job, "server", url)
            else:
                task, result, seconds = run_pipeline(job, args.executor, args.server_url)
        except Exception as exc:  # bad arguments, no Docker engine, a container that fails
            print(f"stylize: error: {one_line(exc)}", file=sys.stderr)
            mlflow.end_run(status="FAILED")
            return 2 if isinstance(exc, ValueError) else 1
        line, failed = log_outcome(task, result, seconds)
        describe_run(run_id, job, task, result, executor, args.server_url)
        print(f"stylize: {line}")
        print(f"result: {where(task)}")
        print(f"mlflow: run {run_id} in {tracking} (experiment {run.info.experiment_id}); "
              f"see it with: {how_to_see(tracking, run.info.experiment_id, run_id)}")
        if failed:
            mlflow.end_run(status="FAILED")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
