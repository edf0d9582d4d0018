"""Shared fixtures: a packaged model in a throwaway registry, real sample photos, Docker."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Registry:
    """A sqlite registry holding ``style-transfer@champion``, built once per test session."""

    tracking_uri: str
    root: Path
    model_uri: str
    version: str
    metrics: dict


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    """Package the real networks once (~20 s) into a registry outside the repo."""
    from neuralstyle.builder.packaging import package_models

    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root}/mlflow.db"
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    cwd = os.getcwd()
    os.chdir(root)  # artifacts go to <root>/mlruns, never into the repo
    from neuralstyle.builder.samples import encode, sample_painting

    stain = root / "stain.png"  # a named painting ships with the version: style=stain
    stain.write_bytes(encode(sample_painting("immunohistochemistry")))
    try:
        result = package_models(style_map=str(REPO / "styles.json"), tracking_uri=uri,
                                style_images=[f"stain={stain}"])
    finally:
        os.chdir(cwd)
    yield Registry(uri, root, "models:/style-transfer@champion", result.version, result.metrics)
    if previous is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = previous


@pytest.fixture(scope="session")
def model(registry: Registry):
    """The registered model, loaded in this process."""
    import mlflow

    mlflow.set_tracking_uri(registry.tracking_uri)
    return mlflow.pyfunc.load_model(registry.model_uri)


@pytest.fixture(scope="session")
def photos() -> dict[str, bytes]:
    """Real photos from scikit-image as JPEG bytes: square (astronaut) and odd-sized (chelsea)."""
    from neuralstyle.builder.samples import SAMPLES, sample_jpeg

    return {name: sample_jpeg(name) for name in SAMPLES}


@pytest.fixture(scope="session")
def docker_client():
    """A Docker SDK client, or a one-line skip; under CI=true a missing engine fails instead."""
    try:
        import docker

        client = docker.from_env(timeout=600)
        client.ping()
    except Exception as exc:  # no socket, no daemon, no permission
        reason = f"no Docker engine ({type(exc).__name__}); start one with docker/engine.sh start"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)
    if shutil.which("docker") is None and os.environ.get("CI", "").lower() == "true":
        pytest.fail("CI=true but the docker CLI is missing")
    return client
