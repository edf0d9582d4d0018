"""Stylize every photo under an S3 prefix (or a folder) on Spark, with ``mlflow.pyfunc.spark_udf``.

    mlflow run . -e stylize_spark --env-manager local -P images=s3://bucket/in/ \\
        -P output=s3://bucket/out/ -P style=7
    python -m tasks.run_spark --images s3://bucket/in/ --output s3://bucket/out/ --style 7
    python -m tasks.run_spark --images s3://bucket/in/ --output s3://bucket/out/ --master yarn
    luigi --module tasks StylizeSpark --images s3://bucket/in/ --results s3://bucket/out/

The driver lists the photos and the results that already exist (a rerun does only what is
missing); each partition then reads its photos through boto3 (Spark's own S3 connector,
hadoop-aws, is not installable from the package registries, so S3 never goes through Hadoop),
checks them with the model's own decoder, stylizes them with the registered model through
``mlflow.pyfunc.spark_udf(..., env_manager="local")`` and writes each result in one piece: one
complete PUT per S3 object, a temporary sibling renamed into place in a local folder. A bad
photo fails only its own row: the job finishes, writes ``_stylize-report-<style>.csv`` (key,
error) beside the results and logs counts, throughput and peak memory to an MLflow run. When
every photo is done it also writes ``_SUCCESS-<style>`` (the Luigi task's output).
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import json
import math
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import luigi
from luigi.contrib.spark import PySparkTask

from neuralstyle import config
from neuralstyle.model.contract import DEFAULT_PARAMS
from tasks.base import RequestParams
from tasks.batch import RESULT_SUFFIXES
from tasks.stylize import one_line

DEFAULT_MASTER = "local[2]"
# MLflow's spark_udf gets Arrow batches of spark.sql.execution.arrow.maxRecordsPerBatch rows
# (Spark's default: 10,000). Photos are megabytes each and the model takes them one at a time
# anyway: a few rows per batch keep memory flat for little per-batch cost.
DEFAULT_ARROW_BATCH = 4
# Each Spark task loads the model once (~1 s in local mode): enough photos per task to hide it,
# few enough that a lost task redoes little and progress stays visible.
DEFAULT_PHOTOS_PER_TASK = 32
DEFAULT_DRIVER_MEMORY = "2g"  # in local mode the executors live in the driver's JVM
DEFAULT_EXECUTOR_MEMORY = "2g"
# Address-space cap (RLIMIT_AS) of each Python worker. The model maps far more than it touches:
# measured peak 2.0 GB address space (0.5 GB resident) at 1024 px, 3.5 GB (1.5 GB) at 2048 px,
# its largest size. "" = no cap.
DEFAULT_PYSPARK_MEMORY = "6g"
# Passed to executors so that they reach the same S3 (credentials are not: executors use their
# own chain, an instance role on a real cluster).
EXECUTOR_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_REGION",
                "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS")
READ_SCHEMA = "source string, result string, image string, input_sha256 string, input_bytes long"
WRITE_SCHEMA = "source string, result string, error string, bytes long, width int, height int"
RESULT_TYPE = "image string, width int, height int, style string"
FINGERPRINT = "model"  # the output column naming the model that made a result (lineage)
PRECISION = "precision"  # the output column saying what ran (fp32 | bf16), for the lineage


# ----------------------------------------------------------------------------- the plan (driver)

@dataclass(frozen=True)
class Plan:
    """What a run has to do: (photo, result) pairs still missing, and what was found."""

    todo: list[tuple[str, str]]
    listed: int
    skipped_files: int
    existing: int


def style_tag(style: str) -> str:
    """The style as it appears in file names (``7``, ``3_0.5+12_0.5``): as in result names."""
    from neuralstyle.run.inference import default_output

    return Path(default_output("x", style)).stem[len("x-"):]


def beside(output: str, name: str) -> str:
    """``name`` in the output folder or prefix (the report, the success marker)."""
    if output.startswith("s3://"):
        return output.rstrip("/") + "/" + name
    return str(Path(output) / name)


def report_location(output: str, style: str) -> str:
    return beside(output, f"_stylize-report-{style_tag(style)}.csv")


def success_location(output: str, style: str) -> str:
    return beside(output, f"_SUCCESS-{style_tag(style)}")


def existing_results(output: str) -> set[str]:
    """Results already under ``output`` (one listing, not one request per photo)."""
    from tasks.batch import list_images

    if not output.startswith("s3://") and not Path(output).is_dir():
        return set()
    return set(list_images(output)[0])


def make_plan(images: str, output: str, style: str, suffix: str) -> Plan:
    """List the photos and the existing results; keep the photos whose result is missing."""
    from neuralstyle.model.imaging import SUFFIX_FORMATS
    from tasks.batch import is_batch_location, list_images, result_location

    if not is_batch_location(images):
        raise ValueError(f"{images} is not an S3 prefix ending in / or a folder: nothing to list")
    photos, skipped = list_images(images)
    if not photos:
        raise FileNotFoundError(
            f"no photos ({', '.join(SUFFIX_FORMATS)}) under {images} ({skipped} other files)"
        )
    done = existing_results(output)
    pairs = [(photo, result_location(photo, images, output, style, suffix)) for photo in photos]
    todo = [(photo, result) for photo, result in pairs if result not in done]
    return Plan(todo, len(photos), skipped, len(pairs) - len(todo))


# ----------------------------------------------------------------------- partitions (executors)

class _ListParam:
    """Accumulator of (photo, error) pairs: rows that never reach the model."""

    def zero(self, value: list[tuple[str, str]]) -> list[tuple[str, str]]:
        return []

    def addInPlace(self, a: list[tuple[str, str]], b: list[tuple[str, str]]  # noqa: N802
                   ) -> list[tuple[str, str]]:
        a.extend(b)
        return a


def read_source(source: str, s3: Any) -> bytes:
    """The bytes of one photo: one GET from S3, or the local file."""
    from botocore.exceptions import ClientError

    from neuralstyle.run.inference import read_image_file
    from tasks.targets import parse_s3_uri, s3_error

    if not source.startswith("s3://"):
        return read_image_file(source)
    bucket, key = parse_s3_uri(source)
    try:
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as err:
        raise s3_error(err, source, "reading the photo") from err


def check_photo(data: bytes, what: str, max_size: int) -> None:
    """Refuse what the model would refuse, with its words, before the row reaches the model.

    spark_udf fails the whole Spark task (and so the job) when predict raises for one row: the
    model's own decoder checks each photo here, so that a bad one fails only its row.
    """
    from neuralstyle.model import imaging

    rgb = imaging.decode_image(data, what, max_size)
    imaging.fitted_size(rgb.shape[1], rgb.shape[0], max_size, what)


def read_partition(batches: Iterator[Any], *, max_size: int, rejected: Any) -> Iterator[Any]:
    """mapInPandas: (source, result) -> (source, result, base64 image, sha256, size) for the good
    photos only."""
    import base64

    import pandas as pd

    from neuralstyle.run.lineage import sha256_bytes
    from tasks.targets import boto3_s3

    s3 = None
    for batch in batches:
        rows = []
        bad = []
        for source, result in zip(batch["source"], batch["result"], strict=True):
            try:
                if s3 is None and source.startswith("s3://"):
                    s3 = boto3_s3()
                data = read_source(source, s3)
                check_photo(data, f"image {source}", max_size)
            except Exception as exc:  # a bad photo, a missing key: this row only
                message = one_line(exc)
                bad.append((source, message if source in message else f"{source}: {message}"))
                continue
            rows.append((source, result, base64.b64encode(data).decode("ascii"),
                         sha256_bytes(data), len(data)))
        if bad:
            rejected.add(bad)
        yield pd.DataFrame(rows, columns=["source", "result", "image", "input_sha256",
                                          "input_bytes"])


@dataclass(frozen=True)
class LineageContext:
    """What every result's lineage record shares, resolved once on the driver (executors do not
    ask the registry)."""

    model_uri: str
    tracking_uri: str
    version: str | None
    style: str
    params: dict[str, Any]
    precision_column: bool = False  # the model reports what precision ran (PRECISION)


def lineage_record(ctx: LineageContext, row: Any, data: bytes) -> dict[str, Any]:
    """The result's lineage record (``neuralstyle.run.lineage``'s schema)."""
    from neuralstyle.run import lineage

    # The input's bytes stayed in the read stage: only their sha256 and size came along.
    record = lineage.build_record(
        input_uri=row.source, input_bytes=b"", output_uri=row.result, output_bytes=data,
        style=ctx.style, resolved_style=str(row.style), params=ctx.params,
        fingerprint=str(getattr(row, FINGERPRINT, "") or ""), model_uri=ctx.model_uri,
        tracking_uri=None, precision=str(getattr(row, PRECISION, "") or "") or None,
    )
    record["input"].update(sha256=row.input_sha256, bytes=int(row.input_bytes))
    record["model"].update(version=ctx.version, registry=ctx.tracking_uri)
    return record


def write_result(result: str, data: bytes, record: dict[str, Any], s3: Any) -> None:
    """One result in one piece: a single PUT carrying the lineage as metadata (S3), or the
    lineage sidecar then the result, each a temporary sibling renamed into place (a folder)."""
    import mimetypes

    from neuralstyle.run import lineage
    from tasks.targets import parse_s3_uri

    if result.startswith("s3://"):
        bucket, key = parse_s3_uri(result)
        kind = mimetypes.guess_type(key)[0] or "application/octet-stream"
        s3.put_object(Bucket=bucket, Key=key, Body=data, ContentType=kind,
                      Metadata=lineage.s3_metadata(record))
    else:
        lineage.write_result(result, data, record)  # as stylize_file does


def write_partition(batches: Iterator[Any], *, ctx: LineageContext) -> Iterator[Any]:
    """mapInPandas: stylized rows -> written results, one small status row each (no pixels)."""
    import base64

    import pandas as pd

    from tasks.targets import boto3_s3

    s3 = None
    for batch in batches:
        rows = []
        for row in batch.itertuples(index=False):
            source, result, image, width, height = (row.source, row.result, row.image,
                                                    row.width, row.height)
            try:
                if not isinstance(image, str) or not image:
                    raise ValueError("the model returned no image for it")
                data = base64.b64decode(image)
                if s3 is None and result.startswith("s3://"):
                    s3 = boto3_s3()
                write_result(result, data, lineage_record(ctx, row, data), s3)
                rows.append((source, result, None, len(data), int(width), int(height)))
            except Exception as exc:
                rows.append((source, result, f"writing {result}: {one_line(exc)}", 0, 0, 0))
        yield pd.DataFrame(rows, columns=["source", "result", "error", "bytes", "width", "height"])


# ---------------------------------------------------------------------------- the job (driver)

@dataclass
class JobResult:
    """What one run did, for the report, the MLflow run and the exit status."""

    plan: Plan
    ok: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    bytes_written: int = 0
    seconds_job: float = 0.0
    partitions: int = 0
    memory: dict[str, float] = field(default_factory=dict)

    @property
    def failed(self) -> int:
        return len(self.failures)


def spark_conf(master: str, arrow_batch: int, driver_memory: str, executor_memory: str,
               pyspark_memory: str) -> dict[str, str]:
    """The Spark settings this job needs (loopback only, no UI, small Arrow
    batches: README, "Batch on Spark")."""
    conf = {
        "spark.master": master,
        "spark.app.name": "stylize-spark",
        "spark.ui.enabled": "false",
        "spark.sql.execution.arrow.maxRecordsPerBatch": str(arrow_batch),
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.driver.memory": driver_memory,
        "spark.executor.memory": executor_memory,
        # Rows never raise (a bad photo is reported), so a task fails only when its executor
        # does (lost, out of memory): once more is enough (clusters default to 4; local to 1).
        "spark.task.maxFailures": "2",
    }
    if pyspark_memory:
        conf["spark.executor.pyspark.memory"] = pyspark_memory
    if master.startswith("local"):
        # Nothing listens beyond this machine; Spark otherwise binds the host's address.
        conf["spark.driver.bindAddress"] = "127.0.0.1"
        conf["spark.driver.host"] = "127.0.0.1"
    # The executors' Python: PYSPARK_PYTHON when set (a cluster's own), else this interpreter.
    conf["spark.pyspark.python"] = os.environ.get("PYSPARK_PYTHON") or sys.executable
    conf["spark.pyspark.driver.python"] = os.environ.get("PYSPARK_DRIVER_PYTHON") or sys.executable
    for name in EXECUTOR_ENV:
        if os.environ.get(name):
            conf[f"spark.executorEnv.{name}"] = os.environ[name]
    return conf


@contextlib.contextmanager
def spark_session(conf: dict[str, str]) -> Iterator[Any]:
    """A SparkSession with ``conf``, stopped at the end (the JVM goes with it).

    PySpark takes the workers' interpreter only from ``PYSPARK_PYTHON`` (not from
    ``spark.pyspark.python``) when the context starts: it is set for that moment only, so the
    caller's environment is left as it was.
    """
    from pyspark.sql import SparkSession

    builder = SparkSession.builder
    for key, value in conf.items():
        builder = builder.config(key, value)
    previous = os.environ.get("PYSPARK_PYTHON")
    os.environ["PYSPARK_PYTHON"] = conf["spark.pyspark.python"]
    try:
        spark = builder.getOrCreate()
    finally:
        if previous is None:
            os.environ.pop("PYSPARK_PYTHON", None)
        else:
            os.environ["PYSPARK_PYTHON"] = previous
    spark.sparkContext.setLogLevel("ERROR")
    try:
        yield spark
    finally:
        spark.stop()


def is_local(spark: Any) -> bool:
    """True for ``local`` and ``local[N]``: executors are threads of this driver's JVM and
    import our code from this environment (``local-cluster[...]`` has executors of its own)."""
    master = spark.sparkContext.master
    return master == "local" or master.startswith("local[")


def ship_code(spark: Any, folder: Path) -> None:
    """Send ``neuralstyle`` and ``tasks`` to the executors of a real cluster (addPyFile zips)."""
    from neuralstyle.codebase import PACKAGE_DIR

    for root in (PACKAGE_DIR, Path(__file__).resolve().parent):  # neuralstyle/, tasks/
        archive = shutil.make_archive(str(folder / root.name), "zip", root.parent, root.name)
        spark.sparkContext.addPyFile(archive)


class MemoryWatch:
    """Peak RSS of the Spark JVM and of its Python workers, sampled from /proc every 0.2 s.

    Spark reports neither for Python workers; in local mode every executor is a child of the
    JVM this process started, so their memory is visible here. On a cluster only the driver is.
    """

    def __init__(self, root_pid: int | None) -> None:
        self.root_pid = root_pid
        self.peak: dict[str, float] = {"jvm_mb": 0.0, "python_worker_mb": 0.0, "total_mb": 0.0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="memory-watch")

    @staticmethod
    def _rss_mb(pid: int) -> float:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    @staticmethod
    def _children(pid: int) -> list[int]:
        found = []
        try:
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as fh:
                    found += [int(p) for p in fh.read().split()]
        except OSError:
            pass
        return found

    def sample(self) -> None:
        if self.root_pid is None:
            return
        with contextlib.suppress(OSError):
            jvm = self._rss_mb(self.root_pid)
            total = jvm
            stack = self._children(self.root_pid)
            while stack:
                pid = stack.pop()
                with contextlib.suppress(OSError):
                    rss = self._rss_mb(pid)
                    total += rss
                    self.peak["python_worker_mb"] = max(self.peak["python_worker_mb"], rss)
                    stack += self._children(pid)
            self.peak["jvm_mb"] = max(self.peak["jvm_mb"], jvm)
            self.peak["total_mb"] = max(self.peak["total_mb"], total)

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            self.sample()

    def __enter__(self) -> MemoryWatch:
        if sys.platform.startswith("linux") and self.root_pid is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def jvm_pid(spark: Any) -> int | None:
    """The pid of the JVM PySpark started for this session (None when it attached to one)."""
    proc = getattr(getattr(spark.sparkContext, "_gateway", None), "proc", None)
    return getattr(proc, "pid", None)


def model_params(max_size: int, strength: float, preserve_color: bool, quality: int,
                 suffix: str, precision: str = DEFAULT_PARAMS["precision"],
                 paint_size: int = DEFAULT_PARAMS["paint_size"]) -> dict[str, Any]:
    """The per-request params of the model contract; the format follows the results' suffix."""
    from neuralstyle.model.imaging import SUFFIX_FORMATS

    return {"max_size": max_size, "strength": strength, "preserve_color": preserve_color,
            "quality": quality, "format": SUFFIX_FORMATS[suffix], "precision": precision,
            "paint_size": paint_size}


