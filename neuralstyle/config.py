"""Defaults shared by the scripts, the tasks and the tests: each is declared once, here.

``tests/test_mlproject.py`` checks that every MLproject parameter default equals these.
"""

from __future__ import annotations

import os

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_MODEL_NAME = "style-transfer"
DEFAULT_ALIAS = "champion"
DEFAULT_MODEL_URI = f"models:/{DEFAULT_MODEL_NAME}@{DEFAULT_ALIAS}"
DEFAULT_EXPERIMENT = "style-transfer"
DEFAULT_STYLE_MAP = "styles.json"
DEFAULT_STYLE = "7"


def tracking_uri(explicit: str | None = None) -> str:
    """An explicit URI, else ``MLFLOW_TRACKING_URI``, else the embedded sqlite registry."""
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def use_tracking(uri: str | None = None) -> str:
    """Point MLflow at ``uri``; the registry follows it unless ``MLFLOW_REGISTRY_URI`` is set.

    ``mlflow.set_registry_uri`` is deliberately not called: it exports ``MLFLOW_REGISTRY_URI``,
    which would pin every later call and every subprocess to the first registry used.
    """
    import mlflow

    resolved = tracking_uri(uri)
    mlflow.set_tracking_uri(resolved)
    return resolved
