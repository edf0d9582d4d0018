"""Batch stylization on Spark (``tasks/spark.py``), run as users run it, on ``local[2]``.

Real parts only: PySpark 4.3 with Java 17, ``mlflow.pyfunc.spark_udf`` over the registered model,
moto's standalone S3 server on 127.0.0.1 read and written through boto3 inside the partitions,
the MLflow CLI (``mlflow run . -e stylize_spark``) and Luigi's ``PySparkTask`` (spark-submit),
each in its own process. 24 good photos and 3 bad ones: the bad ones fail only their own rows.
"""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
from PIL import Image

from neuralstyle import demo
from neuralstyle.builder.samples import SAMPLES, sample_rgb

REPO = Path(__file__).resolve().parents[2]
FAKE_AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1"}
GOOD = 24
BAD = {  # key -> what the report must say about it
    "in/bad/notes.jpg": "is not a JPEG/PNG/WebP image",
    "in/bad/cut.jpg": "is truncated or corrupt",
    "in/tiny.png": "is too small",
}

pytestmark = [pytest.mark.spark, pytest.mark.slow]


def encoded(rgb: np.ndarray, fmt: str) -> bytes:
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, fmt)
    return out.getvalue()


def good_photos() -> dict[str, bytes]:
    """24 real photos of several sizes (odd ones too) and formats, some in a sub-prefix."""
    found = {}
    for i in range(GOOD):
        rgb = sample_rgb(SAMPLES[i % len(SAMPLES)])
        side = 96 + 16 * (i % 6) + (i % 2)  # 96..177 px, odd and even
        img = Image.fromarray(rgb).resize((side, side * 3 // 4))
        fmt, suffix = [("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp")][i % 3]
        folder = "in/sub/" if i % 4 == 0 else "in/"
        found[f"{folder}photo-{i:02d}.{suffix}"] = encoded(np.asarray(img), fmt)
    return found


def bad_photos() -> dict[str, bytes]:
    jpeg = encoded(sample_rgb("chelsea"), "JPEG")
    return {
        "in/bad/notes.jpg": b"these are my notes, not a photo\n",
        "in/bad/cut.jpg": jpeg[: len(jpeg) // 3],
        "in/tiny.png": encoded(np.zeros((20, 20, 3), np.uint8), "PNG"),
    }


def result_key(key: str) -> str:
    stem, _ = key[len("in/"):].rsplit(".", 1)
    return f"out/{stem}-7.jpg"


@pytest.fixture
def s3_server() -> Iterator[str]:
    with demo.s3_server() as endpoint:
        yield endpoint


def client(endpoint: str) -> Any:
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def job_env(endpoint: str, registry: Any, tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, **FAKE_AWS, "AWS_ENDPOINT_URL_S3": endpoint,
           "AWS_CONFIG_FILE": str(tmp_path / "none"),
           "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
           "MLFLOW_TRACKING_URI": registry.tracking_uri,
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    for name in ("AWS_PROFILE", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "PYSPARK_PYTHON",
                 "PYSPARK_DRIVER_PYTHON"):
        env.pop(name, None)
    return env


def objects(s3: Any, prefix: str, bucket: str = "photos") -> dict[str, Any]:
    listing = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {item["Key"]: item for item in listing}


def report_rows(s3: Any) -> dict[str, str]:
    body = s3.get_object(Bucket="photos", Key="out/_stylize-report-7.csv")["Body"].read()
    rows = list(csv.reader(io.StringIO(body.decode())))
    assert rows[0] == ["key", "error"]
    return {key: error for key, error in rows[1:]}


def last_run_metrics(registry: Any) -> tuple[str, dict[str, float]]:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=registry.tracking_uri)
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        order_by=["attributes.start_time DESC"], max_results=1,
    )
    return runs[0].info.status, runs[0].data.metrics


def spark_job(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tasks.run_spark", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=900)


def test_s3_prefix_of_27_photos_with_3_bad_ones_then_reruns_do_only_what_is_missing(
    registry: Any, model: Any, s3_server: str, tmp_path: Path
) -> None:
    s3 = client(s3_server)
    s3.create_bucket(Bucket="photos")
    good = good_photos()
    for key, body in {**good, **bad_photos()}.items():
        s3.put_object(Bucket="photos", Key=key, Body=body)
    s3.put_object(Bucket="photos", Key="in/README.txt", Body=b"not a photo, skipped")
    env = job_env(s3_server, registry, tmp_path)

    # 1. As a user types it: mlflow run, local[2] by default.
    proc = subprocess.run(
        [sys.executable, "-m", "mlflow", "run", str(REPO), "-e", "stylize_spark",
         "--env-manager", "local", "--experiment-name", "spark-test",
         "-P", "images=s3://photos/in/", "-P", "output=s3://photos/out/", "-P", "style=7"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-4000:]  # the job finished; 3 photos failed
    assert "27 photos listed, 0 already done, 24 stylized, 3 failed" in out, out[-4000:]
    written = objects(s3, "out/")
    assert sorted(k for k in written if not k.startswith("out/_")) == sorted(
        result_key(k) for k in good)
    reasons = report_rows(s3)
    assert sorted(reasons) == sorted(f"s3://photos/{k}" for k in BAD)
    for key, words in BAD.items():
        assert words in reasons[f"s3://photos/{key}"] and key in reasons[f"s3://photos/{key}"]
    assert "out/_SUCCESS-7" not in written  # not done: the Luigi task would run again
    status, metrics = last_run_metrics(registry)
    assert status == "FAILED"
    assert (metrics["photos_ok"], metrics["photos_failed"], metrics["photos_listed"]) == (24, 3, 27)
    assert metrics["photos_per_second"] > 0 and metrics["peak_rss_python_worker_mb"] > 100

    # The pixels are the registered model's: the same photo in-process gives the same image.
    import base64

    import pandas as pd

    key = "in/photo-01.png"
    frame = pd.DataFrame({"image": [base64.b64encode(good[key]).decode()], "style": ["7"]})
    expected = Image.open(io.BytesIO(base64.b64decode(model.predict(frame).iloc[0]["image"])))
    got_bytes = s3.get_object(Bucket="photos", Key=result_key(key))["Body"].read()
    got = Image.open(io.BytesIO(got_bytes))
    assert got.format == "JPEG" and got.size == expected.size == Image.open(io.BytesIO(good[key])).size
    diff = np.abs(np.asarray(got, np.int16) - np.asarray(expected, np.int16))
    assert diff.max() <= 1, diff.max()
    # Its lineage travels as the object's metadata: which version made it, from which bytes.
    import hashlib

    meta = s3.head_object(Bucket="photos", Key=result_key(key))["Metadata"]
    assert meta["model-version"] == registry.version
    assert meta["input-uri"] == f"s3://photos/{key}"
    assert meta["input-sha256"] == hashlib.sha256(good[key]).hexdigest()
    assert meta["output-sha256"] == hashlib.sha256(got_bytes).hexdigest()
    assert meta["style"] == "style-07"

    # 2. Fix one photo; the rerun stylizes only it and leaves the 24 results untouched.
    s3.put_object(Bucket="photos", Key="in/bad/cut.jpg", Body=good["in/photo-01.png"])
    proc = spark_job(env, tmp_path, "--images", "s3://photos/in/", "--output", "s3://photos/out/")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-4000:]
    assert "27 photos listed, 24 already done, 1 stylized, 2 failed" in out, out[-4000:]
    again = objects(s3, "out/")
    assert "out/bad/cut-7.jpg" in again
    for key in written:
        if not key.startswith("out/_"):
            assert again[key]["ETag"] == written[key]["ETag"]
            assert again[key]["LastModified"] == written[key]["LastModified"], key
    assert sorted(report_rows(s3)) == ["s3://photos/in/bad/notes.jpg", "s3://photos/in/tiny.png"]

    # 3. Without the bad photos the run succeeds: exit 0, an empty report, the success marker.
    s3.delete_object(Bucket="photos", Key="in/bad/notes.jpg")
    s3.delete_object(Bucket="photos", Key="in/tiny.png")
    proc = spark_job(env, tmp_path, "--images", "s3://photos/in/", "--output", "s3://photos/out/")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert report_rows(s3) == {}
    assert "out/_SUCCESS-7" in objects(s3, "out/_")


def test_unknown_style_fails_before_spark_starts_and_writes_nothing(
    registry: Any, s3_server: str, tmp_path: Path
) -> None:
    s3 = client(s3_server)
    s3.create_bucket(Bucket="styles")  # moto keeps buckets for the whole test process
    s3.put_object(Bucket="styles", Key="in/a.png", Body=good_photos()["in/photo-01.png"])
    proc = spark_job(job_env(s3_server, registry, tmp_path), tmp_path, "--images",
                     "s3://styles/in/", "--output", "s3://styles/out/", "--style", "99")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "stylize_spark: error:" in proc.stderr and "99" in proc.stderr
    assert objects(s3, "out/", "styles") == {}


def test_luigi_pyspark_task_on_a_folder_fails_on_a_bad_photo_then_completes(
    registry: Any, tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, name in enumerate(SAMPLES[:3]):
        rgb = np.asarray(Image.fromarray(sample_rgb(name)).resize((120 + i, 90)))
        (photos / f"{name}.jpg").write_bytes(encoded(rgb, "JPEG"))
    (photos / "broken.jpg").write_bytes(b"not a photo at all")
    results = tmp_path / "results"
    env = job_env("http://127.0.0.1:9", registry, tmp_path)  # S3 is not used here
    build = [sys.executable, "-m", "luigi", "--module", "tasks", "StylizeSpark",
             "--images", str(photos), "--results", str(results), "--local-scheduler",
             "--retcode-task-failed", "3"]

    proc = subprocess.run(build, env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 3, out[-4000:]
    assert "4 photos listed, 0 already done, 3 stylized, 1 failed" in out, out[-4000:]
    assert sorted(p.name for p in results.iterdir()) == [
        "_stylize-report-7.csv", "astronaut-7.jpg", "astronaut-7.jpg.lineage.json",
        "chelsea-7.jpg", "chelsea-7.jpg.lineage.json", "coffee-7.jpg", "coffee-7.jpg.lineage.json"]
    from neuralstyle.run import lineage

    record = lineage.read_sidecar(results / "chelsea-7.jpg")
    assert record["model"]["version"] == registry.version
    assert record["input"]["uri"] == str(photos / "chelsea.jpg")
    assert record["output"]["sha256"] == lineage.sha256_bytes((results / "chelsea-7.jpg").read_bytes())
    assert "broken.jpg is not a JPEG/PNG/WebP image" in (results / "_stylize-report-7.csv").read_text()
    first = {p.name: p.stat().st_mtime_ns for p in results.glob("*-7.jpg")}

    (photos / "broken.jpg").unlink()
    proc = subprocess.run(build, env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert (results / "_SUCCESS-7").exists()
    assert {p.name: p.stat().st_mtime_ns for p in results.glob("*-7.jpg")} == first
    assert not [p for p in results.iterdir() if "-luigi-tmp-" in p.name]


def test_spark_settings_bound_arrow_batches_and_stay_on_loopback() -> None:
    from tasks.spark import spark_conf

    conf = spark_conf("local[2]", 4, "2g", "2g", "6g")
    assert conf["spark.sql.execution.arrow.maxRecordsPerBatch"] == "4"
    assert conf["spark.driver.bindAddress"] == conf["spark.driver.host"] == "127.0.0.1"
    assert conf["spark.ui.enabled"] == "false"
    assert conf["spark.executor.pyspark.memory"] == "6g"
    assert "spark.driver.bindAddress" not in spark_conf("spark://10.0.0.5:7077", 4, "2g", "2g", "")