def check_model(model_uri: str, tracking_uri: str | None, style: str, params: dict[str, Any]
                ) -> Any:
    """Stylize a blank 64 px image on the driver: an unknown style, bad params or a model that
    does not load fail here, in the model's own words, before Spark starts. Returns the answer
    row (its ``model`` column is the fingerprint the lineage records)."""
    from PIL import Image

    from neuralstyle.run.inference import LocalPredictor, stylize_bytes

    blank = io.BytesIO()
    Image.new("RGB", (64, 64)).save(blank, "PNG")
    return stylize_bytes(blank.getvalue(), style, LocalPredictor(model_uri, tracking_uri),
                         {**params, "max_size": 64, "paint_size": 0},
                         what="a blank test image")[1]


def run_job(spark: Any, plan: Plan, *, style: str, model_uri: str, params: dict[str, Any],
            photos_per_task: int, ctx: LineageContext, fingerprint: bool) -> JobResult:
    """Read, check, stylize and write every planned photo; bad photos fail only their rows."""
    import mlflow
    from pyspark.sql import functions as F  # noqa: N812

    result = JobResult(plan)
    if not plan.todo:
        return result
    sc = spark.sparkContext
    rejected = sc.accumulator([], _ListParam())
    result.partitions = max(1, min(len(plan.todo),
                                   max(sc.defaultParallelism,
                                       math.ceil(len(plan.todo) / photos_per_task))))
    # Models packaged before lineage have no fingerprint column; spark_udf needs the exact fields.
    result_type = RESULT_TYPE + (f", {FINGERPRINT} string" if fingerprint else "")
    result_type += f", {PRECISION} string" if ctx.precision_column else ""
    udf = mlflow.pyfunc.spark_udf(spark, model_uri, result_type=result_type, env_manager="local",
                                  params=params)
    todo = spark.createDataFrame(sc.parallelize(plan.todo, result.partitions),
                                 "source string, result string")
    read = functools.partial(read_partition, max_size=int(params["max_size"]), rejected=rejected)
    stylized = (
        todo.mapInPandas(read, READ_SCHEMA)
        .withColumn("out", udf(F.struct(F.col("image").alias("image"),
                                        F.lit(style).alias("style"))))
        .select("source", "result", "input_sha256", "input_bytes", "out.*")
    )
    started = time.perf_counter()
    with MemoryWatch(jvm_pid(spark) if is_local(spark) else None) as watch:
        write = functools.partial(write_partition, ctx=ctx)
        rows = stylized.mapInPandas(write, WRITE_SCHEMA).collect()
        watch.sample()
    result.seconds_job = time.perf_counter() - started
    result.memory = dict(watch.peak)
    failures = dict(rejected.value)  # a retried task may add a row twice: one entry per photo
    for row in rows:
        if row.error:
            failures[row.source] = row.error
        else:
            result.ok += 1
            result.bytes_written += row.bytes
    result.failures = sorted(failures.items())
    return result


