"""The Stylize pipeline on moto's in-process S3 and the real model (local executor).

What a user of ``luigi --module tasks Stylize/StylizeBatch`` and ``python -m tasks.run`` would
notice: the right pixels, nothing half-written, reruns that redo only what is missing, and
failures that name the photo and the problem without stopping the other photos.
"""

# Fixtures imported from s3_fixtures come back as test parameters of the same name:
# ruff: noqa: F811

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import luigi
import numpy as np
import pandas as pd
import pytest
import responses
from luigi.execution_summary import LuigiStatusCode
from oracle import decode_rgb, faithful, oracle_uint8
from PIL import Image
from s3_fixtures import (  # noqa: F401  (fixtures are found by name)
    aws_env,
    bucket,
    fresh_luigi,
    run,
    s3,
)

from neuralstyle.run.inference import LocalPredictor
from neuralstyle.run.serving import free_port
from tasks import PublishStylized, Stylize, StylizeBatch, StylizeToCanvas
from tasks.batch import list_images, result_location
from tasks.report import outcomes, summary_line

pytestmark = pytest.mark.slow  # the registry fixture packages the real model (~20 s, once)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in a scratch folder: downloads (data/) and default outputs (out/) land here."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def leftovers(folder: Path) -> list[Path]:
    """Temporary files a failed or interrupted write would leave behind."""
    return [p for p in folder.rglob("*") if "luigi-tmp" in p.name]


def stylize(registry: Any, **params: Any) -> Stylize:
    return Stylize(tracking_uri=registry.tracking_uri, model_uri=registry.model_uri, **params)


def png_of(photo: bytes, size: tuple[int, int] | None = None) -> bytes:
    img = Image.open(io.BytesIO(photo)).convert("RGB")
    if size:
        img = img.resize(size)
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


def warm_model(registry: Any, photos: dict[str, bytes]) -> None:
    """Load the model in this process (cached per URI) before Luigi forks workers."""
    from neuralstyle.run.inference import stylize_bytes

    stylize_bytes(photos["chelsea"], "7", LocalPredictor(registry.model_uri, registry.tracking_uri),
                  {"max_size": 64})


# ---------------------------------------------------------------- one photo


def test_s3_photo_to_stylized_png_matches_the_oracle(
    registry: Any, photos: dict[str, bytes], s3: Any, bucket: str, workdir: Path
) -> None:
    s3.put_object(Bucket=bucket, Key="in/cat.jpg", Body=photos["chelsea"])
    task = stylize(registry, image="s3://photos/in/cat.jpg", style="7",
                   output_path="results/cat-7.png", executor="local")
    result = run(task)
    assert result.status == LuigiStatusCode.SUCCESS, result.summary_text
    got = decode_rgb((workdir / "results" / "cat-7.png").read_bytes())
    assert faithful(got, oracle_uint8(decode_rgb(photos["chelsea"]), "7"))
    assert (workdir / "data" / "photos" / "in" / "cat.jpg").read_bytes() == photos["chelsea"]
    assert task.result is not None and (task.result.width, task.result.height) == (451, 300)
    assert leftovers(workdir) == []


def test_local_photo_and_the_default_output(
    registry: Any, photos: dict[str, bytes], workdir: Path
) -> None:
    (workdir / "cat.jpg").write_bytes(photos["chelsea"])
    task = stylize(registry, image="cat.jpg", style="3:0.5,12:0.5")
    assert task.output_file() == "out/cat-3_0.5_12_0.5.jpg"  # from the image and style only
    assert run(task).status == LuigiStatusCode.SUCCESS
    got = decode_rgb((workdir / "out" / "cat-3_0.5_12_0.5.jpg").read_bytes())
    want = oracle_uint8(decode_rgb(photos["chelsea"]), "3:0.5,12:0.5")
    # JPEG at quality 90 moves pixels by a few levels, so compare on average.
    assert np.abs(got.astype(int) - want.astype(int)).mean() < 4


