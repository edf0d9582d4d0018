"""``make demo``: the main job, end to end, on the embedded defaults from a clean clone.

1. package the networks into ``sqlite:///mlflow.db`` if it lacks ``style-transfer@champion``;
2. start ``mlflow models serve`` for that model and moto's S3 server, both on 127.0.0.1;
3. upload a bundled sample photo to s3://stylize-demo/photos/chelsea.jpg;
4. ``mlflow run . -e stylize --env-manager local ... -P executor=server``: the Luigi pipeline
   downloads it, has the server stylize it and writes out/chelsea-7.jpg, logged as an MLflow run;
5. say where the result is and how to open the MLflow UI; stop both servers, also on failure.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from neuralstyle import config
from neuralstyle.run import lineage

BUCKET = "stylize-demo"
KEY = "photos/chelsea.jpg"
OUTPUT = Path("out") / "chelsea-7.jpg"
# Beside the packaging runs: MLflow's UI links a run to the model it used only within one experiment.
EXPERIMENT = config.DEFAULT_EXPERIMENT
FAKE_AWS = {  # moto accepts any credentials; these keep boto3 away from real ones
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def ensure_registered(model_name: str = config.DEFAULT_MODEL_NAME,
                      alias: str = config.DEFAULT_ALIAS) -> str:
    """The champion version, packaging the models first when the registry lacks it."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        return MlflowClient().get_model_version_by_alias(model_name, alias).version
    except MlflowException:
        from neuralstyle.builder.packaging import package_models

        print(f"registry has no {model_name}@{alias}: packaging the networks (~20 s)", flush=True)
        return package_models(model_name, alias, style_map=config.DEFAULT_STYLE_MAP).version


@contextlib.contextmanager
def s3_server() -> Iterator[str]:
    """moto's standalone S3 server on a free 127.0.0.1 port; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    from neuralstyle.run.serving import free_port

    port = free_port()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per S3 request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def upload_sample(endpoint: str) -> str:
    """Put the bundled sample photo into the demo bucket; return its s3:// URI."""
    import boto3

    from neuralstyle.builder.samples import sample_jpeg

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name=FAKE_AWS["AWS_DEFAULT_REGION"],
                      aws_access_key_id=FAKE_AWS["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=FAKE_AWS["AWS_SECRET_ACCESS_KEY"])
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key=KEY, Body=sample_jpeg("chelsea"), ContentType="image/jpeg")
    return f"s3://{BUCKET}/{KEY}"


def pipeline_command(image: str, server_url: str) -> list[str]:
    """The ``mlflow run`` command a user would type, with this interpreter."""
    return [
        sys.executable, "-m", "mlflow", "run", ".", "-e", "stylize", "--env-manager", "local",
        "--experiment-name", EXPERIMENT, "-P", f"image={image}", "-P", f"style={config.DEFAULT_STYLE}",
        "-P", f"output={OUTPUT}", "-P", "executor=server", "-P", f"server_url={server_url}",
    ]


def pipeline_env(endpoint: str, tracking_uri: str) -> dict[str, str]:
    """The environment of the ``mlflow run``: the moto endpoint, fake keys, our registry."""
    env = {**os.environ, **FAKE_AWS, "AWS_ENDPOINT_URL_S3": endpoint,
           "MLFLOW_TRACKING_URI": tracking_uri}
    env.pop("AWS_PROFILE", None)
    # `mlflow run --env-manager local` runs `python -m tasks.run` from PATH: this environment's.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    with config.mlflow_scope() as uri:
        version = ensure_registered()
    return run_demo(uri, version)


def run_demo(uri: str, version: str) -> int:
    """Steps 2-5 against the registry at ``uri``, which holds ``version``."""
    from neuralstyle.run.serving import serve_model

    # The demo's own earlier result and download: remove them so the pipeline runs again
    # (otherwise Luigi sees the result and, rightly, does nothing).
    OUTPUT.unlink(missing_ok=True)
    Path("data", BUCKET, *KEY.split("/")).unlink(missing_ok=True)
    started = time.perf_counter()
    with s3_server() as endpoint, serve_model(config.DEFAULT_MODEL_URI, tracking_uri=uri) as url:
        print(f"model:  {config.DEFAULT_MODEL_URI} (version {version}) in {uri}, "
              f"served by mlflow models serve at {url}")
        image = upload_sample(endpoint)
        print(f"input:  {image} (moto S3 server at {endpoint})")
        command = pipeline_command(image, url)
        print("running: " + shlex.join(["mlflow", *command[3:]]), flush=True)
        proc = subprocess.run(command, env=pipeline_env(endpoint, uri))
    if proc.returncode != 0:
        print(f"demo: the pipeline failed (exit status {proc.returncode}); see its log above",
              file=sys.stderr)
        return proc.returncode
    print(f"result: {OUTPUT.resolve()} ({time.perf_counter() - started:.1f} s with both servers)")
    print(f"lineage: {lineage.sidecar_path(OUTPUT.resolve())} (model version, style, params, sha256)")
    print(f"MLflow UI: {Path(sys.executable).parent / 'mlflow'} ui --backend-store-uri {uri} "
          f"-h 127.0.0.1 -p 5000, then open http://127.0.0.1:5000/#/models/"
          f"{config.DEFAULT_MODEL_NAME}/versions/{version} (the version) or "
          "http://127.0.0.1:5000/#/experiments?workflowType=machine_learning (the runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
