"""Run the video pipeline (Luigi, local scheduler) and log it as an MLflow run.

    mlflow run . -e stylize_video --env-manager local -P video=s3://bucket/dog.mp4 -P style=7
    python -m tasks.run_video --video dog.mp4 --style 7 --output out/dog-7.mp4 --max-size 640
    python -m tasks.run_video --video s3://bucket/clips/ --output s3://bucket/out/   # a batch

``--video`` is one clip (s3://bucket/key or a path) or many (an S3 prefix ending in ``/`` or a
folder). The run gets the params, frames per second, the lineage records and, for one clip, the
result and a preview strip (frames of the original above the same frames stylized).
Exit status: 0 when every clip was stylized, 1 when one failed, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from neuralstyle import config
from neuralstyle.run.executors import resolve_executor
from neuralstyle.run.flags import add_request_flags, request_params
from neuralstyle.video.options import add_video_flags, video_settings
from tasks.run import _executor, _log_params, _optional, _whole, run_scoped


def build_parser() -> argparse.ArgumentParser:
    """CLI flags (the MLproject ``stylize_video`` entry maps its parameters onto these)."""
    parser = argparse.ArgumentParser(prog="python -m tasks.run_video", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video", required=True,
                        help="s3://bucket/key or a path; many: s3://bucket/prefix/ or a folder")
    parser.add_argument("--style", default=config.DEFAULT_STYLE,
                        help="index 0..25, a name or a blend '3:0.5,12:0.5' (default: %(default)s)")
    parser.add_argument("--style-image", type=_optional, default=None,
                        help="a painting as the style: s3://bucket/key or a path (default: none)")
    parser.add_argument("--output", type=_optional, default=None,
                        help="result .mp4/.webm or s3:// key; for many clips a folder or s3:// "
                             "prefix (default: out/<clip stem>-<style>.mp4; many: out/)")
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
    add_video_flags(parser)
    parser.add_argument("--workers", type=_whole, default=1,
                        help="Luigi workers, clips stylized at once (default: %(default)s)")
    parser.add_argument("--force", action="store_true",
                        help="download and stylize again even if the result exists (default: off)")
    return parser


def build_task(args: argparse.Namespace, executor: str | None, server_url: str | None) -> Any:
    """A StylizeVideo, a PublishStylizedVideo (s3:// output) or a StylizeVideoBatch."""
    from tasks.batch import is_batch_location
    from tasks.video import PublishStylizedVideo, StylizeVideo, StylizeVideoBatch

    settings = {"style": args.style, "style_image": args.style_image,
                "executor": executor, "model_uri": args.model_uri, "server_url": server_url,
                "tracking_uri": args.tracking_uri, "force": args.force,
                **request_params(args), **video_settings(args)}
    if is_batch_location(args.video):
        return StylizeVideoBatch(images=args.video, results=args.output or "out", **settings)
    if args.output and args.output.startswith("s3://"):
        return PublishStylizedVideo(image=args.video, s3_path=args.output, **settings)
    return StylizeVideo(image=args.video, output_path=args.output, **settings)


def clip_tasks(task: Any) -> list[Any]:
    """The per-clip StylizeVideo tasks (a batch's children, or the one behind an upload)."""
    from tasks.video import StylizeVideo

    children = task.requires() if not isinstance(task, StylizeVideo) else task
    found = []
    for child in children if isinstance(children, list) else [children]:
        found.append(child if isinstance(child, StylizeVideo) else child.requires())
    return found


def log_outcome(task: Any, seconds: float) -> int:
    """Metrics, lineage, the result and its preview into the active run; the clips that failed."""
    import mlflow

    from neuralstyle.run import lineage
    from neuralstyle.video.preview import preview_png

    clips = clip_tasks(task)
    done = [c for c in clips if c.complete()]
    metrics: dict[str, float] = {"seconds_total": seconds, "clips_ok": len(done),
                                 "clips_failed": len(clips) - len(done)}
    results = [c.result for c in clips if c.result is not None]
    if results:
        frames = sum(r.frames for r in results)
        metrics.update(frames=frames, fps=frames / sum(r.seconds for r in results),
                       scene_cuts=sum(r.cuts for r in results),
                       trusted_share=sum(r.trusted for r in results) / len(results))
    mlflow.log_metrics(metrics)
    records = [r for r in (lineage.read_sidecar(c.output_file()) for c in done) if r]
    if records:
        mlflow.log_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records),
                        "lineage.jsonl")
    if len(clips) == 1 and done:
        clip = clips[0]
        output = Path(clip.output_file())
        mlflow.log_artifact(str(output), artifact_path="result")
        source, _ = clip.local_inputs()
        mlflow.log_image(_png_image(preview_png(source, output)), "preview/strip.png")
    return len(clips) - len(done)


def _png_image(data: bytes) -> Any:
    import io

    from PIL import Image

    return Image.open(io.BytesIO(data))


def main(argv: list[str] | None = None) -> int:
    return run_scoped(build_parser(), _main, argv)


def _main(args: argparse.Namespace, tracking: str) -> int:
    """The video pipeline as one MLflow run, inside ``main``'s MLflow scope."""
    import luigi
    import mlflow

    from neuralstyle.run.container import model_container
    from neuralstyle.ui.stylize_run import default_experiment_id
    from tasks.stylize import one_line

    try:
        executor = resolve_executor(args.executor, args.server_url)
    except ValueError as exc:
        print(f"stylize_video: error: {exc}", file=sys.stderr)
        return 2
    with mlflow.start_run(run_id=os.environ.get("MLFLOW_RUN_ID") or None,
                          experiment_id=default_experiment_id(mlflow.MlflowClient())) as run:
        params = {k: v for k, v in vars(args).items() if k != "tracking_uri"}
        _log_params(mlflow.MlflowClient(), run.info.run_id, {**params, "executor_used": executor})
        started = time.perf_counter()
        try:
            if executor == "docker":
                with model_container(args.model_uri, tracking_uri=tracking) as url:
                    task = build_task(args, "server", url)
                    result = luigi.build([task], local_scheduler=True, workers=args.workers,
                                         detailed_summary=True)
            else:
                task = build_task(args, args.executor, args.server_url)
                result = luigi.build([task], local_scheduler=True, workers=args.workers,
                                     detailed_summary=True)
        except Exception as exc:
            print(f"stylize_video: error: {one_line(exc)}", file=sys.stderr)
            mlflow.end_run(status="FAILED")
            return 2 if isinstance(exc, ValueError) else 1
        mlflow.log_text(result.summary_text, "luigi_summary.txt")
        failed = log_outcome(task, time.perf_counter() - started)
        print(f"stylize_video: {'every clip stylized' if not failed else f'{failed} failed'}; "
              f"mlflow run {run.info.run_id} in {tracking}")
        if failed:
            mlflow.end_run(status="FAILED")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
