"""A small client for the served model (``mlflow models serve`` or the build-docker image).

Retries with exponential backoff on connection errors and on 500/502/503/504 (urllib3's
``Retry``), never on 4xx: a 4xx is the caller's fault and is raised at once with the server's
own message. Retrying ``/invocations`` cannot duplicate a side effect: the model is a pure
function of the request (it writes nothing), so a repeated request only repeats work.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any

import pandas as pd
import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from neuralstyle.model.errors import StyleInputError

RETRY_STATUSES = (500, 502, 503, 504)
# Read timeout = the request timeout serving.py gives the server: the client then sees the
# server's own 504 for a request that is too slow, rather than giving up at the same moment.
DEFAULT_TIMEOUT = (5.0, 300.0)
MESSAGE_CHARS = 500


class ServerError(RuntimeError):
    """The server failed (5xx after retries) or could not be reached."""


class NotReady(ServerError):
    """A starting server died or did not answer ``/ping`` in time (the message says which)."""


def ping(url: str, path: str = "/ping") -> bool:
    """True when ``url`` answers ``path`` (``/ping``: alive; ``/ready``: warmed) with 200 (one
    quick try, no retries)."""
    try:
        return requests.get(f"{url}{path}", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def wait_for_ping(
    url: str,
    timeout_s: float,
    exit_reason: Callable[[], str | None] = lambda: None,
    interval_s: float = 0.25,
    path: str = "/ping",
) -> None:
    """Poll ``path`` (``/ping``) until 200: the one readiness wait for servers and containers alike.

    ``exit_reason`` returns why the thing serving ``url`` has stopped (``"exited"``), or None
    while it runs, so a dead process fails at once instead of at the deadline.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        reason = exit_reason()
        if reason:
            raise NotReady(f"{reason} before answering {url}{path}")
        if ping(url, path):
            return
        time.sleep(interval_s)
    raise NotReady(f"did not answer {url}{path} within {timeout_s:.0f} s")


class StyleServerClient:
    """Talks to ``/ping`` and ``/invocations`` of a served style-transfer model."""

    def __init__(
        self,
        url: str,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
        retries: int = 4,
        backoff: float = 0.5,
        backoff_max: float = 10.0,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise StyleInputError(
                f"server URL {url!r} must start with http:// or https:// "
                "(e.g. http://127.0.0.1:5001)"
            )
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        # Sleeps between tries: 0, 2*backoff, 4*backoff, ... (urllib3 2), capped at backoff_max.
        retry = Retry(
            total=retries, connect=retries, read=retries, status=retries,
            backoff_factor=backoff, backoff_max=backoff_max, status_forcelist=RETRY_STATUSES,
            allowed_methods=frozenset({"GET", "POST"}), raise_on_status=False,
            respect_retry_after_header=True,
        )
        self.session = requests.Session()
        self.session.mount("http://", HTTPAdapter(max_retries=retry))
        self.session.mount("https://", HTTPAdapter(max_retries=retry))

    def ping(self) -> bool:
        """True when the server answers ``/ping`` with 200 (one quick try, no retries)."""
        return ping(self.url)

    def wait_ready(self, timeout_s: float = 120.0, interval_s: float = 0.5) -> None:
        """Poll ``/ping`` until it answers, or raise ServerError after ``timeout_s``."""
        try:
            wait_for_ping(self.url, timeout_s, interval_s=interval_s)
        except NotReady as exc:
            raise ServerError(f"server {exc}") from None

    def predict(self, frame: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """POST a DataFrame in ``dataframe_split`` form; return the predictions as a DataFrame."""
        body: dict[str, Any] = {"dataframe_split": frame.to_dict(orient="split", index=False)}
        if params:
            body["params"] = params
        response = self._post(json.dumps(body))
        if 400 <= response.status_code < 500:
            raise StyleInputError(
                f"server {self.url} rejected the request ({response.status_code}): "
                f"{server_message(response)}"
            )
        if response.status_code != 200:
            raise ServerError(
                f"server {self.url} failed ({response.status_code}) after {self._attempts()}: "
                f"{server_message(response)}"
            )
        try:
            return pd.DataFrame(response.json()["predictions"])
        except (ValueError, KeyError, TypeError):
            raise ServerError(
                f"server {self.url} answered 200 without a 'predictions' JSON field: "
                f"{_short(response.text)!r}; is it a style-transfer model server?"
            ) from None

    def _attempts(self) -> str:
        tries = self.retries + 1
        return f"{tries} attempt{'s' if tries != 1 else ''}"

    def _post(self, data: str) -> requests.Response:
        """POST to ``/invocations``; transport failures become one clear ServerError."""
        where = f"{self.url}/invocations"
        try:
            return self.session.post(
                where, data=data, headers={"Content-Type": "application/json"},
                timeout=self.timeout,
            )
        except requests.Timeout:
            raise ServerError(
                f"server {where} did not answer within {self.timeout[1]:.0f} s "
                f"({self._attempts()})"
            ) from None
        except requests.ConnectionError as exc:
            raise ServerError(
                f"server {where} is not reachable after {self._attempts()} "
                f"({_reason(exc)}); is `mlflow models serve` running there?"
            ) from None
        except requests.RequestException as exc:
            raise ServerError(f"request to {where} failed: {_short(str(exc))}") from None


def server_message(response: requests.Response) -> str:
    """The server's error text: MLflow's JSON ``message`` field when there is one."""
    if response.status_code == 413:
        return (
            f"the request body ({len(response.request.body or b'') / 1e6:.1f} MB) is over the "
            "server's body limit (the build-docker image's nginx sets client_max_body_size); "
            "send a smaller photo or raise the limit"
        )
    try:
        payload = response.json()
        message = payload.get("message", response.text) if isinstance(payload, dict) else ""
    except ValueError:
        message = response.text
    message = str(message or response.text)
    # A malformed-JSON error echoes the whole request body (megabytes of base64): cut it off.
    message = message.split("\nInput: ", 1)[0]
    # MLflow wraps model and schema errors as "Failed to predict data '<the frame>'. Error: ...
    # [Failed to enforce schema of data '<the rows>' ... Error: ]<the reason>": keep the reason.
    if message.startswith("Failed to predict data") and "Error: " in message:
        message = message.rsplit("Error: ", 1)[1]
    return _short(" ".join(message.split())) or f"HTTP {response.status_code}"


def _reason(exc: Exception) -> str:
    """The innermost cause of a connection error, e.g. 'Connection refused'."""
    found = re.search(r"\[Errno -?\d+\] ([^'\")]+)", str(exc))
    return found.group(1).strip() if found else _short(str(exc))


def _short(text: str) -> str:
    return text if len(text) <= MESSAGE_CHARS else text[:MESSAGE_CHARS] + "..."