def put_text(location: str, text: str) -> None:
    """Write a small text file beside the results, in one piece."""
    from neuralstyle.atomic import write_bytes_atomic
    from tasks.targets import boto3_s3, parse_s3_uri

    data = text.encode("utf-8")
    if location.startswith("s3://"):
        bucket, key = parse_s3_uri(location)
        boto3_s3().put_object(Bucket=bucket, Key=key, Body=data, ContentType="text/plain")
    else:
        write_bytes_atomic(location, data)


def remove_marker(location: str) -> None:
    """Drop an earlier run's success marker: this run decides again."""
    from tasks.targets import boto3_s3, parse_s3_uri

    if location.startswith("s3://"):
        bucket, key = parse_s3_uri(location)
        boto3_s3().delete_object(Bucket=bucket, Key=key)
    else:
        Path(location).unlink(missing_ok=True)


def report_csv(failures: list[tuple[str, str]]) -> str:
    """``key,error`` rows, one per photo that failed in this run (a header only if none did)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["key", "error"])
    writer.writerows(failures)
    return out.getvalue()


def summary_line(result: JobResult) -> str:
    """``24 photos listed, 3 already done, 19 stylized, 2 failed: <photo>: <reason>; ...``"""
    plan = result.plan
    line = (f"{plan.listed} photos listed, {plan.existing} already done, {result.ok} stylized, "
            f"{result.failed} failed")
    if result.failures:
        line += ": " + "; ".join(error if key in error else f"{key}: {error}"
                                 for key, error in result.failures[:5])
        if result.failed > 5:
            line += f"; ... ({result.failed - 5} more in the report)"
    return line


def metrics(result: JobResult, seconds_session: float) -> dict[str, float]:
    """Counts, throughput and peak memory for the MLflow run."""
    found = {
        "photos_listed": result.plan.listed, "photos_already_done": result.plan.existing,
        "photos_ok": result.ok, "photos_failed": result.failed,
        "files_skipped": result.plan.skipped_files, "partitions": result.partitions,
        "seconds_session_start": seconds_session, "seconds_job": result.seconds_job,
        "bytes_written": result.bytes_written,
    }
    if result.ok and result.seconds_job:
        found["photos_per_second"] = result.ok / result.seconds_job
        found["seconds_per_photo"] = result.seconds_job / result.ok
    found.update({f"peak_rss_{name}": value for name, value in result.memory.items() if value})
    return found


@dataclass(frozen=True)
class JobSettings:
    """Everything a run needs, from the CLI or from the Luigi task's parameters."""

    images: str
    output: str
    style: str = config.DEFAULT_STYLE
    suffix: str = ".jpg"
    model_uri: str = config.DEFAULT_MODEL_URI
    tracking_uri: str | None = None
    master: str = DEFAULT_MASTER
    arrow_batch: int = DEFAULT_ARROW_BATCH
    photos_per_task: int = DEFAULT_PHOTOS_PER_TASK
    driver_memory: str = DEFAULT_DRIVER_MEMORY
    executor_memory: str = DEFAULT_EXECUTOR_MEMORY
    pyspark_memory: str = DEFAULT_PYSPARK_MEMORY
    max_size: int = DEFAULT_PARAMS["max_size"]
    strength: float = DEFAULT_PARAMS["strength"]
    preserve_color: bool = DEFAULT_PARAMS["preserve_color"]
    quality: int = DEFAULT_PARAMS["quality"]
    precision: str = DEFAULT_PARAMS["precision"]
    paint_size: int = DEFAULT_PARAMS["paint_size"]

    def conf(self) -> dict[str, str]:
        return spark_conf(self.master, self.arrow_batch, self.driver_memory,
                          self.executor_memory, self.pyspark_memory)

    def params(self) -> dict[str, Any]:
        return model_params(self.max_size, self.strength, self.preserve_color, self.quality,
                            self.suffix, self.precision, self.paint_size)