def test_default_output_is_derived_from_image_and_style_only() -> None:
    assert Stylize(image="s3://photos/a/b/cat.jpg").output_file() == "out/cat-7.jpg"
    assert Stylize(image="s3://photos/cat.jpg", style="candy").output_file() == "out/cat-candy.jpg"
    assert Stylize(image="/data/x/dog.png", style="12").output_file() == "out/dog-12.jpg"


def test_executor_defaults_to_server_when_a_url_is_set() -> None:
    assert Stylize(image="cat.jpg").resolved_executor() == "local"
    assert Stylize(image="cat.jpg", server_url="http://h:1").resolved_executor() == "server"
    assert Stylize(image="cat.jpg", server_url="http://h:1", executor="local"
                   ).resolved_executor() == "local"
    with pytest.raises(ValueError, match="executor server needs a server URL"):
        Stylize(image="cat.jpg", executor="server")
    with pytest.raises(ValueError, match="not a valid S3 bucket name"):
        Stylize(image="s3://no such bucket/cat.jpg")


def test_force_stylizes_and_downloads_again(
    registry: Any, photos: dict[str, bytes], s3: Any, bucket: str, workdir: Path
) -> None:
    s3.put_object(Bucket=bucket, Key="cat.jpg", Body=photos["chelsea"])
    params = {"image": "s3://photos/cat.jpg", "output_path": "out/cat.png", "executor": "local"}
    assert run(stylize(registry, **params)).status == LuigiStatusCode.SUCCESS
    first = (workdir / "out" / "cat.png").read_bytes()
    # The photo changes in S3; without --force the result (and the download) count as done.
    s3.put_object(Bucket=bucket, Key="cat.jpg", Body=photos["astronaut"])
    luigi.task_register.Register.clear_instance_cache()
    again = run(stylize(registry, **params))
    assert again.status == LuigiStatusCode.SUCCESS and "ran successfully" not in again.summary_text
    assert (workdir / "out" / "cat.png").read_bytes() == first
    luigi.task_register.Register.clear_instance_cache()
    result = run(stylize(registry, force=True, **params))
    assert result.status == LuigiStatusCode.SUCCESS, result.summary_text
    assert Image.open(workdir / "out" / "cat.png").size == (512, 512)  # the astronaut now
    assert (workdir / "data" / "photos" / "cat.jpg").read_bytes() == photos["astronaut"]


# ---------------------------------------------------------------- failures


def test_missing_key_and_missing_bucket_name_the_input_and_write_nothing(
    registry: Any, s3: Any, bucket: str, workdir: Path
) -> None:
    for image, message in (
        ("s3://photos/nope.jpg", "input s3://photos/nope.jpg does not exist"),
        ("s3://nobucket/cat.jpg", "bucket 'nobucket' does not exist"),
    ):
        luigi.task_register.Register.clear_instance_cache()
        task = stylize(registry, image=image, output_path="out/r.png", executor="local")
        result = run(task)
        assert result.status != LuigiStatusCode.SUCCESS
        [outcome] = outcomes(result, [task])
        assert not outcome.ok and message in outcome.reason, outcome.reason
        assert message in summary_line([outcome])
        assert not (workdir / "out").exists()
        assert not (workdir / "data").exists() or leftovers(workdir) == []


def test_a_bad_photo_fails_with_its_name_and_the_reason(
    registry: Any, s3: Any, bucket: str, workdir: Path
) -> None:
    s3.put_object(Bucket=bucket, Key="notes.jpg", Body=b"hello, I am text\n")
    task = stylize(registry, image="s3://photos/notes.jpg", output_path="out/n.png",
                   executor="local")
    result = run(task)
    assert result.status == LuigiStatusCode.FAILED
    [outcome] = outcomes(result, [task])
    assert outcome.reason.startswith("s3://photos/notes.jpg: image ")
    assert "is not a JPEG/PNG/WebP image (got 17 bytes of text" in outcome.reason
    assert not (workdir / "out").exists() and leftovers(workdir) == []


