"""Where a model runs for a caller: the one place every CLI and task opens a predictor.

``local`` loads the registered model in this process, ``server`` talks to a running
``mlflow models serve`` (or the serving container), ``docker`` starts the serving image for the
block and talks to it. Adding an executor is one name in ``EXECUTORS`` and one branch in
``open_predictor``; the CLIs' ``--executor`` and the tasks' ``executor`` parameter take it from here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from neuralstyle import config
from neuralstyle.run.inference import LocalPredictor, Predictor

EXECUTORS = ("local", "server", "docker")


def resolve_executor(executor: str | None, server_url: str | None) -> str:
    """The executor to use: the one given, else ``server`` when a server URL is set, else local."""
    kind = executor or ("server" if server_url else "local")
    if kind not in EXECUTORS:
        raise ValueError(f"executor {kind!r} is not one of {', '.join(EXECUTORS)}")
    if kind == "server" and not server_url:
        raise ValueError("executor server needs a server URL (--server-url "
                         "http://127.0.0.1:5001, or [Stylize] server_url in luigi.cfg)")
    return kind


@contextlib.contextmanager
def open_predictor(executor: str | None = None, *, model_uri: str | None = None,
                   server_url: str | None = None, tracking_uri: str | None = None
                   ) -> Iterator[Predictor]:
    """A predictor for the block; a docker container lives only inside it."""
    kind = resolve_executor(executor, server_url)
    model_uri = model_uri or config.DEFAULT_MODEL_URI
    if kind == "local":
        yield LocalPredictor(model_uri, tracking_uri)
    elif kind == "server":
        from neuralstyle.run.client import StyleServerClient

        yield StyleServerClient(server_url)
    else:
        from neuralstyle.run.client import StyleServerClient
        from neuralstyle.run.container import model_container

        with model_container(model_uri, tracking_uri=tracking_uri) as url:
            yield StyleServerClient(url)
