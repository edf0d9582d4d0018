"""``make demo``: the main job on the embedded defaults, from a clean clone.

Packages the networks into the local registry (``sqlite:///mlflow.db``) if it lacks
``style-transfer@champion``, stylizes a bundled sample photo, and says where everything is.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from neuralstyle import config


def ensure_registered(model_name: str = config.DEFAULT_MODEL_NAME,
                      alias: str = config.DEFAULT_ALIAS) -> str:
    """The champion version, packaging the models first when the registry lacks it."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        return MlflowClient().get_model_version_by_alias(model_name, alias).version
    except MlflowException:
        from neuralstyle.packaging import package_models

        print(f"registry has no {model_name}@{alias}: packaging the networks (~20 s)")
        return package_models(model_name, alias, style_map=config.DEFAULT_STYLE_MAP).version


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    from neuralstyle.atomic import write_bytes_atomic
    from neuralstyle.inference import LocalPredictor, stylize_file
    from neuralstyle.samples import sample_jpeg

    uri = config.use_tracking()
    version = ensure_registered()
    photo = write_bytes_atomic(Path("out") / "chelsea.jpg", sample_jpeg("chelsea"))
    result = stylize_file(photo, Path("out") / "chelsea-style-07.jpg", config.DEFAULT_STYLE,
                          LocalPredictor(config.DEFAULT_MODEL_URI))
    print(f"model:  {config.DEFAULT_MODEL_URI} (version {version}) in {uri}")
    print(f"input:  {photo}")
    print(f"result: {result.output.resolve()} ({result.width}x{result.height}, {result.style}, "
          f"{result.seconds:.2f} s)")
    print(f"MLflow UI: .venv/bin/mlflow ui --backend-store-uri {uri} -h 127.0.0.1 -p 5000, "
          "then open http://127.0.0.1:5000")
    return 0


if __name__ == "__main__":
    sys.exit(main())
