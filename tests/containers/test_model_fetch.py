"""The image builders fetch from the registry they are given, whatever the process default is.

The session's ``registry`` fixture exports ``MLFLOW_TRACKING_URI``, which hid that MLflow resolves
``models:/`` URIs through its process-wide registry: ``tasks.run --executor docker
--tracking-uri X`` failed on a fresh image build ("Registered Model ... not found") for any
user whose default registry is not X. These run with another, empty default.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_catalog_and_model_come_from_the_given_registry(registry, tmp_path: Path) -> None:
    import mlflow

    from neuralstyle.config import mlflow_scope
    from neuralstyle.containers import images, tryit
    from neuralstyle.registry import resolve_model

    default = f"sqlite:///{tmp_path}/someone-elses.db"
    with mlflow_scope(default):
        model = resolve_model(registry.model_uri, registry.tracking_uri)
        catalog = tryit.model_catalog(model.uri, model.tracking_uri, model.registry_uri)
        assert "stain" in catalog.paintings  # the fixture's named painting: the right model
        folder = images.download_model(model, tmp_path / "model")
        assert (folder / "MLmodel").is_file()
        assert mlflow.get_tracking_uri() == default  # and the caller's default is left alone
