"""Stylize every photo under an S3 prefix (or a folder) on Spark, logged as an MLflow run.

    mlflow run . -e stylize_spark --env-manager local -P images=s3://bucket/in/ \\
        -P output=s3://bucket/out/ -P style=7
    python -m tasks.run_spark --images s3://bucket/in/ --output s3://bucket/out/ --style 7
    python -m tasks.run_spark --images s3://bucket/in/ --output s3://bucket/out/ \\
        --master spark://spark-master:7077 --executor-memory 4g

The job itself is ``tasks.spark`` (what it reads, checks, writes and reports). Under ``mlflow
run`` the run MLflow created (``MLFLOW_RUN_ID``) gets the params, counts, throughput, peak memory
and the report; otherwise a new run is started. Exit status: 0 when every photo is stylized, 1
when one failed (``_stylize-report-<style>.csv`` beside the results says which and why) or the
job could not run, 2 for bad arguments (an output inside the photos, an unknown style, ...).
"""

from __future__ import annotations

import argparse
import os
import sys

from neuralstyle import config
from tasks.batch import RESULT_SUFFIXES
from tasks.spark import (
    DEFAULT_ARROW_BATCH,
    DEFAULT_DRIVER_MEMORY,
    DEFAULT_EXECUTOR_MEMORY,
    DEFAULT_MASTER,
    DEFAULT_PHOTOS_PER_TASK,
    DEFAULT_PYSPARK_MEMORY,
    JobSettings,
    stylize_on_spark,
    summary_line,
)


def build_parser() -> argparse.ArgumentParser:
    """CLI flags (the MLproject ``stylize_spark`` entry maps its parameters onto these)."""
    from neuralstyle.run.flags import add_request_flags
    from tasks.run import _optional, _whole  # as the Luigi entry point

    parser = argparse.ArgumentParser(prog="python -m tasks.run_spark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", required=True,
                        help="photos: s3://bucket/prefix/ or a local folder")
    parser.add_argument("--output", required=True,
                        help="results: s3://bucket/prefix/ (one PUT each) or a local folder")
    parser.add_argument("--style", default=config.DEFAULT_STYLE,
                        help="index 0..25, a name or a blend '3:0.5,12:0.5' (default: %(default)s)")
    parser.add_argument("--suffix", default=".jpg", choices=RESULT_SUFFIXES,
                        help="format of the results (default: %(default)s)")
    parser.add_argument("--model-uri", default=config.DEFAULT_MODEL_URI,
                        help="registered model (default: %(default)s)")
    parser.add_argument("--tracking-uri", type=_optional, default=None,
                        help="MLflow tracking/registry URI (default: $MLFLOW_TRACKING_URI, else "
                             f"{config.DEFAULT_TRACKING_URI})")
    parser.add_argument("--master", default=DEFAULT_MASTER,
                        help="Spark master: local[N], spark://host:7077, yarn (default: %(default)s)")
    parser.add_argument("--arrow-batch", type=_whole, default=DEFAULT_ARROW_BATCH,
                        help="rows per Arrow batch handed to the model "
                             "(spark.sql.execution.arrow.maxRecordsPerBatch; default: %(default)s)")
    parser.add_argument("--photos-per-task", type=_whole, default=DEFAULT_PHOTOS_PER_TASK,
                        help="photos per Spark task; each task loads the model once "
                             "(default: %(default)s)")
    parser.add_argument("--driver-memory", default=DEFAULT_DRIVER_MEMORY,
                        help="JVM heap of the driver, and of the executors in local mode "
                             "(default: %(default)s)")
    parser.add_argument("--executor-memory", default=DEFAULT_EXECUTOR_MEMORY,
                        help="JVM heap per executor on a cluster (default: %(default)s)")
    parser.add_argument("--pyspark-memory", default=DEFAULT_PYSPARK_MEMORY,
                        help="address-space cap per Python worker, spark.executor.pyspark.memory; "
                             "'' for none (default: %(default)s)")
    add_request_flags(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    from tasks.run import run_scoped

    return run_scoped(build_parser(), _main, argv)


def _main(args: argparse.Namespace, tracking: str) -> int:
    """The Spark job as one MLflow run, inside ``main``'s MLflow scope."""
    import mlflow

    from neuralstyle.model.errors import is_input_error
    from neuralstyle.ui.stylize_run import how_to_see
    from tasks.run import _log_params
    from tasks.stylize import one_line

    settings = JobSettings(**vars(args))
    with mlflow.start_run(run_id=os.environ.get("MLFLOW_RUN_ID") or None) as run:
        spark_settings = {f"spark.{k}": v for k, v in settings.conf().items()
                          if "arrow" in k or "memory" in k}
        _log_params(mlflow.MlflowClient(), run.info.run_id,
                    {**vars(args), "tracking_uri": None, **spark_settings})
        try:
            result, report = stylize_on_spark(settings)
        except Exception as exc:  # bad arguments, no Java, an unknown style, a job that died
            print(f"stylize_spark: error: {one_line(exc)}", file=sys.stderr)
            mlflow.end_run(status="FAILED")
            return 2 if isinstance(exc, ValueError) or is_input_error(exc) else 1
        print(f"stylize_spark: {summary_line(result)}")
        if result.ok:
            print(f"stylize_spark: {result.ok / result.seconds_job:.2f} photos/s on "
                  f"{settings.master}, {result.partitions} tasks; peak RSS: "
                  + ", ".join(f"{k} {v:.0f} MB" for k, v in result.memory.items()))
        print(f"results: {settings.output}  report: {report}")
        print(f"mlflow: run {run.info.run_id} in {tracking} (experiment "
              f"{run.info.experiment_id}); see it with: "
              f"{how_to_see(tracking, run.info.experiment_id, run.info.run_id)}")
        if result.failures:
            mlflow.end_run(status="FAILED")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
