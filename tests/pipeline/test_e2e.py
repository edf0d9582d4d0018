"""End to end, as a user runs it: a photo in S3 -> ``mlflow run . -e stylize`` -> a result file.

Real HTTP everywhere: moto's standalone S3 server and ``mlflow models serve`` on 127.0.0.1, boto3
in the pipeline, the MLflow CLI in a subprocess. The result must match the original ONNX graph
and the MLflow run must hold what the pipeline did.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from oracle import decode_rgb, faithful, oracle_uint8

from neuralstyle import demo
from neuralstyle.run.serving import serve_model

REPO = Path(__file__).resolve().parents[2]
FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}

pytestmark = pytest.mark.integration


@pytest.fixture
def s3_server() -> Iterator[str]:
    """moto's S3 server on a free 127.0.0.1 port (the demo's own helper); its endpoint URL."""
    with demo.s3_server() as endpoint:
        yield endpoint


def s3_client(endpoint: str) -> Any:
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def test_photo_in_s3_to_result_through_mlflow_run_and_the_server(
    registry: Any, photos: dict[str, bytes], s3_server: str, tmp_path: Path
) -> None:
    s3 = s3_client(s3_server)
    s3.create_bucket(Bucket="e2e")
    s3.put_object(Bucket="e2e", Key="in/cat.jpg", Body=photos["chelsea"])
    # Downloads go to the test's folder, not the checkout: luigi.cfg in the project is read
    # first, then this file.
    config = tmp_path / "luigi.cfg"
    config.write_text(f"[S3Download]\ndata_root = {tmp_path / 'data'}\n")
    output = tmp_path / "out" / "cat-7.png"
    env = {
        **os.environ, **FAKE_AWS,
        "AWS_ENDPOINT_URL_S3": s3_server,
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "MLFLOW_TRACKING_URI": registry.tracking_uri,
        "LUIGI_CONFIG_PATH": str(config),
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME"):
        env.pop(name, None)
    with serve_model(registry.model_uri, tracking_uri=registry.tracking_uri) as url:
        proc = subprocess.run(
            [sys.executable, "-m", "mlflow", "run", str(REPO), "-e", "stylize",
             "--env-manager", "local", "-P", "image=s3://e2e/in/cat.jpg", "-P", "style=7",
             "-P", f"output={output}", "-P", "executor=server", "-P", f"server_url={url}"],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
        )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "stylize: 1 of 1 photo stylized, none failed" in proc.stdout
    assert f"result: {output}" in proc.stdout
    got = decode_rgb(output.read_bytes())
    assert faithful(got, oracle_uint8(decode_rgb(photos["chelsea"]), "7"))
    assert (tmp_path / "data" / "e2e" / "in" / "cat.jpg").read_bytes() == photos["chelsea"]
    assert not (REPO / "data" / "e2e").exists()
    # The result and its lineage sidecar, nothing half-written beside them.
    assert sorted(p.name for p in output.parent.iterdir()) == ["cat-7.png", "cat-7.png.lineage.json"]

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=registry.tracking_uri)
    run_id = proc.stdout.split("mlflow: run ", 1)[1].split()[0]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.project.entryPoint"] == "stylize"  # the run MLflow created
    params = run.data.params
    assert (params["image"], params["style"], params["executor"]) == (
        "s3://e2e/in/cat.jpg", "7", "server")
    assert params["executor_used"] == "server" and params["server_url"] == url
    metrics = run.data.metrics
    assert metrics["photos_ok"] == 1 and metrics["photos_failed"] == 0
    assert 0 < metrics["seconds_stylize_mean"] <= metrics["seconds_total"]
    assert (metrics["width"], metrics["height"]) == (451, 300)
    artifacts = [a.path for a in client.list_artifacts(run_id, "result")]
    assert artifacts == ["result/cat-7.png"]
