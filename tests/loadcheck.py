"""What a load test asserts, shared by make serve's (tests/run/test_load.py) and the serving
container's (tests/containers/test_docker.py); and ``Overlap``, how many calls ran at once (the
model's photo slots, tests/run/test_load.py; photos in bands, tests/model/test_tiling.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import requests

from bench.load import LoadResult

CLIENTS = 16
SECONDS = 20.0


def assert_served_everyone(result: LoadResult) -> None:
    """No 5xx, no connection errors; every good photo a 200, every bad one a 400."""
    failures = [a for a in result.answers if a.status == 0 or a.status >= 500]
    assert not failures, (f"{len(failures)} of {len(result.answers)} requests failed: "
                          f"{result.statuses}; first: {failures[0]}")
    wrong = [a for a in result.answers if a.status != (400 if a.bad_photo else 200)]
    assert not wrong, f"{len(wrong)} answers with the wrong status, first: {wrong[0]}"
    assert sum(a.bad_photo for a in result.answers) >= 1, "no bad photo was sent"
    assert len(result.answers) >= result.clients, f"too few answers: {result.summary()}"


def post_until_not_503(url: str, body: str, within_s: float = 10.0) -> requests.Response:
    """Post until the answer is not a 503 or ``within_s`` has passed; the last answer."""
    deadline = time.monotonic() + within_s
    while True:
        response = requests.post(f"{url}/invocations", data=body, timeout=60,
                                 headers={"Content-Type": "application/json"})
        if response.status_code != 503 or time.monotonic() > deadline:
            return response
        time.sleep(0.2)


class Overlap:
    """``fn`` wrapped to count its calls in flight: ``most`` is the most at once. Each call waits
    ``hold_s`` first, so threads that could overlap do (a gate that lets them in shows)."""

    def __init__(self, fn: Callable[..., Any], hold_s: float = 0.05) -> None:
        self.fn, self.hold_s = fn, hold_s
        self.running = self.most = 0
        self.lock = threading.Lock()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            time.sleep(self.hold_s)
            return self.fn(*args, **kwargs)
        finally:
            with self.lock:
                self.running -= 1
