"""The server client: retries and backoff, errors a user can act on, and stylize.py through a server.

The unit tests mock HTTP with ``responses`` (status retries) or run a tiny local HTTP server
(connection retries and backoff timing, which ``responses`` does not simulate); the tests marked
``integration`` run ``stylize.py --server-url`` against the real ``mlflow models serve``.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest
import responses
from oracle import PIXEL_TOLERANCE, decode_rgb, max_level_diff
from responses.registries import OrderedRegistry

from neuralstyle.model.errors import StyleInputError
from neuralstyle.run.client import ServerError, StyleServerClient
from neuralstyle.run.serving import free_port, serve_model

REPO = Path(__file__).resolve().parents[2]
URL = "http://stylize.test:5001"
INVOCATIONS = f"{URL}/invocations"
PREDICTIONS = {"predictions": [{"image": "aGk=", "width": 64, "height": 48, "style": "style-07"}]}
# What mlflow models serve answers for a StyleInputError raised in predict (HTTP 400).
MLFLOW_400 = {
    "error_code": "INVALID_PARAMETER_VALUE",
    "message": "Failed to predict data '   image style\n0  aGk=     7'. \nError: image (row 0) is "
               "not a JPEG/PNG/WebP image (got 2 bytes of text starting b'hi')",
}


def frame() -> pd.DataFrame:
    return pd.DataFrame({"image": ["aGk="], "style": ["7"]})


def client(retries: int = 3, backoff: float = 0.0) -> StyleServerClient:
    return StyleServerClient(URL, retries=retries, backoff=backoff)


@pytest.mark.parametrize("status", [500, 502, 503, 504])
@responses.activate(registry=OrderedRegistry)
def test_retries_5xx_then_succeeds(status: int) -> None:
    for _ in range(2):
        responses.post(INVOCATIONS, json={"message": "busy"}, status=status)
    responses.post(INVOCATIONS, json=PREDICTIONS)
    result = client().predict(frame(), params={"format": "png"})
    assert len(responses.calls) == 3
    assert result.to_dict(orient="records") == PREDICTIONS["predictions"]
    sent = json.loads(responses.calls[-1].request.body)
    assert sent["dataframe_split"]["columns"] == ["image", "style"]
    assert sent["params"] == {"format": "png"}


@pytest.mark.parametrize("status", [400, 404, 415, 422])
@responses.activate
def test_4xx_is_not_retried_and_names_the_problem(status: int) -> None:
    responses.post(INVOCATIONS, json=MLFLOW_400, status=status)
    with pytest.raises(StyleInputError) as info:
        client().predict(frame())
    assert len(responses.calls) == 1
    message = info.value.message
    assert f"server {URL} rejected the request ({status})" in message
    # The model's own message, without MLflow's repr of the whole input frame.
    assert message.endswith("image (row 0) is not a JPEG/PNG/WebP image "
                            "(got 2 bytes of text starting b'hi')")
    assert "Failed to predict data" not in message


@responses.activate
def test_schema_error_keeps_the_reason_not_the_echoed_rows() -> None:
    rows = "[{'image': '" + "QUFB" * 5000 + "'}]"
    message = (f"Failed to predict data '{rows}'. \nError: Failed to enforce schema of data "
               f"'{rows}' with schema '['image': string (required), 'style': string (required)]'"
               ". Error: Model is missing inputs ['style'].")
    responses.post(INVOCATIONS, json={"error_code": "INVALID_PARAMETER_VALUE",
                                      "message": message}, status=400)
    with pytest.raises(StyleInputError) as info:
        client().predict(frame())
    assert info.value.message == (
        f"server {URL} rejected the request (400): Model is missing inputs ['style']."
    )


@responses.activate
def test_malformed_json_error_does_not_echo_the_request() -> None:
    echo = "Invalid input. Ensure that input is a valid JSON formatted string. Error: 'JSONDe" \
           "codeError('Expecting value: line 1 column 21 (char 20)')'\nInput: \nb'" + "A" * 10_000
    responses.post(INVOCATIONS, json={"error_code": "BAD_REQUEST", "message": echo}, status=400)
    with pytest.raises(StyleInputError) as info:
        client().predict(frame())
    assert "valid JSON formatted string" in info.value.message
    assert "AAAA" not in info.value.message and len(info.value.message) < 400


@responses.activate
def test_413_explains_the_body_limit() -> None:
    html = "<html><head><title>413 Request Entity Too Large</title></head></html>"
    responses.post(INVOCATIONS, body=html, status=413, content_type="text/html")
    with pytest.raises(StyleInputError, match="over the server's body limit.*client_max_body_size"):
        client().predict(frame())
    assert len(responses.calls) == 1


@responses.activate
def test_exhausted_retries_raise_server_error_naming_the_url() -> None:
    responses.post(INVOCATIONS, json={"message": "Exceeded concurrency limit."}, status=503)
    with pytest.raises(ServerError) as info:
        client(retries=2).predict(frame())
    assert len(responses.calls) == 3
    assert str(info.value) == (
        f"server {URL} failed (503) after 3 attempts: Exceeded concurrency limit."
    )


@responses.activate
def test_200_without_predictions_is_a_server_error() -> None:
    responses.post(INVOCATIONS, body="<html>a proxy page</html>", status=200)
    with pytest.raises(ServerError, match="answered 200 without a 'predictions' JSON field"):
        client().predict(frame())


def test_url_without_scheme_is_bad_input() -> None:
    with pytest.raises(StyleInputError, match="server URL '127.0.0.1:5001' must start with http"):
        StyleServerClient("127.0.0.1:5001")


def test_server_down_is_a_clear_error() -> None:
    port = free_port()  # nothing listens there
    started = time.monotonic()
    with pytest.raises(ServerError) as info:
        StyleServerClient(f"http://127.0.0.1:{port}", retries=2, backoff=0.05).predict(frame())
    assert str(info.value) == (
        f"server http://127.0.0.1:{port}/invocations is not reachable after 3 attempts "
        "(Connection refused); is `mlflow models serve` running there?"
    )
    assert time.monotonic() - started < 5


class _Recorder(BaseHTTPRequestHandler):
    """Answers 503 to the first ``fail`` POSTs, then a prediction; records arrival times."""

    fail = 0
    arrivals: list[float] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).arrivals.append(time.monotonic())
        failing = len(self.arrivals) <= self.fail
        body = json.dumps({"message": "busy"} if failing else PREDICTIONS).encode()
        self.send_response(503 if failing else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def local_http() -> Iterator:
    """Start a real HTTP server on 127.0.0.1 (optionally after a delay); stopped after the test."""
    servers: list[tuple[ThreadingHTTPServer, threading.Event]] = []

    def start(fail: int = 0, delay_s: float = 0.0) -> tuple[str, type[_Recorder]]:
        handler = type("Handler", (_Recorder,), {"arrivals": [], "fail": fail})
        port = free_port()
        httpd = ThreadingHTTPServer(("127.0.0.1", port), handler, bind_and_activate=False)
        listening = threading.Event()

        def run() -> None:
            time.sleep(delay_s)  # connections are refused until then
            httpd.server_bind()
            httpd.server_activate()
            listening.set()
            httpd.serve_forever(poll_interval=0.05)

        threading.Thread(target=run, daemon=True).start()
        servers.append((httpd, listening))
        if delay_s == 0:
            listening.wait(5)
        return f"http://127.0.0.1:{port}", handler

    yield start
    for httpd, listening in servers:
        if listening.wait(5):
            httpd.shutdown()
        httpd.server_close()


def test_backoff_grows_between_retries(local_http) -> None:
    url, handler = local_http(fail=3)
    result = StyleServerClient(url, retries=4, backoff=0.2).predict(frame())
    assert result["style"].tolist() == ["style-07"]
    gaps = [b - a for a, b in zip(handler.arrivals, handler.arrivals[1:], strict=False)]
    # urllib3 2 sleeps 0, then backoff * 2**(n-1): 0.4 s, 0.8 s.
    assert len(gaps) == 3 and gaps[0] < 0.3, gaps
    assert 0.35 <= gaps[1] < gaps[2] and gaps[2] >= 0.75, gaps


def test_connection_refused_is_retried_until_the_server_is_up(local_http) -> None:
    started = time.monotonic()
    url, handler = local_http(delay_s=0.6)
    result = StyleServerClient(url, retries=5, backoff=0.2).predict(frame())
    assert result["width"].tolist() == [64]
    assert len(handler.arrivals) == 1  # the refused tries never reached it
    assert handler.arrivals[0] - started >= 0.6


# --- stylize.py against the real server ---------------------------------------------------


@pytest.fixture(scope="module")
def server_url(registry) -> Iterator[str]:
    with serve_model(registry.model_uri, tracking_uri=registry.tracking_uri) as url:
        yield url


def stylize_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run([sys.executable, str(REPO / "stylize.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.integration
def test_stylize_cli_through_the_server(server_url, model, photos, tmp_path) -> None:
    (tmp_path / "photo.jpg").write_bytes(photos["chelsea"])
    proc = stylize_cli("--server-url", server_url, "--image", "photo.jpg", "--style", "7",
                       "--output", "out.jpg", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("wrote out.jpg (451x300, style style-07")
    local = model.predict(
        pd.DataFrame({"image": [base64.b64encode(photos["chelsea"]).decode()], "style": ["7"]}),
        params={"format": "jpeg"},
    )
    expected = decode_rgb(base64.b64decode(local["image"][0]))
    assert max_level_diff(decode_rgb((tmp_path / "out.jpg").read_bytes()), expected) \
        <= PIXEL_TOLERANCE
    # The result, its lineage sidecar and the input: nothing half-written beside them.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jpg", "out.jpg.lineage.json", "photo.jpg"]


@pytest.mark.integration
def test_stylize_cli_bad_image_exit_2_and_no_output(server_url, tmp_path) -> None:
    (tmp_path / "photo.jpg").write_bytes(b"this is not a photo\n")
    proc = stylize_cli("--server-url", server_url, "--image", "photo.jpg", "--style", "7",
                       "--output", "out.jpg", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip() == (
        f"stylize: error: server {server_url} rejected the request (400): image photo.jpg is "
        "not a JPEG/PNG/WebP image (got 20 bytes of text starting b'this is not a ph')"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photo.jpg"]


@pytest.mark.integration
def test_stylize_cli_server_down_exit_1(photos, tmp_path) -> None:
    (tmp_path / "photo.jpg").write_bytes(photos["chelsea"])
    url = f"http://127.0.0.1:{free_port()}"
    proc = stylize_cli("--server-url", url, "--image", "photo.jpg", "--output", "out.jpg",
                       cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert f"stylize: error: server {url}/invocations is not reachable after 5 attempts " \
           "(Connection refused)" in proc.stderr
    assert not (tmp_path / "out.jpg").exists()