class FlakyServer:
    """A local model server: answers 503 ``failures`` times, then the real model's predictions."""

    def __init__(self, model: Any, failures: int) -> None:
        self.calls = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.calls += 1
                if outer.calls <= failures:
                    self._send(503, {"message": "busy, try again"})
                    return
                frame = pd.DataFrame(**body["dataframe_split"])
                out = model.predict(frame, params=body.get("params"))
                self._send(200, {"predictions": out.to_dict(orient="records")})

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FlakyServer:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_server_that_answers_503_then_recovers(
    model: Any, photos: dict[str, bytes], workdir: Path
) -> None:
    (workdir / "cat.jpg").write_bytes(photos["chelsea"])
    with FlakyServer(model, failures=2) as server:
        task = Stylize(image="cat.jpg", output_path="out/cat.png", server_url=server.url)
        result = run(task)
    assert result.status == LuigiStatusCode.SUCCESS, result.summary_text
    assert server.calls == 3
    got = decode_rgb((workdir / "out" / "cat.png").read_bytes())
    assert faithful(got, oracle_uint8(decode_rgb(photos["chelsea"]), "7"))


def test_server_that_is_down_fails_clearly_and_writes_nothing(
    photos: dict[str, bytes], workdir: Path
) -> None:
    (workdir / "cat.jpg").write_bytes(photos["chelsea"])
    url = f"http://127.0.0.1:{free_port()}"
    task = Stylize(image="cat.jpg", output_path="out/cat.png", server_url=url)
    started = time.monotonic()
    result = run(task)
    assert result.status == LuigiStatusCode.FAILED
    assert time.monotonic() - started < 30  # retries with backoff, then gives up
    [outcome] = outcomes(result, [task])
    assert outcome.reason.startswith(f"cat.jpg: server {url}")
    assert "not reachable" in outcome.reason
    assert not (workdir / "out").exists()


