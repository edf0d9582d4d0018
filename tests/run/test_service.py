"""The model server run as a service (``python -m neuralstyle.run.server``, what ``make serve`` runs).

Real server processes on 127.0.0.1 (``neuralstyle.run.serving`` with ``server="stylize"``): the raw
route against ``/invocations`` of the same server (same bytes), its errors, ``/metrics`` counting
what clients did, readiness after the warm-up, a SIGTERM drain with requests in flight, 16
keep-alive clients over both routes, and a real Prometheus server (Debian's ``prometheus``)
scraping a two-worker server and answering PromQL. ``mlflow models serve`` itself stays tested in
tests/run/test_serve.py. Figures are printed as ``[service]`` lines.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
import requests
from figures import reporter
from loadcheck import CLIENTS, assert_served_everyone
from oracle import decode_rgb
from PIL import Image
from promcheck import metrics, prometheus, promql, scrape_while_loaded, status_of, value

from bench.load import photo_jpegs, raw_bodies, request_bodies, run_load
from neuralstyle.builder.samples import SAMPLES, encode, sample_painting, sample_rgb
from neuralstyle.run import server as service
from neuralstyle.run.serving import STYLIZE, Server, free_port, running_server

report = reporter("service")


@pytest.fixture(scope="module")
def server(registry) -> Iterator[Server]:
    with running_server(registry.model_uri, tracking_uri=registry.tracking_uri,
                        server=STYLIZE) as srv:
        yield srv


def invocations(url: str, photo: bytes, style: str | None, params: dict,
                painting: bytes | None = None) -> requests.Response:
    columns, row = ["image"], [base64.b64encode(photo).decode()]
    if style is not None:
        columns.append("style")
        row.append(style)
    if painting is not None:
        columns.append("style_image")
        row.append(base64.b64encode(painting).decode())
    body = {"dataframe_split": {"columns": columns, "data": [row]}, "params": params}
    return requests.post(f"{url}/invocations", json=body, timeout=300)


def photo_family() -> list[tuple[str, bytes, str]]:
    """Seeded photos across sizes, aspect ratios and the three input formats: (name, bytes, MIME)."""
    rng = np.random.default_rng(21)
    family = []
    for i, name in enumerate(SAMPLES):
        img = Image.fromarray(sample_rgb(name))
        side = int(rng.integers(64, 700))
        scale = side / max(img.size)
        img = img.resize((max(32, round(img.width * scale)), max(32, round(img.height * scale))))
        fmt, mime = [("JPEG", "image/jpeg"), ("PNG", "image/png"), ("WEBP", "image/webp")][i % 3]
        out = io.BytesIO()
        img.save(out, fmt, **({"quality": 92} if fmt != "PNG" else {}))
        family.append((f"{name} {img.width}x{img.height} {fmt}", out.getvalue(), mime))
    return family


@pytest.mark.integration
def test_raw_route_answers_the_bytes_invocations_answers(server, registry, request) -> None:
    """Body upload (curl --data-binary) and multipart (curl -F) give the very bytes /invocations
    gives for the same photo and params, with the lineage in headers."""
    rng = np.random.default_rng(7)
    sizes = []
    for name, photo, mime in photo_family():
        params = {"format": ["jpeg", "png", "webp"][int(rng.integers(3))],
                  "max_size": int(rng.integers(48, 512)),
                  "strength": round(float(rng.uniform(0.3, 1)), 2),
                  "preserve_color": bool(rng.integers(2)),
                  "precision": ["exact", "fast"][int(rng.integers(2))]}
        style = ["7", "19", "3:0.5,12:0.5", "stain"][int(rng.integers(4))]
        expected = invocations(server.url, photo, style, params)
        assert expected.status_code == 200, expected.text[:300]
        row = expected.json()["predictions"][0]
        want = base64.b64decode(row["image"])
        query = {"style": style, **{k: str(v).lower() for k, v in params.items()}}
        raw = requests.post(f"{server.url}/stylize", params=query, data=photo,
                            headers={"Content-Type": mime}, timeout=300)
        multi = requests.post(f"{server.url}/stylize", params=query, timeout=300,
                              files={"image": ("photo", photo, "application/octet-stream")})
        for answer in (raw, multi):
            assert answer.status_code == 200, f"{name}: {answer.text[:300]}"
            assert answer.content == want, f"{name} {params}: raw route bytes differ"
            assert answer.headers["Content-Type"] == f"image/{params['format']}"
            assert answer.headers["Stylize-Output-Sha256"] == hashlib.sha256(want).hexdigest()
            assert answer.headers["Stylize-Style"] == row["style"]
            assert answer.headers["Stylize-Precision"] == row["precision"]
            assert answer.headers["Stylize-Model-Fingerprint"] == row["model"]
            assert answer.headers["Stylize-Model-Version"] == registry.version
            assert (int(answer.headers["Stylize-Width"]), int(answer.headers["Stylize-Height"])) == (
                row["width"], row["height"]) == decode_rgb(answer.content).shape[1::-1]
        wire = len(json.dumps({"dataframe_split": {"columns": ["image", "style"], "data": [
            [base64.b64encode(photo).decode(), style]]}, "params": params}))
        sizes.append((name, len(photo) + len(raw.content), wire + len(expected.content)))
    for name, raw_bytes, json_bytes in sizes:
        report(request, f"{name}: wire bytes raw {raw_bytes} vs JSON {json_bytes} "
                        f"({raw_bytes / json_bytes:.2f}x)")
    assert all(raw_bytes < json_bytes for _, raw_bytes, json_bytes in sizes)


@pytest.mark.integration
def test_raw_route_takes_a_painting_as_a_multipart_field(server, photos) -> None:
    painting = encode(sample_painting("immunohistochemistry"))
    expected = invocations(server.url, photos["chelsea"], None, {"max_size": 256}, painting)
    assert expected.status_code == 200, expected.text[:300]
    answer = requests.post(f"{server.url}/stylize", params={"max_size": "256"}, timeout=300,
                           files={"image": ("photo.jpg", photos["chelsea"], "image/jpeg"),
                                  "style_image": ("painting.png", painting, "image/png")})
    assert answer.status_code == 200, answer.text[:300]
    assert answer.content == base64.b64decode(expected.json()["predictions"][0]["image"])
    assert answer.headers["Stylize-Style"].startswith("painting:")


@pytest.mark.integration
def test_raw_route_errors_are_the_4xx_json_of_invocations(server, photos) -> None:
    """Each bad request: 400 with MLflow's JSON error naming the problem; the server serves on."""
    good = photos["chelsea"]
    bad_photo = good[: len(good) // 2]
    cases = [
        ({"style": "7"}, bad_photo, "image/jpeg", "truncated"),
        ({"style": "7"}, b"hello, I am text", "image/jpeg", "not a JPEG/PNG/WebP image"),
        ({"style": "7"}, b"", "image/png", "empty"),
        ({"style": "no-such-style"}, good, "image/jpeg", "no-such-style"),
        ({"style": "7", "strength": "2"}, good, "image/jpeg", "param strength=2.0 must be in 0..1"),
        ({"style": "7", "max_sise": "5"}, good, "image/jpeg", "unknown query parameter(s) ['max_sise']"),
        ({}, good, "image/jpeg", "query parameter 'style' is missing"),
        ({"style": "7"}, good, "text/plain", "Content-Type 'text/plain' is not a photo"),
    ]
    for query, body, mime, message in cases:
        answer = requests.post(f"{server.url}/stylize", params=query, data=body,
                               headers={"Content-Type": mime}, timeout=60)
        assert answer.status_code == 400, (query, mime, answer.text[:300])
        error = answer.json()
        assert error["error_code"] == "INVALID_PARAMETER_VALUE", error
        assert message in error["message"], (message, error["message"])
    no_field = requests.post(f"{server.url}/stylize", params={"style": "7"}, timeout=60,
                             files={"photo": ("p.jpg", good, "image/jpeg")})
    assert no_field.status_code == 400 and "no field 'image'" in no_field.json()["message"]
    # The same bad photo through /invocations: the same error code and reason.
    via_json = invocations(server.url, bad_photo, "7", {})
    assert via_json.status_code == 400 and via_json.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert "truncated" in via_json.json()["message"]
    ok = requests.post(f"{server.url}/stylize?style=7&max_size=64", data=good,
                       headers={"Content-Type": "image/jpeg"}, timeout=60)
    assert ok.status_code == 200 and decode_rgb(ok.content).shape[:2] == (43, 64)


@pytest.mark.integration
def test_metrics_count_what_the_clients_did(server, registry, photos) -> None:
    before = metrics(server.url)
    painting = encode(sample_painting("immunohistochemistry")[:300, :300])
    sent = {"/stylize": [0, 0], "/invocations": [0, 0]}  # [200s, 400s]
    for _ in range(3):
        ok = requests.post(f"{server.url}/stylize?style=7&max_size=300&precision=exact",
                           data=photos["coffee"], headers={"Content-Type": "image/jpeg"}, timeout=60)
        assert ok.status_code == 200
        sent["/stylize"][0] += 1
        bad = requests.post(f"{server.url}/stylize?style=7", data=b"nope",
                            headers={"Content-Type": "image/jpeg"}, timeout=60)
        assert bad.status_code == 400
        sent["/stylize"][1] += 1
        with_painting = invocations(server.url, photos["astronaut"], None,
                                    {"max_size": 200, "precision": "exact"}, painting)
        assert with_painting.status_code == 200, with_painting.text[:300]
        sent["/invocations"][0] += 1
    after = metrics(server.url)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    for route, (oks, bads) in sent.items():
        assert delta("stylize_requests_total", route=route, status="200") == oks
        assert delta("stylize_requests_total", route=route, status="400") == bads
    # What ran is in the latency histogram's labels: kind, precision (exact is fp32), size.
    assert delta("stylize_request_duration_seconds_count", route="/stylize", kind="styles26",
                 precision="fp32", size="512") == 3
    assert delta("stylize_request_duration_seconds_count", route="/invocations", kind="painting",
                 precision="fp32", size="256") == 3
    # One painting three times: computed once, then cached.
    assert delta("stylize_style_vector_cache_misses_total") == 1
    assert delta("stylize_style_vector_cache_hits_total") == 2
    assert value(after, "stylize_photos_running") == value(after, "stylize_photos_waiting") == 0
    assert value(after, "stylize_ready") == 1
    info = [dict(labels) for (name, labels) in after if name == "stylize_model_info"]
    assert info == [{"name": "style-transfer", "version": registry.version,
                     "fingerprint": info[0]["fingerprint"]}]
    assert len(info[0]["fingerprint"]) == 64
    # New sizes were compiled (300x200 and 200x200 are not among the warmed ones), with seconds.
    assert delta("stylize_static_compiles_total") >= 2
    assert delta("stylize_static_compile_seconds_total") > 0


def service_command(model_uri: str, port: int, workers: int = 1) -> list[str]:
    from neuralstyle.run.serving import serve_command

    return serve_command(model_uri, port, 300, workers, STYLIZE)


def jpeg_of(name: str, width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(sample_rgb(name)).resize((width, height)).save(out, "JPEG", quality=90)
    return out.getvalue()


@pytest.mark.integration
def test_ready_after_the_warm_up_then_sigterm_drains_what_is_in_flight(registry, request) -> None:
    """One server's life: /ping (alive) answers before /ready (warmed); a first request at a
    warmed size pays no static compile; SIGTERM with six requests in flight answers all six,
    refuses new connections at once, and exits 0."""
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": registry.tracking_uri,
           "MLFLOW_REGISTRY_URI": registry.tracking_uri}
    process = subprocess.Popen(
        service_command(registry.model_uri, port), env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    seen: list[tuple[float, int, int]] = []
    try:
        started = time.monotonic()
        while time.monotonic() - started < 180:
            assert process.poll() is None, "the server exited"
            alive, ready = status_of(f"{url}/ping"), status_of(f"{url}/ready")
            seen.append((time.monotonic() - started, alive, ready))
            if ready == 200:
                break
            time.sleep(0.1)
        assert seen[-1][2] == 200, f"never ready: {seen[-5:]}"
        first_alive = next(t for t, alive, _ in seen if alive == 200)
        report(request, f"alive after {first_alive:.1f} s, ready after {seen[-1][0]:.1f} s "
                        f"(warm-up of {service.DEFAULT_WARM_SIZES})")
        assert [s for s in seen if s[1] == 200 and s[2] == 503], (
            "no moment where the server was alive but not yet ready")
        compiles = value(metrics(url), "stylize_static_compiles_total")
        assert compiles >= 2 * len(service.warm_sizes())
        first = requests.post(f"{url}/stylize?style=11", data=jpeg_of("astronaut", 1024, 768),
                              headers={"Content-Type": "image/jpeg"}, timeout=120)
        assert first.status_code == 200
        assert value(metrics(url), "stylize_static_compiles_total") == compiles

        body = jpeg_of("rocket", 1024, 683)  # a warmed size: six photos of ~0.5 s, two at a time
        answers: list[requests.Response | Exception] = []

        def send() -> None:
            try:
                answers.append(requests.post(f"{url}/stylize?style=7&precision=exact", data=body,
                                             headers={"Content-Type": "image/jpeg"}, timeout=120))
            except requests.RequestException as exc:
                answers.append(exc)

        threads = [threading.Thread(target=send) for _ in range(6)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while value(metrics(url), "stylize_photos_running") < 2:  # two slots busy, four wait
            assert time.monotonic() < deadline, "requests never started"
            time.sleep(0.05)
        sent_at = time.monotonic()
        os.kill(process.pid, signal.SIGTERM)
        time.sleep(0.3)
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{url}/ping", timeout=5)
        for thread in threads:
            thread.join(timeout=120)
        code = process.wait(timeout=service.DEFAULT_DRAIN_S + 10)
        drained = time.monotonic() - sent_at
        report(request, f"SIGTERM with 6 requests in flight at 1024x683: "
                        f"{[getattr(a, 'status_code', a) for a in answers]}, exit {code} after "
                        f"{drained:.1f} s")
        assert [getattr(a, "status_code", a) for a in answers] == [200] * 6
        assert all(decode_rgb(a.content).shape == (683, 1024, 3) for a in answers)
        assert code == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.mark.integration
def test_16_keepalive_clients_over_both_routes_get_no_5xx(server, request) -> None:
    photos = photo_jpegs()
    bodies = [*request_bodies(photos), *raw_bodies(photos)]
    result = run_load(server.url, clients=CLIENTS, seconds=10, bodies=bodies,
                      rss=server.rss_bytes)
    report(request, f"both routes, metrics on: {result.summary()}")
    assert_served_everyone(result)
    samples = metrics(server.url)
    assert value(samples, "stylize_requests_in_flight", route="/stylize") == 0
    for route in ("/stylize", "/invocations"):  # precision: bf16 or fp32, as this CPU allows
        assert sum(v for (name, labels), v in samples.items()
                   if name == "stylize_request_duration_seconds_count"
                   and ("route", route) in labels and ("size", "512") in labels) > 0, route


@pytest.mark.integration
def test_prometheus_scrapes_a_two_worker_server_under_load(registry, request) -> None:
    """Two uvicorn workers (prometheus-client's multiprocess mode) scraped by a real Prometheus."""
    with running_server(registry.model_uri, tracking_uri=registry.tracking_uri, server=STYLIZE,
                        workers=2) as srv:
        target = srv.url.removeprefix("http://")
        # Scraped over one kept-alive connection (one worker, as Prometheus does), both workers
        # come to report ready once they are warmed, without a request reaching the other one.
        with requests.Session() as one_connection:
            deadline, ready_value = time.monotonic() + 180, 0.0
            while ready_value != 1 and time.monotonic() < deadline:
                ready_value = value(metrics(srv.url, one_connection), "stylize_ready")
                time.sleep(0.5)
        assert ready_value == 1, "stylize_ready stayed 0 on a kept-alive scrape of two workers"
        photos = photo_jpegs(256)
        with prometheus([target]) as prom:
            scrape_while_loaded(prom, target, [*request_bodies(photos), *raw_bodies(photos)],
                                lambda line: report(request, line))
            info = promql(prom, f'stylize_model_info{{instance="{target}"}}')
            assert info and info[0]["metric"]["version"] == registry.version
            ready = promql(prom, f'stylize_ready{{instance="{target}"}}')
            assert float(ready[0]["value"][1]) == 1
