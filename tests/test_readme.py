"""The README's commands, run as a newcomer runs them: in order, in a fresh copy of the repo.

The lines between ``<!-- readme-test: begin -->`` and ``<!-- readme-test: end -->`` are taken
from README.md as they are and run by bash (``set -euo pipefail``) in a clean working folder: the
tracked files only, no registry, no ``out/``, the project's ``.venv`` linked in (so
``. .venv/bin/activate`` puts its bin on PATH), no MLflow variable in the environment. S3 is
moto's standalone server; ``photo.jpg``, ``candy.pth`` and the buckets are what a user would have.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from upstream import make_upstream_checkpoint

REPO = Path(__file__).resolve().parent.parent
README_PORT = 5001  # the port the README's commands name
SCRIPT_TIMEOUT_S = 1800  # ~5 min on an idle 2-core machine; bounded so a hang cannot stall CI
pytestmark = [pytest.mark.slow, pytest.mark.integration]


def readme_script() -> str:
    """The bash lines of the README's runnable section, in order."""
    text = (REPO / "README.md").read_text()
    section = re.search(r"<!-- readme-test: begin -->(.*?)<!-- readme-test: end -->", text, re.S)
    assert section, "README.md lost its readme-test markers"
    blocks = re.findall(r"```bash\n(.*?)```", section.group(1), re.S)
    assert blocks, "no bash block between the readme-test markers"
    return "\n".join(blocks)


def clean_copy(dest: Path) -> Path:
    """The repo's tracked files (as a fresh clone has them) plus a link to its .venv."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True
                           ).stdout.decode().split("\0")
    for name in filter(None, files):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)  # keeps mtimes: make sees .venv as up to date
    (dest / ".venv").symlink_to(REPO / ".venv")
    return dest


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_readme_commands_run_in_order_in_a_fresh_copy(tmp_path: Path, photos) -> None:
    import boto3
    from mlflow import MlflowClient

    from neuralstyle.demo import FAKE_AWS, s3_server

    if not port_is_free(README_PORT):
        pytest.fail(f"127.0.0.1:{README_PORT} is taken: the README's `make serve` needs it")
    work = clean_copy(tmp_path / "repo")
    (work / "photo.jpg").write_bytes(photos["chelsea"])
    make_upstream_checkpoint(work / "candy.pth")
    make_upstream_checkpoint(tmp_path / "mosaic.pth", seed=1)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "VIRTUAL_ENV"))}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep)
                                  if not p.startswith(str(REPO)))  # as a fresh shell
    with s3_server() as endpoint:
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
        for bucket in ("bucket", "models"):
            s3.create_bucket(Bucket=bucket)
        s3.put_object(Bucket="bucket", Key="photo.jpg", Body=photos["chelsea"])
        for name in ("astronaut", "coffee"):
            s3.put_object(Bucket="bucket", Key=f"in/{name}.jpg", Body=photos[name])
        s3.upload_file(str(tmp_path / "mosaic.pth"), "models", "mosaic.pth")
        env.update(FAKE_AWS, AWS_ENDPOINT_URL_S3=endpoint)
        script = "set -euo pipefail\n" + readme_script()
        log = tmp_path / "readme.log"
        with log.open("w") as sink:
            proc = subprocess.Popen(["bash", "-xc", script], cwd=work, env=env, text=True,
                                    stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                proc.wait(timeout=SCRIPT_TIMEOUT_S)
            finally:
                for sig in (signal.SIGTERM, signal.SIGKILL):  # the backgrounded `make serve`
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, sig)
                    time.sleep(3)
                print(f"README commands' log ({log}), last lines:\n"
                      + "\n".join(log.read_text(errors="replace").splitlines()[-40:]))
        assert proc.returncode == 0, "a README command failed: see the log above"
        published = {o["Key"] for o in s3.list_objects_v2(Bucket="bucket").get("Contents", [])}

    versions = MlflowClient(f"sqlite:///{work}/mlflow.db").search_model_versions(
        "name='style-transfer'")
    champion = max(versions, key=lambda v: int(v.version))
    assert sorted(int(v.version) for v in versions) == [1, 2, 3]
    assert "candy" in champion.tags["styles"] and "mosaic" in champion.tags["styles"]
    for name in ("out.jpg", "blend.png", "served.jpg", "curl-styled.jpg", "out/photo-7.jpg",
                 "out/photo-19.jpg"):
        assert (work / name).stat().st_size > 1000, name
    # One model version, one input, one style, the same params: the same bytes on every path.
    assert sha256(work / "served.jpg") == sha256(work / "out.jpg")
    assert sha256(work / "curl-styled.jpg") == sha256(work / "out.jpg")
    record = json.loads((work / "out.jpg.lineage.json").read_text())
    assert record["model"]["version"] == str(champion.version)
    assert record["output"]["sha256"] == sha256(work / "out.jpg")
    assert {"out/astronaut-7.jpg", "out/coffee-7.jpg"} <= published, published