def test_two_runs_writing_the_same_output_never_mix(
    registry: Any, photos: dict[str, bytes], workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both tasks finish their predictions together and write at once; one whole file wins."""
    (workdir / "cat.jpg").write_bytes(photos["chelsea"])
    barrier = threading.Barrier(2, timeout=60)
    local = LocalPredictor(registry.model_uri, registry.tracking_uri)

    class Together:
        def predict(self, frame: pd.DataFrame, params: dict[str, Any] | None = None) -> Any:
            out = local.predict(frame, params=params)
            barrier.wait()
            return out

    @contextlib.contextmanager
    def predictor(self: Stylize) -> Iterator[Any]:
        yield Together()

    monkeypatch.setattr(Stylize, "predictor", predictor)
    tasks = [stylize(registry, image="cat.jpg", style=s, output_path="out/same.png")
             for s in ("0", "19")]
    errors: list[BaseException] = []

    def work(task: Stylize) -> None:
        try:
            task.run()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in tasks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    got = decode_rgb((workdir / "out" / "same.png").read_bytes())
    rgb = decode_rgb(photos["chelsea"])
    fits = [faithful(got, oracle_uint8(rgb, s)) for s in ("0", "19")]
    assert sorted(fits) == [False, True], fits  # one style, whole
    # The result and its lineage sidecar; no temporary file of either writer is left.
    assert sorted(p.name for p in (workdir / "out").iterdir()) == ["same.png", "same.png.lineage.json"]
    # ...and the sidecar is the winner's: its output sha256 and style are the file's.
    record = json.loads((workdir / "out" / "same.png.lineage.json").read_text())
    assert record["output"]["sha256"] == hashlib.sha256((workdir / "out" / "same.png").read_bytes()
                                                        ).hexdigest()
    winner = ("0", "19")[fits.index(True)]
    assert record["style"]["resolved"] == f"style-{int(winner):02d}", record["style"]


# ---------------------------------------------------------------- batches and publishing


def put_batch(s3: Any, bucket: str, photos: dict[str, bytes]) -> None:
    s3.put_object(Bucket=bucket, Key="in/cat.jpg", Body=photos["chelsea"])
    s3.put_object(Bucket=bucket, Key="in/astro.png", Body=png_of(photos["astronaut"], (128, 128)))
    s3.put_object(Bucket=bucket, Key="in/sub/coffee.jpg", Body=photos["coffee"])
    s3.put_object(Bucket=bucket, Key="in/bad.jpg", Body=b"hello, I am text\n")
    s3.put_object(Bucket=bucket, Key="in/README.txt", Body=b"not a photo")
    s3.put_object(Bucket=bucket, Key="elsewhere/dog.jpg", Body=photos["rocket"])


def test_listing_and_result_names(s3: Any, bucket: str, photos: dict[str, bytes]) -> None:
    put_batch(s3, bucket, photos)
    found, skipped = list_images("s3://photos/in")
    assert found == ["s3://photos/in/astro.png", "s3://photos/in/bad.jpg",
                     "s3://photos/in/cat.jpg", "s3://photos/in/sub/coffee.jpg"]
    assert skipped == 1
    assert result_location("s3://photos/in/sub/coffee.jpg", "s3://photos/in/", "res", "7",
                           ".png") == "res/sub/coffee-7.png"
    assert result_location("s3://photos/in/cat.jpg", "s3://photos/in", "s3://photos/out",
                           "3:1", ".jpg") == "s3://photos/out/cat-3_1.jpg"
    assert result_location("/p/a/b.jpg", "/p", "/r", "7", ".webp") == "/r/a/b-7.webp"


def test_batch_with_a_bad_photo_two_workers_then_a_rerun(
    registry: Any, photos: dict[str, bytes], s3: Any, bucket: str, workdir: Path
) -> None:
    put_batch(s3, bucket, photos)
    batch = StylizeBatch(images="s3://photos/in/", results="res", executor="local",
                         tracking_uri=registry.tracking_uri, model_uri=registry.model_uri,
                         max_size=256)
    # Workers are forked processes. A child that loads the model again replaces the parent's
    # (MLflow keeps the last model-from-code in a global), and freeing an onnxruntime session
    # made before the fork hangs; warm the model here so children reuse it (as tasks.run does).
    warm_model(registry, photos)
    result = luigi.build([batch], local_scheduler=True, workers=2, detailed_summary=True)
    assert result.status == LuigiStatusCode.FAILED
    assert "* 1 failed:\n    - 1 Stylize(" in result.summary_text
    assert "    - 3 Stylize(" in result.summary_text
    found = outcomes(result, batch.requires())
    line = summary_line(found)
    assert line.startswith("3 of 4 photos stylized, 1 failed: s3://photos/in/bad.jpg: image ")
    assert "is not a JPEG/PNG/WebP image" in line
    written = sorted(str(p.relative_to(workdir / "res")) for p in (workdir / "res").rglob("*.jpg"))
    assert written == ["astro-7.jpg", "cat-7.jpg", "sub/coffee-7.jpg"]
    assert max(Image.open(workdir / "res" / "cat-7.jpg").size) == 256
    assert leftovers(workdir) == []

    assert not (workdir / "data" / "photos" / "in" / "bad.jpg").exists()  # a rerun fetches it

    # Fix the photo; a rerun downloads and stylizes only it.
    before = {p: p.stat().st_mtime_ns for p in (workdir / "res").rglob("*.jpg")}
    s3.put_object(Bucket=bucket, Key="in/bad.jpg", Body=photos["rocket"])
    luigi.task_register.Register.clear_instance_cache()
    batch = StylizeBatch(images="s3://photos/in/", results="res", executor="local",
                         tracking_uri=registry.tracking_uri, model_uri=registry.model_uri,
                         max_size=256)
    result = luigi.build([batch], local_scheduler=True, workers=2, detailed_summary=True)
    assert result.status == LuigiStatusCode.SUCCESS, result.summary_text
    assert ("ran successfully:\n    - 1 S3Download(s3_path=s3://photos/in/bad.jpg, "
            in result.summary_text)
    assert "    - 1 Stylize(...)\n    - 1 StylizeBatch(...)" in result.summary_text
    assert summary_line(outcomes(result, batch.requires())) == "4 of 4 photos stylized, none failed"
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert (workdir / "res" / "bad-7.jpg").exists()


def test_batch_publishes_to_s3_and_a_rerun_does_nothing(
    registry: Any, photos: dict[str, bytes], s3: Any, bucket: str, workdir: Path
) -> None:
    s3.put_object(Bucket=bucket, Key="in/cat.jpg", Body=photos["chelsea"])
    s3.put_object(Bucket=bucket, Key="in/sub/coffee.jpg", Body=photos["coffee"])
    params = {"images": "s3://photos/in/", "results": "s3://photos/out/", "suffix": ".png",
              "executor": "local", "tracking_uri": registry.tracking_uri,
              "model_uri": registry.model_uri}
    result = run(StylizeBatch(**params))
    assert result.status == LuigiStatusCode.SUCCESS, result.summary_text
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="out/")["Contents"])
    assert keys == ["out/cat-7.png", "out/sub/coffee-7.png"]
    body = s3.get_object(Bucket=bucket, Key="out/cat-7.png")
    assert body["ContentType"] == "image/png"
    got = decode_rgb(body["Body"].read())
    assert faithful(got, oracle_uint8(decode_rgb(photos["chelsea"]), "7"))
    assert (workdir / "out" / "photos" / "out" / "cat-7.png").exists()  # the staged copy
    luigi.task_register.Register.clear_instance_cache()
    again = run(StylizeBatch(**params))
    assert "ran successfully" not in again.summary_text


def test_publish_one_photo_and_force_passes_down(
    registry: Any, photos: dict[str, bytes], s3: Any, bucket: str, workdir: Path
) -> None:
    s3.put_object(Bucket=bucket, Key="cat.jpg", Body=photos["chelsea"])
    params = {"image": "s3://photos/cat.jpg", "s3_path": "s3://photos/results/cat.jpg",
              "executor": "local", "tracking_uri": registry.tracking_uri,
              "model_uri": registry.model_uri}
    task = PublishStylized(**params)
    assert task.requires().output_file() == os.path.join("out", "photos", "results", "cat.jpg")
    assert run(task).status == LuigiStatusCode.SUCCESS
    head = s3.head_object(Bucket=bucket, Key="results/cat.jpg")
    assert head["ContentLength"] > 1000
    # The object names the model version that made it, its input and its own bytes.
    import hashlib

    from mlflow import MlflowClient

    body = s3.get_object(Bucket=bucket, Key="results/cat.jpg")["Body"].read()
    meta = head["Metadata"]
    version = MlflowClient(registry.tracking_uri).get_model_version("style-transfer", registry.version)
    assert meta["model-name"] == "style-transfer" and meta["model-version"] == registry.version
    assert meta["model-fingerprint"] == version.tags["fingerprint"]
    assert meta["style"] == "style-07" and meta["input-uri"] == "s3://photos/cat.jpg"
    assert meta["input-sha256"] == hashlib.sha256(photos["chelsea"]).hexdigest()
    assert meta["output-sha256"] == hashlib.sha256(body).hexdigest()
    assert json.loads(meta["params"])["quality"] == 90
    assert meta["precision"] in ("fp32", "bf16")
    s3.put_object(Bucket=bucket, Key="cat.jpg", Body=photos["astronaut"])
    luigi.task_register.Register.clear_instance_cache()
    assert run(PublishStylized(force=True, **params)).status == LuigiStatusCode.SUCCESS
    body = s3.get_object(Bucket=bucket, Key="results/cat.jpg")["Body"].read()
    assert Image.open(io.BytesIO(body)).size == (512, 512)  # downloaded, stylized, uploaded anew


def test_publish_on_a_machine_without_the_staged_result(
    registry: Any, photos: dict[str, bytes], s3: Any, bucket: str, workdir: Path
) -> None:
    """With a central luigid, Stylize may have run on another machine: its local files are
    not here when PublishStylized runs. The upload stylizes here first, with the same bytes."""
    import shutil

    s3.put_object(Bucket=bucket, Key="cat.jpg", Body=photos["chelsea"])
    params = {"image": "s3://photos/cat.jpg", "s3_path": "s3://photos/results/cat.jpg",
              "executor": "local", "tracking_uri": registry.tracking_uri,
              "model_uri": registry.model_uri}
    task = PublishStylized(**params)
    assert run(task.requires()).status == LuigiStatusCode.SUCCESS  # "machine A" stylizes
    staged = Path(task.requires().output_file())
    made_there = staged.read_bytes()
    for folder in ("out", "data"):  # "machine B" has none of A's files
        shutil.rmtree(workdir / folder, ignore_errors=True)
    luigi.task_register.Register.clear_instance_cache()
    PublishStylized(**params).run()  # what B's worker does once the scheduler says Stylize is done
    body = s3.get_object(Bucket=bucket, Key="results/cat.jpg")["Body"].read()
    assert body == made_there
    assert staged.read_bytes() == made_there  # B's own staged copy, for a rerun


def test_stylize_then_submit_to_canvas(
    registry: Any, photos: dict[str, bytes], workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CANVAS_API_TOKEN", "secret")
    (workdir / "cat.jpg").write_bytes(photos["chelsea"])
    canvas = "https://canvas.test/api/v1/courses/1/assignments/2/submissions"
    with responses.RequestsMock() as mock:
        mock.post(f"{canvas}/self/files", json={"upload_url": "https://up.test/u",
                                                "upload_params": {}, "file_param": "file"})
        mock.post("https://up.test/u", status=201, json={"id": 77})
        mock.post(canvas, json={"id": 5, "attempt": 1})
        task = StylizeToCanvas(image="cat.jpg", course_id="1", assignment_id="2",
                               canvas_url="https://canvas.test", receipt_root="receipts",
                               tracking_uri=registry.tracking_uri, model_uri=registry.model_uri)
        assert run(task).status == LuigiStatusCode.SUCCESS
    receipt = json.loads(Path(task.output().path).read_text())
    assert receipt["file_name"] == "cat-7.jpg" and receipt["submission_id"] == 5
    assert (workdir / "out" / "cat-7.jpg").exists()


# ---------------------------------------------------------------- the docker executor

OURS = {"label": "org.stylize.started-by=neuralstyle.run.container"}


@pytest.mark.docker
def test_docker_executor_runs_the_serving_image_and_removes_its_container(
    docker_client: Any, registry: Any, photos: dict[str, bytes], workdir: Path
) -> None:
    """The serving image is built once (neuralstyle.containers.images; minutes) and reused after."""
    from neuralstyle.run.container import ContainerError, model_container

    before = {c.id for c in docker_client.containers.list(all=True, filters=OURS)}
    foreign = docker_client.containers.run("python:3.11.7-slim", ["sleep", "3600"], detach=True,
                                           labels={"org.stylize.test": "tests/pipeline/test_pipeline.py"})
    try:
        (workdir / "cat.jpg").write_bytes(photos["chelsea"])
        task = stylize(registry, image="cat.jpg", output_path="out/cat.png", executor="docker")
        result = run(task)
        assert result.status == LuigiStatusCode.SUCCESS, result.summary_text
        got = decode_rgb((workdir / "out" / "cat.png").read_bytes())
        want = oracle_uint8(decode_rgb(photos["chelsea"]), "7")
        assert faithful(got, want)
        # An image whose server never starts: a clear error, and that container is gone too.
        with pytest.raises(ContainerError, match="exited before answering"):
            with model_container(image="python:3.11.7-slim", client=docker_client):
                pass
        after = {c.id for c in docker_client.containers.list(all=True, filters=OURS)}
        assert after <= before
        foreign.reload()
        assert foreign.status == "running"  # a container it did not start is left alone
    finally:
        foreign.remove(force=True)


# ---------------------------------------------------------------- the entry point


def test_entry_point_logs_an_mlflow_run(
    registry: Any, photos: dict[str, bytes], s3: Any, bucket: str, workdir: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    import mlflow

    from tasks import run as entry

    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    s3.put_object(Bucket=bucket, Key="cat.jpg", Body=photos["chelsea"])
    code = entry.main(["--image", "s3://photos/cat.jpg", "--output", "out/cat.png",
                       "--tracking-uri", registry.tracking_uri, "--model-uri", registry.model_uri])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "stylize: 1 of 1 photo stylized, none failed" in printed
    assert f"result: {workdir / 'out' / 'cat.png'}" in printed
    run_id = printed.split("mlflow: run ", 1)[1].split()[0]
    mlflow.set_tracking_uri(registry.tracking_uri)
    logged = mlflow.MlflowClient().get_run(run_id)
    assert logged.data.params["image"] == "s3://photos/cat.jpg"
    assert logged.data.params["executor_used"] == "local"
    assert logged.data.params["model_version"] == registry.version
    assert logged.data.metrics["photos_ok"] == 1 and logged.data.metrics["seconds_total"] > 0
    assert (logged.data.metrics["width"], logged.data.metrics["height"]) == (451, 300)
    artifacts = [a.path for a in mlflow.MlflowClient().list_artifacts(run_id, "result")]
    assert artifacts == ["result/cat.png"]
    # Lineage: beside the result, and in the run.
    import hashlib

    sidecar = json.loads((workdir / "out" / "cat.png.lineage.json").read_text())
    assert sidecar["model"]["name"] == "style-transfer"
    assert sidecar["model"]["version"] == registry.version
    assert sidecar["style"] == {"requested": "7", "resolved": "style-07"}
    assert sidecar["params"]["format"] == "png" and sidecar["params"]["max_size"] == 1024
    # What ran, not only what was asked: style 7 meets the fast bound, so bf16 where the CPU has it.
    from neuralstyle.model import runtime

    assert sidecar["params"]["precision"] == "fast"
    assert sidecar["precision"] == runtime.fast_precision()
    assert sidecar["input"] == {"uri": "s3://photos/cat.jpg", "bytes": len(photos["chelsea"]),
                                "sha256": hashlib.sha256(photos["chelsea"]).hexdigest()}
    assert sidecar["output"]["sha256"] == hashlib.sha256(
        (workdir / "out" / "cat.png").read_bytes()).hexdigest()
    logged_lineage = mlflow.artifacts.load_text(f"runs:/{run_id}/lineage.jsonl")
    assert json.loads(logged_lineage.splitlines()[0]) == sidecar
    assert logged.info.status == "FINISHED"


def test_entry_point_exit_1_names_the_failure(
    registry: Any, s3: Any, bucket: str, workdir: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tasks import run as entry

    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    code = entry.main(["--image", "s3://photos/missing.jpg", "--tracking-uri",
                       registry.tracking_uri, "--model-uri", registry.model_uri])
    printed = capsys.readouterr().out
    assert code == 1
    assert ("stylize: 0 of 1 photo stylized, 1 failed: input s3://photos/missing.jpg does not "
            "exist") in printed
    assert not (workdir / "out").exists()
    code = entry.main(["--image", "s3://no such bucket/x.jpg", "--tracking-uri",
                       registry.tracking_uri, "--executor", "local"])
    assert code == 2
    assert "stylize: error: s3://no such bucket/x.jpg: 'no such bucket' is not a valid S3 bucket" \
        in capsys.readouterr().err
