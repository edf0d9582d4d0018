"""Registry behaviour of package_models: no duplicate versions, --force, checkpoints as styles."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from upstream import make_upstream_checkpoint

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def clean_env(uri: str) -> dict[str, str]:
    """This process's environment pointed at ``uri``, without another run's experiment or run."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID",
                        "MLFLOW_REGISTRY_URI")}
    return env | {"MLFLOW_TRACKING_URI": uri}


def run_cli(*args: str, cwd: Path, uri: str) -> subprocess.CompletedProcess:
    env = clean_env(uri)
    return subprocess.run([sys.executable, str(REPO / "package_models.py"), *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=300)


def test_registry_lifecycle(tmp_path, photos) -> None:
    import mlflow
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    style_map = str(REPO / "styles.json")
    first = run_cli("--style-map", style_map, cwd=tmp_path, uri=uri)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "registered style-transfer version 1 as models:/style-transfer@champion" in first.stdout

    again = run_cli("--style-map", style_map, cwd=tmp_path, uri=uri)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "version 1 already holds these weights and code" in again.stdout
    client = MlflowClient(uri)
    assert len(client.search_model_versions("name='style-transfer'")) == 1

    forced = run_cli("--style-map", style_map, "--force", cwd=tmp_path, uri=uri)
    assert forced.returncode == 0 and "version 2" in forced.stdout

    make_upstream_checkpoint(tmp_path / "candy.pth")
    with_candy = run_cli("--style-map", style_map, "--checkpoint", str(tmp_path / "candy.pth"),
                         cwd=tmp_path, uri=uri)
    assert with_candy.returncode == 0, with_candy.stderr[-2000:]
    assert "version 3" in with_candy.stdout
    champion = client.get_model_version_by_alias("style-transfer", "champion")
    assert str(champion.version) == "3" and "candy" in champion.tags["styles"]

    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model("models:/style-transfer@champion")
    b64 = base64.b64encode(photos["chelsea"]).decode()
    out = model.predict(pd.DataFrame({"image": [b64, b64], "style": ["candy", "7"]}))
    assert list(out["style"]) == ["candy", "style-07"]
    with pytest.raises(Exception, match="'candy' is a separate network and cannot be blended"):
        model.predict(pd.DataFrame({"image": [b64], "style": ["candy:0.5,3:0.5"]}))


def test_bad_checkpoint_fails_cleanly(tmp_path) -> None:
    (tmp_path / "mosaic.pth").write_bytes(b"not a checkpoint")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    proc = run_cli("--checkpoint", str(tmp_path / "mosaic.pth"), "--style-map", "",
                   cwd=tmp_path, uri=uri)
    assert proc.returncode == 2
    assert "mosaic.pth is not a PyTorch state dict" in proc.stderr
    missing = run_cli("--checkpoint", str(tmp_path / "nope.pth"), "--style-map", "",
                      cwd=tmp_path, uri=uri)
    assert missing.returncode == 2 and "nope.pth does not exist" in missing.stderr


def test_mlflow_run_entry_point(tmp_path) -> None:
    """`mlflow run . -e package_models --env-manager local` packages inside the run MLflow made."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    client.create_experiment("packaging", artifact_location=str(tmp_path / "artifacts"))
    env = clean_env(uri)
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("mlflow")), "run", str(REPO), "-e", "package_models",
         "--env-manager", "local", "--experiment-name", "packaging"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    version = client.get_model_version_by_alias("style-transfer", "champion")
    run = client.get_run(version.run_id)
    assert run.data.tags.get("mlflow.project.entryPoint") == "package_models"
    assert run.data.metrics["parity_max_abs_diff"] <= 1e-3


def test_packaging_in_process_leaves_no_mlflow_state_behind(tmp_path, monkeypatch) -> None:
    """A caller that packages and then starts `mlflow run` behaves like a fresh process.

    This is `make demo`'s first run on a fresh clone: package in-process, then a child
    `mlflow run --experiment-name ...`. No fixture scrubs MLflow's variables first: whatever
    the library leaves in os.environ, the child inherits.
    """
    import mlflow

    from neuralstyle.builder.packaging import package_models
    from neuralstyle.config import MLFLOW_STATE_VARS

    monkeypatch.chdir(tmp_path)  # artifacts under tmp_path/mlruns, as the demo's under the repo
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    before = {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")}
    uri_before = mlflow.get_tracking_uri()
    result = package_models(style_map=str(REPO / "styles.json"), tracking_uri=uri)
    assert result.created and result.version == "1"
    after = {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")}
    assert after == before, f"left behind: {set(after.items()) ^ set(before.items())}"
    assert not any(k in after and k not in before for k in MLFLOW_STATE_VARS)
    assert mlflow.active_run() is None
    assert mlflow.get_tracking_uri() == uri_before

    # Exactly what this process holds, with the venv's bin on PATH as after `. .venv/bin/activate`.
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri,
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])}
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("mlflow")), "run", str(REPO), "-e", "package_models",
         "--env-manager", "local", "--experiment-name", "after-packaging"],
        env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "version 1 already holds these weights and code" in proc.stdout + proc.stderr
