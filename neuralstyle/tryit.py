"""The try-it page of the serving image, and ``make try``.

The page (``docker/tryit/``: plain HTML, CSS and JavaScript) is copied into the serving image's
thin layer and served by its nginx at ``/``, on the same origin as ``/invocations``: no other
server process, no CORS. Its style list, ``/tryit/styles.json``, is written at build time from
the packaged model's own ``catalog.json``, so each image offers exactly its version's styles.

    python -m neuralstyle.tryit      # make try: build or reuse the image, run it, print the URL
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from neuralstyle import config

REPO_DIR = Path(__file__).resolve().parent.parent
PAGE_DIR = REPO_DIR / "docker" / "tryit"
PAGE_IN_IMAGE = "/usr/share/stylize/tryit"  # docker/nginx.conf serves / and /tryit/ from here
CONTEXT_DIR = "tryit"  # the folder in the thin layer's build context
CONTAINER_NAME = "stylize-try"
TRY_PORT = 5002


def page_files() -> list[Path]:
    """The page's committed files, in a stable order (their hash is part of the layer recipe)."""
    return sorted(p for p in PAGE_DIR.iterdir() if p.is_file())


def model_catalog(model_uri: str, tracking_uri: str, registry_uri: str) -> Any:
    """The ``Catalog`` packaged inside the model (its ``artifacts/networks/catalog.json``)."""
    import mlflow.artifacts

    from neuralstyle.styles import Catalog

    with tempfile.TemporaryDirectory(prefix="stylize-catalog-") as tmp:
        path = mlflow.artifacts.download_artifacts(
            artifact_uri=f"{model_uri.rstrip('/')}/artifacts/networks/catalog.json",
            dst_path=tmp, tracking_uri=tracking_uri, registry_uri=registry_uri,
        )
        return Catalog.load(path)


def page_styles(catalog: Any, model: dict[str, str]) -> dict[str, Any]:
    """What the page reads: the model's identity and every style it may send."""
    from neuralstyle.model_card import catalog_document

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


def run_try(model_uri: str, tracking_uri: str | None, port: int) -> str:
    """Build or reuse the serving image, (re)start the ``stylize-try`` container, return its URL."""
    import docker.errors

    from neuralstyle import images
    from neuralstyle.container import docker_client, wait_ready

    client = docker_client()
    tag = images.ensure_serving_image(model_uri, tracking_uri)
    try:
        old = client.containers.get(CONTAINER_NAME)
    except docker.errors.NotFound:
        old = None
    if old is not None:  # the container an earlier `make try` started: replace it
        old.remove(force=True)
    container = client.containers.run(
        tag, detach=True, name=CONTAINER_NAME, auto_remove=True,
        ports={images.SERVING_CONTAINER_PORT: ("127.0.0.1", port)},
        labels={"org.stylize.started-by": "make try", "org.stylize.model-uri": model_uri},
    )
    url = f"http://127.0.0.1:{port}"
    wait_ready(container, url)
    return url


def main(argv: list[str] | None = None) -> int:
    """``make try``: the serving image with its try-it page on 127.0.0.1; prints the URL."""
    import argparse
    import logging

    parser = argparse.ArgumentParser(prog="python -m neuralstyle.tryit", description=main.__doc__)
    parser.add_argument("--model-uri", default=config.DEFAULT_MODEL_URI,
                        help="registered model to serve (default: %(default)s)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking/registry URI (default: $MLFLOW_TRACKING_URI, else "
                             f"{config.DEFAULT_TRACKING_URI})")
    parser.add_argument("--port", type=int, default=TRY_PORT,
                        help="port on 127.0.0.1 (default: %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        url = run_try(args.model_uri, args.tracking_uri, args.port)
    except Exception as exc:  # no engine, no model, a failed build: one clear line
        print(f"try: error: {exc}", file=sys.stderr)
        return 1
    print(f"try-it page: {url}/   (model {args.model_uri}; API at {url}/invocations)")
    print(f"stop it with: docker rm -f {CONTAINER_NAME}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
