"""The Docker engine, through the Docker SDK: one client for image builds and for containers."""

from __future__ import annotations

from typing import Any

BUILD_TIMEOUT_S = 1800  # a read may wait this long: a vfs layer commit of a 1 GB image is silent


class EngineError(RuntimeError):
    """No Docker engine answers."""


def docker_client(timeout: int = BUILD_TIMEOUT_S) -> Any:
    """A Docker SDK client from the environment (DOCKER_HOST, else the default socket), pinged."""
    import docker

    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
    except Exception as exc:
        raise EngineError(
            f"no Docker engine answers ({type(exc).__name__}: {exc}); start one with "
            "`sudo docker/engine.sh start`"
        ) from None
    return client