def _inside(inner: str, outer: str) -> bool:
    """True when the folder or prefix ``inner`` is ``outer`` or lies under it."""
    if inner.startswith("s3://") != outer.startswith("s3://"):
        return False
    if inner.startswith("s3://"):
        return (inner.rstrip("/") + "/").startswith(outer.rstrip("/") + "/")
    inner_path, outer_path = Path(inner).resolve(), Path(outer).resolve()
    return inner_path == outer_path or outer_path in inner_path.parents


def validate(settings: JobSettings) -> None:
    """Bad arguments fail before Spark starts, naming the argument."""
    from neuralstyle.model.contract import Params
    from tasks.targets import parse_s3_uri

    for name in ("images", "output"):
        where = getattr(settings, name)
        if where.startswith("s3://"):
            parse_s3_uri(where, allow_empty_key=True)
        elif not where:
            raise ValueError(f"--{name} is empty: give s3://bucket/prefix/ or a folder")
    if _inside(settings.output, settings.images):
        raise ValueError(f"--output {settings.output} is inside --images {settings.images}: the "
                         "results would be stylized again as photos next time; pick another place")
    if settings.arrow_batch < 1 or settings.photos_per_task < 1:
        raise ValueError("--arrow-batch and --photos-per-task must be at least 1")
    Params.parse(settings.params())  # the model's own check: max_size, strength, quality


