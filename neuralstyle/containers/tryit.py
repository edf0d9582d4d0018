"""The try-it page of the serving image (``make try`` runs it: ``neuralstyle.run.container``).

The page (``docker/tryit/``: plain HTML, CSS and JavaScript) is copied into the serving image's
thin layer and served by its nginx at ``/``, on the same origin as ``/invocations``: no other
server process, no CORS. Its style list, ``/tryit/styles.json``, is written at build time from
the packaged model's own ``catalog.json``, so each image offers exactly its version's styles.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from neuralstyle import config
from neuralstyle.codebase import REPO_DIR

PAGE_DIR = REPO_DIR / "docker" / "tryit"
PAGE_IN_IMAGE = "/usr/share/stylize/tryit"  # docker/nginx.conf serves / and /tryit/ from here
CONTEXT_DIR = "tryit"  # the folder in the thin layer's build context


def page_files() -> list[Path]:
    """The page's committed files, in a stable order (their hash is part of the layer recipe)."""
    return sorted(p for p in PAGE_DIR.iterdir() if p.is_file())


def model_catalog(model_uri: str, tracking_uri: str, registry_uri: str) -> Any:
    """The ``Catalog`` packaged inside the model (its ``artifacts/networks/catalog.json``)."""
    import mlflow.artifacts

    from neuralstyle.model.styles import Catalog

    # MLflow resolves a models:/ URI through its process-wide registry, whatever registry_uri
    # says: without the scope a registry other than $MLFLOW_TRACKING_URI is not found.
    with (tempfile.TemporaryDirectory(prefix="stylize-catalog-") as tmp,
          config.mlflow_scope(tracking_uri)):
        path = mlflow.artifacts.download_artifacts(
            artifact_uri=f"{model_uri.rstrip('/')}/artifacts/networks/catalog.json",
            dst_path=tmp, tracking_uri=tracking_uri, registry_uri=registry_uri,
        )
        return Catalog.load(path)


def page_styles(catalog: Any, model: dict[str, str]) -> dict[str, Any]:
    """What the page reads: the model's identity and every style it may send."""
    from neuralstyle.ui.model_card import catalog_document

    return {"model": model, "default_style": config.DEFAULT_STYLE, **catalog_document(catalog)}


def write_page(context: Path, model_ref: Any) -> None:
    """Copy the page into a build context, with ``styles.json`` for this model version."""
    target = context / CONTEXT_DIR
    target.mkdir(parents=True, exist_ok=True)
    for path in page_files():
        shutil.copyfile(path, target / path.name)
    catalog = model_catalog(model_ref.uri, model_ref.tracking_uri, model_ref.registry_uri)
    # An image is reused for the same fingerprint from any registry: the fingerprint names the
    # model; the version is the one the image was first built for.
    identity = {"name": model_ref.name or "", "fingerprint": model_ref.key,
                "built_from": f"{model_ref.uri} (version {model_ref.version})"
                if model_ref.version else model_ref.uri}
    (target / "styles.json").write_text(json.dumps(page_styles(catalog, identity), indent=1))


def dockerfile_step() -> str:
    """The thin layer's line that puts the page where docker/nginx.conf serves it from."""
    return f"COPY {CONTEXT_DIR} {PAGE_IN_IMAGE}\n"
