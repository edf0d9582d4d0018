"""The Docker executor: serve the registered model from its serving image for one job.

Also ``make try`` (``python -m neuralstyle.run.container``): the same image, left running with
its try-it page on 127.0.0.1:5002.

    with model_container("models:/style-transfer@champion") as url:
        StyleServerClient(url).predict(frame)

The image is ``neuralstyle.containers.images.ensure_serving_image``'s (``mlflow models build-docker
--env-manager local`` plus the project's front proxy), tagged by the model version and reused
when present; on hosts without Docker Hub build its base first (docker/README.md). The container
publishes the image's port 8080 on a free 127.0.0.1 port and is stopped and removed when the
block ends, also on failure. Containers this module did not start are never touched.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import Any

from neuralstyle import config
from neuralstyle.containers import engine
from neuralstyle.run.serving import free_port

log = logging.getLogger(__name__)

LABEL = "org.stylize.started-by"
READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 10
LOG_TAIL_LINES = 30


class ContainerError(RuntimeError):
    """No engine answers, or the container exited or never answered ``/ping``."""


def docker_client() -> Any:
    """A Docker SDK client from the environment (DOCKER_HOST, else the default socket)."""
    try:
        return engine.docker_client(timeout=600)
    except engine.EngineError as err:
        raise ContainerError(f"{err}, or use the local or server executor") from None


def _logs_tail(container: Any) -> str:
    try:
        return container.logs(tail=LOG_TAIL_LINES).decode(errors="replace")
    except Exception as exc:  # the container may be gone already
        return f"(no logs: {exc})"


def wait_ready(container: Any, url: str, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Poll ``/ping`` until it answers; fail fast with the log tail if the container exits."""
    from neuralstyle.run.client import NotReady, wait_for_ping

    def exit_reason() -> str | None:
        container.reload()
        return "exited" if container.status in ("exited", "dead") else None

    try:
        wait_for_ping(url, timeout_s, exit_reason)
    except NotReady as exc:
        raise ContainerError(
            f"container {container.short_id} {exc}; log tail:\n{_logs_tail(container)}"
        ) from None


def remove_container(container: Any) -> None:
    """Stop and remove a container this module started; quiet when it is already gone."""
    import docker.errors

    with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
        container.stop(timeout=STOP_TIMEOUT_S)
    with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
        container.remove(force=True)


@contextlib.contextmanager
def model_container(
    model_uri: str = config.DEFAULT_MODEL_URI,
    *,
    tracking_uri: str | None = None,
    image: str | None = None,
    client: Any | None = None,
    ready_timeout_s: float = READY_TIMEOUT_S,
) -> Iterator[str]:
    """Start the model's serving container on 127.0.0.1, yield its URL, always remove it.

    ``image`` runs that tag as is instead of ensuring the model's serving image (built once,
    minutes; reused after). ``client`` is a Docker SDK client (default: from the environment).
    """
    from neuralstyle.containers import images

    client = client or docker_client()
    tag = image or images.ensure_serving_image(model_uri, tracking_uri)
    port = free_port()
    container = client.containers.run(
        tag, detach=True, ports={images.SERVING_CONTAINER_PORT: ("127.0.0.1", port)},
        labels={LABEL: "neuralstyle.run.container", "org.stylize.model-uri": model_uri},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        log.info("started container %s from %s on %s", container.short_id, tag, url)
        wait_ready(container, url, ready_timeout_s)
        yield url
    finally:
        remove_container(container)
        log.info("stopped and removed container %s", container.short_id)


# --- `make try`: the serving image with its try-it page, left running -------------------------

CONTAINER_NAME = "stylize-try"
TRY_PORT = 5002


def run_try(model_uri: str, tracking_uri: str | None, port: int) -> str:
    """Build or reuse the serving image, (re)start the ``stylize-try`` container, return its URL."""
    import docker.errors

    from neuralstyle.containers import images

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

    parser = argparse.ArgumentParser(prog="python -m neuralstyle.run.container", description=main.__doc__)
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
