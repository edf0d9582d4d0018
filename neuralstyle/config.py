"""Where models live (registry, model URI, experiment, style) and how MLflow is pointed at them.

The request params and their defaults are the model's contract (``neuralstyle.model.contract``);
``tests/test_project.py`` checks the MLproject parameter defaults against both.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_MODEL_NAME = "style-transfer"
DEFAULT_ALIAS = "champion"
# A new version that the evaluation gate finds worse than the champion gets this alias instead
# (neuralstyle.builder.evaluation); --force-champion overrides the gate.
CHALLENGER_ALIAS = "challenger"
DEFAULT_MODEL_URI = f"models:/{DEFAULT_MODEL_NAME}@{DEFAULT_ALIAS}"
DEFAULT_EXPERIMENT = "style-transfer"
DEFAULT_STYLE_MAP = "styles.json"
DEFAULT_STYLE = "7"
# glibc settings for every model server we start (`make serve`, the serving image): keep up to
# 256 MB of freed memory instead of handing each photo's buffers back. The server runs predict
# in worker threads, whose malloc arenas glibc trims eagerly, so each 1024 px request faulted
# ~50 MB in again: served latency at 1024 px went from 1.07-1.10x in-process with these to
# 1.14-1.36x without, with 40-100 ms outliers (bench/RESULTS.md, docs/serving.md).
SERVER_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(256 << 20)}


def tracking_uri(explicit: str | None = None) -> str:
    """An explicit URI, else ``MLFLOW_TRACKING_URI``, else the embedded sqlite registry."""
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


# What MLflow's fluent API exports into ``os.environ`` (set_tracking_uri, set_experiment,
# start_run under ``mlflow run``): a later subprocess inherits whatever is left there.
MLFLOW_STATE_VARS = (
    "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME",
    "MLFLOW_RUN_ID",
)


@contextlib.contextmanager
def mlflow_scope(uri: str | None = None) -> Iterator[str]:
    """Point MLflow at ``uri`` for the block, then leave the caller's environment as it was.

    ``mlflow.set_tracking_uri`` exports ``MLFLOW_TRACKING_URI`` (and ``set_experiment``
    ``MLFLOW_EXPERIMENT_ID``) into ``os.environ``; a caller that packages and then starts
    ``mlflow run --experiment-name ...`` would otherwise fail with "Specify only one of
    'experiment-name' or 'experiment-id'". Active runs started inside are ended on the way out.
    """
    import mlflow

    saved = {name: os.environ.get(name) for name in MLFLOW_STATE_VARS}
    resolved = tracking_uri(uri)
    mlflow.set_tracking_uri(resolved)
    outer_run = _active_run_id()
    try:
        yield resolved
    finally:
        for _ in range(100):  # runs this block left open, innermost first
            if _active_run_id() in (None, outer_run):
                break
            mlflow.end_run()
        # None resets MLflow's global URI to "whatever the environment says", restored below.
        mlflow.set_tracking_uri(saved["MLFLOW_TRACKING_URI"])
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _active_run_id() -> str | None:
    """The id of this thread's innermost active run, if any."""
    import mlflow

    run = mlflow.active_run()
    return run.info.run_id if run is not None else None
