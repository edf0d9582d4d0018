"""A small client for the served model (``mlflow models serve`` or the build-docker image).

Retries with exponential backoff on connection errors and on 500/502/503/504 (urllib3's
``Retry``), never on 4xx: a 4xx is the caller's fault and is raised at once with the server's
own message. Retrying ``/invocations`` cannot duplicate a side effect: the model is a pure
function of the request (it writes nothing), so a repeated request only repeats work.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pandas as pd
import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from neuralstyle.errors import StyleInputError

RETRY_STATUSES = (500, 502, 503, 504)


class ServerError(RuntimeError):
    """The server failed (5xx after retries) or could not be reached."""


class StyleServerClient:
    """Talks to ``/ping`` and ``/invocations`` of a served style-transfer model."""

    def __init__(
        self,
        url: str,
        timeout: tuple[float, float] = (5.0, 300.0),
        retries: int = 4,
        backoff: float = 0.5,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        retry = Retry(
            total=retries, connect=retries, read=retries, status=retries,
            backoff_factor=backoff, status_forcelist=RETRY_STATUSES,
            allowed_methods=frozenset({"GET", "POST"}), raise_on_status=False,
            respect_retry_after_header=True,
        )
        self.session = requests.Session()
        self.session.mount("http://", HTTPAdapter(max_retries=retry))
        self.session.mount("https://", HTTPAdapter(max_retries=retry))

    def ping(self) -> bool:
        """True when the server answers ``/ping`` with 200 (one quick try, no retries)."""
        try:
            return requests.get(f"{self.url}/ping", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def wait_ready(self, timeout_s: float = 120.0, interval_s: float = 0.5) -> None:
        """Poll ``/ping`` until it answers, or raise ServerError after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.ping():
                return
            time.sleep(interval_s)
        raise ServerError(f"server {self.url} did not answer /ping within {timeout_s:.0f} s")

    def predict(self, frame: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """POST a DataFrame in ``dataframe_split`` form; return the predictions as a DataFrame."""
        body: dict[str, Any] = {"dataframe_split": frame.to_dict(orient="split", index=False)}
        if params:
            body["params"] = params
        try:
            response = self.session.post(
                f"{self.url}/invocations", data=json.dumps(body),
                headers={"Content-Type": "application/json"}, timeout=self.timeout,
            )
        except requests.RequestException as exc:
            raise ServerError(f"server {self.url} is not reachable: {_short(exc)}") from None
        if 400 <= response.status_code < 500:
            raise StyleInputError(
                f"server {self.url} rejected the request ({response.status_code}): "
                f"{server_message(response)}"
            )
        if response.status_code != 200:
            raise ServerError(
                f"server {self.url} failed ({response.status_code}) after retries: "
                f"{server_message(response)}"
            )
        return pd.DataFrame(response.json()["predictions"])


def server_message(response: requests.Response) -> str:
    """The server's error text: MLflow's JSON ``message`` field when there is one."""
    try:
        message = response.json().get("message", response.text)
    except ValueError:
        message = response.text
    # MLflow prefixes "Failed to predict data '<repr of the frame>'. Error: <ours>": keep ours.
    if "\nError: " in message:
        message = message.split("\nError: ", 1)[1]
    return " ".join(message.split())[:500] or f"HTTP {response.status_code}"


def _short(exc: Exception) -> str:
    text = str(exc)
    return text if len(text) < 200 else text[:200] + "..."
