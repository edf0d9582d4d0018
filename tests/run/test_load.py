"""Under load, as shipped: plain keep-alive clients against the settings ``make serve`` uses.

16 clients (``bench/load.py``'s ``run_load``: a thread and a ``requests.Session`` each, no
retries) post 512 px photos for 20 s, one in five truncated, to a server started by
``neuralstyle.run.serving`` with its defaults (the ones ``make serve`` sets; tests/run/test_serve.py
checks they agree). Past the queue a request is refused with 503 and ``Retry-After``. The
container's counterparts are in tests/containers/test_docker.py. Figures are printed as ``[load]`` lines.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator

import pandas as pd
import pytest
import requests
from figures import reporter
from loadcheck import CLIENTS, SECONDS, Overlap, assert_served_everyone, post_until_not_503

from bench.load import photo_jpegs, request_bodies, run_load
from neuralstyle.model import contract, pyfunc_model
from neuralstyle.run import serving
from neuralstyle.run.serving import Server, running_server

report = reporter("load")


def test_parallel_photos_comes_from_the_environment(monkeypatch) -> None:
    monkeypatch.delenv(contract.PARALLEL_PHOTOS_ENV, raising=False)
    assert pyfunc_model.parallel_photos() == contract.DEFAULT_PARALLEL_PHOTOS == 2
    monkeypatch.setenv(contract.PARALLEL_PHOTOS_ENV, " 3 ")
    assert pyfunc_model.parallel_photos() == 3
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv(contract.PARALLEL_PHOTOS_ENV, bad)
        with pytest.raises(ValueError, match=f"STYLIZE_PARALLEL_PHOTOS='{bad}' must be a whole"):
            pyfunc_model.parallel_photos()


@pytest.mark.slow
def test_at_most_two_photos_are_stylized_at_once(model, photos, monkeypatch) -> None:
    """Six threads predict at once (the server's pool on 2 cores); two photos run at a time."""
    # The module the loaded model runs (MLflow may import the model's own copy of the code).
    module = sys.modules[type(model.unwrap_python_model()).__module__]
    counted = Overlap(module.stylize_row)
    monkeypatch.setattr(module, "stylize_row", counted)
    frame = pd.DataFrame({"image": [base64.b64encode(photos["chelsea"]).decode("ascii")] * 2,
                          "style": ["7", "19"]})
    results: list[pd.DataFrame] = []
    threads = [threading.Thread(target=lambda: results.append(
        model.predict(frame, params={"max_size": 128}))) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(results) == 6 and all(r["width"].tolist() == [128, 128] for r in results)
    assert counted.most == contract.DEFAULT_PARALLEL_PHOTOS


@pytest.fixture(scope="module")
def server(registry) -> Iterator[Server]:
    """``mlflow models serve`` with serve_model's defaults: make serve's limits. Python's
    faulthandler is on in it, so a hung server can be made to print every thread's stack."""
    previous = os.environ.get("PYTHONFAULTHANDLER")
    os.environ["PYTHONFAULTHANDLER"] = "1"  # serve_env passes the environment on
    try:
        with running_server(registry.model_uri, tracking_uri=registry.tracking_uri) as srv:
            yield srv
    finally:
        if previous is None:
            os.environ.pop("PYTHONFAULTHANDLER", None)
        else:
            os.environ["PYTHONFAULTHANDLER"] = previous


def stacks_of(server: Server) -> str:
    """Abort the server's process group and return its log: faulthandler prints where every
    Python thread was (a load test that got no answer needs that more than the clients' view)."""
    with contextlib.suppress(OSError):
        os.killpg(server.process.pid, signal.SIGABRT)
    time.sleep(3)
    return server.log_tail(lines=400)


@pytest.mark.integration
def test_16_keepalive_clients_get_no_5xx(server, request) -> None:
    result = run_load(server.url, clients=CLIENTS, seconds=SECONDS,
                      bodies=request_bodies(photo_jpegs()), rss=server.rss_bytes)
    report(request, f"make serve's settings: {result.summary()}")
    try:
        assert_served_everyone(result)
    except AssertionError as exc:  # what the server said helps more than the clients' timeouts
        raise AssertionError(f"{exc}\nserver log tail, then its threads' stacks:\n"
                             f"{stacks_of(server)}") from None


def _body(photo: bytes) -> str:
    return json.dumps({"dataframe_split": {"columns": ["image", "style"],
                                           "data": [[base64.b64encode(photo).decode(), "7"]]}})


@contextlib.contextmanager
def idle_connections(url: str, count: int) -> Iterator[None]:
    """``count`` open TCP connections that send nothing, like idle keep-alive clients."""
    host, port = url.removeprefix("http://").split(":")
    sockets = [socket.create_connection((host, int(port)), timeout=5) for _ in range(count)]
    try:
        time.sleep(0.5)  # uvicorn registers each connection as it accepts it
        yield
    finally:
        for sock in sockets:
            sock.close()


@pytest.mark.integration
def test_past_the_queue_a_request_gets_503_with_retry_after(server) -> None:
    """uvicorn's limit counts open connections: at the limit every new request is refused,
    with Retry-After; one connection fewer and it is served; afterwards all is well again."""
    body = _body(photo_jpegs()[1])
    headers = {"Content-Type": "application/json"}
    limit = serving.LIMIT_CONCURRENCY
    with idle_connections(server.url, limit - 2):  # + this request's connection = limit - 1
        served = post_until_not_503(server.url, body)  # earlier tests' connections may linger
    assert served.status_code == 200, served.text[:300]
    with idle_connections(server.url, limit - 1):  # + this request's connection = limit
        refused = requests.post(f"{server.url}/invocations", data=body, headers=headers,
                                timeout=60)
    assert refused.status_code == 503, refused.text[:300]
    assert refused.headers["Retry-After"] == str(serving.RETRY_AFTER_S)
    again = post_until_not_503(server.url, body)  # uvicorn sees closed connections go a moment later
    assert again.status_code == 200, again.text[:300]