def prepare(settings: JobSettings) -> tuple[LineageContext, bool]:
    """Check the model on the driver; the lineage shared by every result, and whether the model
    reports its fingerprint."""
    from neuralstyle.run import lineage

    answer = check_model(settings.model_uri, settings.tracking_uri, settings.style,
                         settings.params())
    tracking = config.tracking_uri(settings.tracking_uri)
    fingerprint = str(answer.get(FINGERPRINT, "") or "")
    name = lineage.model_name_of(settings.model_uri)
    version = (lineage.registry_version(tracking, name, fingerprint)
               if name and fingerprint else None)
    ctx = LineageContext(settings.model_uri, tracking, version, settings.style,
                         {**DEFAULT_PARAMS, **settings.params()}, PRECISION in answer)
    return ctx, FINGERPRINT in answer


def stylize_on_spark(settings: JobSettings, spark: Any | None = None,
                     seconds_session: float = 0.0) -> tuple[JobResult, str]:
    """The whole run inside the active MLflow run (and its scope): plan, job, report, marker,
    metrics."""
    import mlflow

    from tasks.run import model_version

    validate(settings)
    ctx, fingerprint = prepare(settings)
    plan = make_plan(settings.images, settings.output, settings.style, settings.suffix)
    marker = success_location(settings.output, settings.style)
    remove_marker(marker)
    with contextlib.ExitStack() as stack:
        if spark is None:
            started = time.perf_counter()
            spark = stack.enter_context(spark_session(settings.conf()))
            seconds_session = time.perf_counter() - started
        if not is_local(spark) and plan.todo:
            ship_code(spark, Path(stack.enter_context(tempfile.TemporaryDirectory())))
        result = run_job(spark, plan, style=settings.style, model_uri=settings.model_uri,
                         params=settings.params(), photos_per_task=settings.photos_per_task,
                         ctx=ctx, fingerprint=fingerprint)
    report = report_location(settings.output, settings.style)
    text = report_csv(result.failures)
    put_text(report, text)
    counts = {"listed": plan.listed, "already_done": plan.existing, "stylized": result.ok,
              "failed": result.failed, "report": report}
    if not result.failures:
        put_text(marker, json.dumps(counts) + "\n")
    mlflow.log_metrics(metrics(result, seconds_session))
    mlflow.log_text(text, "stylize_report.csv")
    mlflow.set_tag("model_version",
                   model_version(settings.model_uri, config.tracking_uri(settings.tracking_uri)))
    return result, report


