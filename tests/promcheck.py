"""A real Prometheus server scraping a model server, and /metrics read directly: shared by
tests/run/test_service.py (``make serve``'s server) and tests/containers/test_kubernetes.py (the
serving image). Debian's ``prometheus`` package (``make install-prometheus``; .ci/run installs it)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from loadcheck import assert_served_everyone

from bench.load import run_load
from neuralstyle.run import server as service
from neuralstyle.run.serving import free_port

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


def metrics(url: str, session: requests.Session | None = None) -> dict[tuple[str, tuple], float]:
    """Every sample of ``/metrics``, keyed by (name, sorted labels); ``session`` keeps one
    connection (one worker), as Prometheus does."""
    from prometheus_client.parser import text_string_to_metric_families

    response = (session or requests).get(f"{url}/metrics", timeout=10)
    assert response.status_code == 200, response.text[:300]
    assert response.headers["content-type"].startswith("text/plain; version=")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    """One sample's value (0 when absent: a counter not yet incremented)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def status_of(url: str) -> int:
    try:
        return requests.get(url, timeout=2).status_code
    except requests.RequestException:
        return 0


@contextlib.contextmanager
def prometheus(targets: list[str], interval_s: int = 1) -> Iterator[str]:
    """Debian's Prometheus on a free loopback port scraping ``targets`` (host:port); its URL."""
    if not Path(PROMETHEUS).exists():
        message = "Prometheus is not installed: apt-get install -y prometheus (make install-prometheus)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="stylize-prometheus-") as tmp:
        config = Path(tmp, "prometheus.yml")
        config.write_text(
            f"global:\n  scrape_interval: {interval_s}s\n  scrape_timeout: {interval_s}s\n"
            "scrape_configs:\n  - job_name: stylize\n    static_configs:\n"
            f"      - targets: {json.dumps(targets)}\n")
        process = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp}/data",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=open(Path(tmp, "log"), "w"), start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while status_of(f"{url}/-/ready") != 200:
                assert process.poll() is None, Path(tmp, "log").read_text()[-2000:]
                assert time.monotonic() < deadline, "Prometheus never became ready"
                time.sleep(0.2)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def promql(url: str, query: str) -> list[dict]:
    """An instant query through Prometheus's HTTP API; its result vector."""
    response = requests.get(f"{url}/api/v1/query", params={"query": query}, timeout=10)
    assert response.status_code == 200, response.text[:500]
    body = response.json()
    assert body["status"] == "success", body
    return body["data"]["result"]


def scrape_while_loaded(prom: str, target: str, bodies: list, report: Callable[[str], None],
                        seconds: float = 8.0) -> None:
    """Traffic for ``seconds`` while Prometheus scrapes ``target``; PromQL must agree with the clients."""
    deadline = time.monotonic() + 30
    while not promql(prom, f'up{{instance="{target}"}} == 1'):
        assert time.monotonic() < deadline, "Prometheus never scraped the target"
        time.sleep(0.5)
    total_q = (f'sum(stylize_requests_total{{instance="{target}",'
               f'route=~"/stylize|/invocations"}}) or vector(0)')
    time.sleep(2.5)  # a scrape of the quiet server: the count before this traffic
    before = float(promql(prom, total_q)[0]["value"][1])
    result = run_load(f"http://{target}", clients=4, seconds=seconds, bodies=bodies)
    assert_served_everyone(result)
    time.sleep(2.5)  # two more scrapes after the last answer
    window = f"{int(seconds + 10)}s"
    total = promql(prom, total_q)
    rate_q = (f'sum(rate(stylize_requests_total{{instance="{target}",status="200"}}[{window}]))')
    rate = promql(prom, rate_q)
    p95_q = (f'histogram_quantile(0.95, sum by (le) (rate(stylize_request_duration_seconds_bucket'
             f'{{instance="{target}"}}[{window}])))')
    p95 = promql(prom, p95_q)
    counted = float(total[0]["value"][1]) - before
    client_p95 = result.percentile(0.95)
    report(f"{target}: clients {len(result.answers)} answers, p95 {client_p95:.3f} s; "
           f"Prometheus: {rate_q} = {float(rate[0]['value'][1]):.2f}/s; "
           f"{p95_q} = {float(p95[0]['value'][1]):.3f} s; requests counted {counted:.0f}")
    assert counted == len(result.answers)
    assert float(rate[0]["value"][1]) > 0
    # histogram_quantile interpolates inside a bucket: the client's p95 lies in the same bucket.
    edges = [0, *service.LATENCY_BUCKETS]
    answer = float(p95[0]["value"][1])
    bucket = next(i for i, edge in enumerate(edges) if answer <= edge)
    assert edges[bucket - 1] * 0.8 <= client_p95 <= edges[bucket] * 1.25, (answer, client_p95)