# ---------------------------------------------------------------------------------- for Luigi

class StylizeSpark(RequestParams, PySparkTask):
    """Luigi's own Spark task (spark-submit) around the same job; done when ``_SUCCESS-<style>``
    exists, which only a run without failures writes. A failed run fails the task; running it
    again does only the photos still missing."""

    images = luigi.Parameter(description="photos: s3://bucket/prefix/ or a local folder")
    results = luigi.Parameter(description="s3://bucket/prefix/ or a local folder for the results")
    style = luigi.Parameter(default=config.DEFAULT_STYLE,
                            description=f"style (default: {config.DEFAULT_STYLE})")
    suffix = luigi.ChoiceParameter(default=".jpg", choices=RESULT_SUFFIXES, var_type=str,
                                   description="format of the results (default: .jpg)")
    model_uri = luigi.Parameter(default=config.DEFAULT_MODEL_URI,
                                description=f"registered model (default: {config.DEFAULT_MODEL_URI})")
    tracking_uri = luigi.OptionalParameter(
        default=None, significant=False,
        description=f"MLflow URI (default: $MLFLOW_TRACKING_URI, else {config.DEFAULT_TRACKING_URI})")
    spark_master = luigi.Parameter(default=DEFAULT_MASTER,
                                   description=f"Spark master (default: {DEFAULT_MASTER})")
    arrow_batch = luigi.IntParameter(default=DEFAULT_ARROW_BATCH, significant=False,
                                     description=f"rows per Arrow batch (default: {DEFAULT_ARROW_BATCH})")
    photos_per_task = luigi.IntParameter(
        default=DEFAULT_PHOTOS_PER_TASK, significant=False,
        description=f"photos per Spark task (default: {DEFAULT_PHOTOS_PER_TASK})")

    @property
    def master(self) -> str:
        return self.spark_master

    @property
    def pyspark_python(self) -> str:
        return os.environ.get("PYSPARK_PYTHON") or sys.executable

    @property
    def pyspark_driver_python(self) -> str:
        return os.environ.get("PYSPARK_DRIVER_PYTHON") or sys.executable

    @property
    def spark_submit(self) -> str:
        """spark-submit beside this interpreter (the pyspark wheel's), unless luigi.cfg names one."""
        from luigi import configuration

        local = Path(sys.executable).parent / "spark-submit"
        return configuration.get_config().get("spark", "spark-submit", str(local))

    def program_environment(self) -> dict[str, str]:
        """spark-submit's environment: SPARK_HOME is the pyspark wheel unless already set (its
        own lookup runs the ``python3`` on PATH, which may not be this environment's)."""
        env = super().program_environment()
        if not env.get("SPARK_HOME"):
            from pyspark.find_spark_home import _find_spark_home

            env["SPARK_HOME"] = _find_spark_home()
        return env

    def settings(self) -> JobSettings:
        return JobSettings(
            images=self.images, output=self.results, style=self.style, suffix=self.suffix,
            model_uri=self.model_uri, tracking_uri=self.tracking_uri, master=self.spark_master,
            arrow_batch=self.arrow_batch, photos_per_task=self.photos_per_task,
            **self.request_params(),
        )

    @property
    def conf(self) -> dict[str, str]:  # type: ignore[override]
        """spark-submit --conf pairs: the job's settings (master and memory have their flags)."""
        skip = ("spark.master", "spark.driver.memory", "spark.pyspark.python",
                "spark.pyspark.driver.python")
        return {k: v for k, v in self.settings().conf().items() if k not in skip}

    @property
    def driver_memory(self) -> str:
        return self.settings().driver_memory

    def output(self) -> luigi.Target:
        marker = success_location(self.results, self.style)
        if marker.startswith("s3://"):
            from tasks.targets import S3ObjectTarget, s3_client

            return S3ObjectTarget(marker, client=s3_client())
        return luigi.LocalTarget(marker)

    def on_failure(self, exception: BaseException) -> str:
        """One line for Luigi's summary: the job's own last word, not spark-submit's whole log."""
        text = f"{getattr(exception, 'out', '') or ''}\n{getattr(exception, 'err', '') or ''}"
        for line in reversed(text.splitlines()):
            for mark in ("RuntimeError: ", "stylize_spark: error: "):
                if mark in line:
                    return line.split(mark, 1)[1].strip()
        return super().on_failure(exception)

    def main(self, sc: Any, *args: Any) -> None:
        """In the spark-submit process: the same run as ``python -m tasks.run_spark``."""
        import mlflow
        from pyspark.sql import SparkSession

        with config.mlflow_scope(self.tracking_uri), mlflow.start_run():
            result, report = stylize_on_spark(self.settings(), SparkSession(sc))
        print(f"StylizeSpark: {summary_line(result)}")
        if result.failures:
            raise RuntimeError(f"{summary_line(result)} (report: {report})")

