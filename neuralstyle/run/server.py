"""The model server: MLflow's own scoring app, plus what running it as a service needs.

    python -m neuralstyle.run.server -m models:/style-transfer@champion -H 127.0.0.1 -p 5001

builds the app ``mlflow models serve`` runs (``mlflow.pyfunc.scoring_server.init(model)``: ``/ping``,
``/health``, ``/version``, ``/invocations``, untouched) and adds around it, never inside it:

* ``GET /metrics``: Prometheus text (``prometheus-client``; its multiprocess mode with ``--workers`` > 1);
* ``POST /stylize``: the photo as the body (``image/jpeg|png|webp``) or a multipart field ``image``,
  the request params as a query string (``?style=7&max_size=512&format=png``), the image bytes back
  with the lineage in ``Stylize-*`` headers; errors are ``/invocations``' 4xx JSON;
* ``GET /ready``: 503 until the model is loaded *and warmed* (the common photo sizes run once),
  then 200; ``/ping`` stays the liveness check (the process answers);
* SIGTERM drains: uvicorn stops accepting, finishes the requests in flight (at most
  ``STYLIZE_DRAIN_SECONDS``), exits 0. With ``--front-nginx CONF`` (the serving image's entrypoint)
  nginx runs in front and drains first (SIGQUIT), then the server.

It runs uvicorn's own command line, so the ``UVICORN_*`` variables docs/serving.md describes apply as
they do to ``mlflow models serve``. Only ``neuralstyle.model`` (which ships with every model) and
MLflow, uvicorn and prometheus-client are imported: the serving image copies this file beside the
model's own code. docs/serving.md, "Running it as a service", says what each piece means.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import io
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

log = logging.getLogger(__name__)

MODULE = "neuralstyle.run.server"  # by name: run as `python -m`, this file's __name__ is __main__
MODEL_URI_ENV = "STYLIZE_MODEL_URI"  # set by main() for uvicorn's workers (each loads the model)
METRICS_ENV = "STYLIZE_METRICS"  # "0": no /metrics and no metrics middleware (the bench's "off")
WARM_SIZES_ENV = "STYLIZE_WARM_SIZES"  # "1024x768,768x1024" (width x height); "" warms nothing
DRAIN_ENV = "STYLIZE_DRAIN_SECONDS"  # how long SIGTERM waits for requests in flight
MODEL_NAME_ENV = "STYLIZE_MODEL_NAME"  # for /metrics and the raw route's headers
MODEL_VERSION_ENV = "STYLIZE_MODEL_VERSION"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client's own; main() sets it for workers > 1
SYNC_INTERVAL_S = 1.0  # how stale another worker's gauges may be in a multiprocess scrape
# Photo sizes a first user request would otherwise pay a static compile for (0.1-0.2 s each,
# per precision): the longest side at the default max_size, landscape and portrait 4:3 and 3:2
# (bench/results/serve_raw.md measures what a first request costs with and without).
DEFAULT_WARM_SIZES = "1024x768,768x1024,1024x683"
# Above the request timeout would let one slow request hold a rolling update for 5 minutes; a
# request at max_size=1024 takes ~0.5 s, a queue of 32 of them ~16 s (docs/serving.md).
DEFAULT_DRAIN_S = 30
# Every variable the server, its model, MLflow's app or uvicorn read (deploy/kubernetes sets only
# these; tests/containers/test_kubernetes.py checks that).
READ_ENV = (
    "MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT", "UVICORN_LIMIT_CONCURRENCY", "UVICORN_HEADERS",
    "MLFLOW_MODELS_WORKERS", "STYLIZE_PARALLEL_PHOTOS", "STYLIZE_THREADS", "STYLIZE_CACHE_DIR",
    "STYLIZE_FAST_BF16", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", METRICS_ENV,
    WARM_SIZES_ENV, DRAIN_ENV, MODEL_NAME_ENV, MODEL_VERSION_ENV, MULTIPROC_ENV,
)

RAW_ROUTE = "/stylize"
READY_ROUTE = "/ready"
METRICS_ROUTE = "/metrics"
ROUTES = ("/invocations", RAW_ROUTE, "/ping", "/health", "/version", READY_ROUTE, METRICS_ROUTE)
STYLIZE_ROUTES = ("/invocations", RAW_ROUTE)
IMAGE_TYPES = {"image/jpeg": "jpeg", "image/png": "png", "image/webp": "webp"}
FORMAT_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
SIZE_BUCKETS = (256, 512, 1024, 2048)  # the longest side of the result, rounded up


# --- the app ------------------------------------------------------------------------------


def env_flag(name: str, default: bool = True) -> bool:
    """A yes/no environment variable (``0``/``false``/``no``/``off`` is no)."""
    value = os.environ.get(name, "").strip().lower()
    return default if not value else value not in ("0", "false", "no", "off")


def warm_sizes(text: str | None = None) -> list[tuple[int, int]]:
    """``STYLIZE_WARM_SIZES`` as (width, height) pairs; a clear error names a bad entry."""
    text = os.environ.get(WARM_SIZES_ENV, DEFAULT_WARM_SIZES) if text is None else text
    sizes = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        width, _, height = item.lower().partition("x")
        if not (width.isdigit() and height.isdigit()) or min(int(width), int(height)) < 32:
            raise ValueError(f"{WARM_SIZES_ENV}: {item!r} is not WIDTHxHEIGHT with sides >= 32 "
                             f"(e.g. {DEFAULT_WARM_SIZES})")
        sizes.append((int(width), int(height)))
    return sizes


def drain_seconds() -> int:
    """``STYLIZE_DRAIN_SECONDS`` (default 30): what SIGTERM waits for requests in flight."""
    text = os.environ.get(DRAIN_ENV, "").strip() or str(DEFAULT_DRAIN_S)
    if not text.isdigit():
        raise ValueError(f"{DRAIN_ENV}={text!r} must be a whole number of seconds")
    return int(text)


class Service:
    """What the server adds to MLflow's app: readiness, the raw route, metrics."""

    def __init__(self, model: Any, model_uri: str, metrics: bool) -> None:
        from neuralstyle.model import stats

        self.model = model
        self.stats = stats
        python_model = model.unwrap_python_model()
        self.engine = getattr(python_model, "engine", None)
        name, version = model_identity(model_uri)
        self.identity = {"name": name, "version": version,
                         "fingerprint": getattr(self.engine, "fingerprint", "")}
        self.warmed = threading.Event()
        self.warm_error: str | None = None
        self.metrics = Metrics(self) if metrics else None

    # -- readiness --

    def warm(self, sizes: list[tuple[int, int]]) -> None:
        """Run one photo of each size at both precisions, so no user request pays a compile."""
        import pandas as pd

        try:
            for width, height in sizes:
                photo = base64.b64encode(_gradient_jpeg(width, height)).decode("ascii")
                frame = pd.DataFrame({"image": [photo], "style": ["0"]})
                for precision in ("exact", "fast"):
                    self.model.predict(frame, params={"max_size": max(width, height),
                                                      "precision": precision})
        except Exception as exc:  # a broken model never becomes ready; /ready says why
            self.warm_error = f"{type(exc).__name__}: {exc}"
            log.exception("warm-up failed")
        else:
            self.warmed.set()
            log.info("ready: warmed %s", ", ".join(f"{w}x{h}" for w, h in sizes) or "nothing")
        finally:  # after warmed is set: stylize_ready is 1 before any scrape reaches this worker
            if self.metrics:
                self.metrics.sync()

    async def ready(self, request: Any) -> Any:
        from fastapi.responses import JSONResponse

        if self.warmed.is_set():
            return JSONResponse({"status": "ready", "model": self.identity})
        status = "failed" if self.warm_error else "warming"
        return JSONResponse({"status": status, "error": self.warm_error}, status_code=503,
                            headers={"Retry-After": "1"})

    async def wait_warm(self) -> None:
        """A request that arrives before /ready waits for the warm-up (never runs beside it)."""
        while not self.warmed.is_set() and self.warm_error is None:
            await asyncio.sleep(0.05)

    # -- the raw route --

    async def stylize(self, request: Any) -> Any:
        """POST /stylize: image bytes in (body or multipart ``image``), image bytes out."""
        from fastapi.responses import Response
        from mlflow.exceptions import MlflowException

        try:
            frame, params = await self._raw_request(request)
            result = await asyncio.to_thread(self.model.predict, frame, params)
        except MlflowException as exc:  # StyleInputError and MLflow's own checks: 4xx JSON
            return Response(exc.serialize_as_json(), status_code=exc.get_http_status_code(),
                            media_type="application/json")
        row = result.iloc[0]
        data = base64.b64decode(row["image"])
        fmt = params.get("format", "jpeg")
        headers = {
            "Stylize-Model-Name": self.identity["name"],
            "Stylize-Model-Version": self.identity["version"],
            "Stylize-Model-Fingerprint": str(row["model"]),
            "Stylize-Style": str(row["style"]),
            "Stylize-Precision": str(row["precision"]),
            "Stylize-Width": str(int(row["width"])), "Stylize-Height": str(int(row["height"])),
            "Stylize-Output-Sha256": hashlib.sha256(data).hexdigest(),
        }
        return Response(data, media_type=FORMAT_TYPES[fmt], headers=headers)

    async def _raw_request(self, request: Any) -> tuple[Any, dict[str, Any]]:
        """The one-row frame and typed params of a raw request, or a StyleInputError."""
        import pandas as pd

        from neuralstyle.model.contract import BY_NAME
        from neuralstyle.model.errors import StyleInputError

        query = parse_qsl(request.url.query, keep_blank_values=True)
        allowed = ("style", *BY_NAME)
        unknown = sorted({k for k, _ in query} - set(allowed))
        if unknown:
            raise StyleInputError(f"unknown query parameter(s) {unknown}: accepted are "
                                  f"{', '.join(allowed)}")
        given = dict(query)
        params = {k: BY_NAME[k].parse(v) for k, v in given.items() if k in BY_NAME}
        content_type = request.headers.get("content-type", "")
        mime = content_type.split(";")[0].strip().lower()
        body = await request.body()
        painting = None
        if mime in IMAGE_TYPES:
            photo = body
        elif mime == "multipart/form-data":
            fields = parse_multipart(body, content_type)
            if "image" not in fields:
                raise StyleInputError(f"multipart request has no field 'image' (got "
                                      f"{sorted(fields) or 'none'}): send the photo as -F image=@photo.jpg")
            photo, painting = fields["image"], fields.get("style_image")
        else:
            raise StyleInputError(
                f"Content-Type {content_type or '(none)'!r} is not a photo: send the photo's bytes "
                f"as {', '.join(IMAGE_TYPES)}, or multipart/form-data with a field 'image'")
        columns: dict[str, list[Any]] = {"image": [base64.b64encode(photo).decode("ascii")]}
        if painting is not None:
            columns["style_image"] = [base64.b64encode(painting).decode("ascii")]
            if given.get("style"):
                columns["style"] = [given["style"]]
        else:
            columns["style"] = [given.get("style", "")]
            if not columns["style"][0]:
                raise StyleInputError("query parameter 'style' is missing: e.g. ?style=7 "
                                      "(or send a painting as the multipart field style_image)")
        return pd.DataFrame(columns), params


def _gradient_jpeg(width: int, height: int) -> bytes:
    """A smooth synthetic photo (no bundled data needed): the warm-up's input."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1),
                    (x + y) * 255 // max(width + height - 2, 1)], axis=-1).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, "JPEG", quality=90)
    return out.getvalue()


def parse_multipart(body: bytes, content_type: str) -> dict[str, bytes]:
    """multipart/form-data fields by name (files and text alike, as bytes); StyleInputError if malformed."""
    from neuralstyle.model.errors import StyleInputError

    boundary = ""
    for part in content_type.split(";")[1:]:
        key, _, value = part.strip().partition("=")
        if key.lower() == "boundary":
            boundary = value.strip().strip('"')
    if not boundary:
        raise StyleInputError("multipart/form-data request without a boundary in its Content-Type")
    fields: dict[str, bytes] = {}
    for chunk in body.split(b"--" + boundary.encode("latin-1"))[1:]:
        if chunk.startswith(b"--"):
            break  # the closing boundary
        head, sep, content = chunk.partition(b"\r\n\r\n")
        if not sep:
            raise StyleInputError("malformed multipart/form-data body (a part has no blank line "
                                  "after its headers)")
        name = None
        for line in head.decode("latin-1").split("\r\n"):
            if line.lower().startswith("content-disposition:"):
                for item in line.split(";")[1:]:
                    key, _, value = item.strip().partition("=")
                    if key.lower() == "name":
                        name = value.strip().strip('"')
        if name:
            fields[name] = content.removesuffix(b"\r\n")
    return fields


def model_identity(model_uri: str) -> tuple[str, str]:
    """(registered name, version) for /metrics and the raw route's headers.

    ``STYLIZE_MODEL_NAME``/``STYLIZE_MODEL_VERSION`` win (the serving image sets them: it has no
    registry); else they are read from a ``models:/`` URI and its registry; else empty.
    """
    name, version = os.environ.get(MODEL_NAME_ENV, ""), os.environ.get(MODEL_VERSION_ENV, "")
    if name or not model_uri.startswith("models:/"):
        return name, version
    ref = model_uri.removeprefix("models:/").strip("/")
    name, sep, alias = ref.partition("@")
    if not sep:
        name, _, alias = ref.partition("/")
    try:
        from mlflow import MlflowClient

        client = MlflowClient()
        version = (alias if alias.isdigit() else
                   client.get_model_version_by_alias(name, alias).version)
    except Exception as exc:  # a metric label is no reason to refuse to serve
        log.warning("cannot resolve the version of %s: %s", model_uri, exc)
        version = ""
    return name, str(version)


def create_app() -> Any:
    """uvicorn's factory: load the model (``STYLIZE_MODEL_URI``), wrap MLflow's app, start warming."""
    from mlflow.pyfunc import scoring_server

    model_uri = os.environ[MODEL_URI_ENV]
    model = scoring_server.load_model_with_mlflow_config(model_uri)
    app = scoring_server.init(model)  # exactly what `mlflow models serve` runs
    service = Service(model, model_uri, env_flag(METRICS_ENV))
    app.add_route(READY_ROUTE, service.ready, methods=["GET"])
    app.add_route(RAW_ROUTE, service.stylize, methods=["POST"])
    if service.metrics is not None:
        app.add_route(METRICS_ROUTE, service.metrics.expose, methods=["GET"])
        service.metrics.attach(app)
    app.add_middleware(WarmGate, service=service)  # outermost but metrics: early requests wait
    if service.metrics is not None:
        app.add_middleware(MetricsMiddleware, service=service)
    sizes = warm_sizes()
    app.router.on_startup.append(lambda: threading.Thread(
        target=service.warm, args=(sizes,), name="stylize-warm", daemon=True).start())
    app.state.stylize = service
    return app


class WarmGate:
    """ASGI middleware: a stylize request that comes before the warm-up ends waits for it."""

    def __init__(self, app: Any, service: Service) -> None:
        self.app, self.service = app, service

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http" and scope["path"] in STYLIZE_ROUTES:
            await self.service.wait_warm()
        await self.app(scope, receive, send)


# --- metrics ------------------------------------------------------------------------------


def size_bucket(longest_side: int) -> str:
    """The latency histogram's size label: the result's longest side, rounded up to a bucket."""
    for bucket in SIZE_BUCKETS:
        if longest_side <= bucket:
            return str(bucket)
    return f">{SIZE_BUCKETS[-1]}"


class Metrics:
    """The Prometheus metrics of one server process (multiprocess-safe when the env says so)."""

    def __init__(self, service: Service) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.service = service
        self.multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        self.registry = CollectorRegistry()  # not the global one: one app per process
        r = self.registry
        self.requests = Counter("stylize_requests", "HTTP requests answered by the model server, "
                                "by route and status", ["route", "status"], registry=r)
        self.latency = Histogram("stylize_request_duration_seconds", "Seconds from request to "
                                 "answer of stylize requests answered 200, by kind of style, "
                                 "precision that ran and result size (longest side, rounded up)",
                                 ["route", "kind", "precision", "size"], buckets=LATENCY_BUCKETS,
                                 registry=r)
        self.in_flight = Gauge("stylize_requests_in_flight", "Requests being answered now, by "
                               "route", ["route"], registry=r, multiprocess_mode="livesum")
        self.running = Gauge("stylize_photos_running", "Photos being stylized now (holding one "
                             "of STYLIZE_PARALLEL_PHOTOS slots)", registry=r,
                             multiprocess_mode="livesum")
        self.waiting = Gauge("stylize_photos_waiting", "Photos waiting for a slot", registry=r,
                             multiprocess_mode="livesum")
        self.refused = Counter("stylize_requests_refused", "Requests uvicorn refused with 503 "
                               "(UVICORN_LIMIT_CONCURRENCY reached); nginx's own 503s are in its log",
                               registry=r)
        self.compiles = Counter("stylize_static_compiles", "Static compiles of a photo size",
                                registry=r)
        self.compile_seconds = Counter("stylize_static_compile_seconds", "Seconds spent in static "
                                       "compiles", registry=r)
        self.cache_hits = Counter("stylize_style_vector_cache_hits", "Paintings whose style "
                                  "vector was cached", registry=r)
        self.cache_misses = Counter("stylize_style_vector_cache_misses", "Paintings whose style "
                                    "vector was computed", registry=r)
        self.ready = Gauge("stylize_ready", "1 once the model is loaded and warmed", registry=r,
                           multiprocess_mode="min")
        info = Gauge("stylize_model_info", "The served model (always 1)",
                     ["name", "version", "fingerprint"], registry=r, multiprocess_mode="max")
        info.labels(**service.identity).set(1)
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def attach(self, app: Any) -> None:
        """Count uvicorn's 503s (it answers them before any app code runs; its log says so)."""
        metrics = self

        class RefusalCounter(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                if str(record.msg).startswith("Exceeded concurrency limit"):
                    metrics.refused.inc()

        logging.getLogger("uvicorn.error").addHandler(RefusalCounter())
        if self.multiprocess:
            # A scrape reaches one worker and reads every worker's files: the others must keep
            # their own files current (photos running, compiles), not only when scraped.
            stop = threading.Event()

            def keep_synced() -> None:
                while not stop.wait(SYNC_INTERVAL_S):
                    self.sync()

            def mark_dead() -> None:
                from prometheus_client import multiprocess

                stop.set()
                multiprocess.mark_process_dead(os.getpid())

            app.router.on_startup.append(lambda: threading.Thread(
                target=keep_synced, name="stylize-metrics-sync", daemon=True).start())
            app.router.on_shutdown.append(mark_dead)

    def sync(self) -> None:
        """Copy the model's plain counters into the metrics (deltas since the last sync)."""
        counters = self.service.stats.COUNTERS.snapshot()
        cache = getattr(self.service.engine, "style_vectors", None)
        now = {"compiles": counters["static_compiles"],
               "compile_seconds": counters["static_compile_seconds"],
               "cache_hits": getattr(cache, "hits", 0), "cache_misses": getattr(cache, "misses", 0)}
        with self._lock:
            for key, value in now.items():
                delta = value - self._last.get(key, 0)
                if delta > 0:
                    getattr(self, key).inc(delta)
                self._last[key] = value
            self.running.set(counters["photos_running"])
            self.waiting.set(counters["photos_waiting"])
            self.ready.set(1 if self.service.warmed.is_set() else 0)

    def observe(self, route: str, status: int, seconds: float, rows: list[dict]) -> None:
        """Count one answered request; a 200 that stylized rows also goes in the histogram."""
        self.requests.labels(route, str(status)).inc()
        if status == 200 and rows:
            kinds = {row["kind"] for row in rows}
            precisions = {row["precision"] for row in rows}
            longest = max(max(row["width"], row["height"]) for row in rows)
            self.latency.labels(route, kinds.pop() if len(kinds) == 1 else "mixed",
                                precisions.pop() if len(precisions) == 1 else "mixed",
                                size_bucket(longest)).observe(seconds)

    async def expose(self, request: Any) -> Any:
        from fastapi.responses import Response
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        self.sync()
        registry = self.registry
        if self.multiprocess:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


class MetricsMiddleware:
    """ASGI middleware: route, status, latency and in-flight of every request."""

    def __init__(self, app: Any, service: Service) -> None:
        self.app, self.service = app, service
        self.metrics: Metrics = service.metrics  # type: ignore[assignment]

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = scope["path"] if scope["path"] in ROUTES else "other"
        status = [500]  # an exception that escapes every handler becomes uvicorn's 500

        async def send_status(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        rows: list[dict] = []
        token = self.service.stats.ROWS.set(rows)
        gauge = self.metrics.in_flight.labels(route)
        gauge.inc()
        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_status)
        finally:
            seconds = time.perf_counter() - started
            gauge.dec()
            self.service.stats.ROWS.reset(token)
            self.metrics.observe(route, status[0], seconds, rows)
            if route in STYLIZE_ROUTES:
                self.metrics.sync()


# --- the command line -------------------------------------------------------------------


def uvicorn_args(host: str, port: int, workers: int) -> list[str]:
    """uvicorn's own command line for our factory (``UVICORN_*`` variables still apply)."""
    return ["--factory", f"{MODULE}:create_app", "--host", host, "--port", str(port),
            "--workers", str(workers), "--timeout-graceful-shutdown", str(drain_seconds())]


def prepare_env(model_uri: str, workers: int, timeout_s: int | None) -> None:
    """The environment uvicorn's workers inherit: the model, the timeout, the metrics' folder."""
    os.environ[MODEL_URI_ENV] = model_uri
    if timeout_s is not None:
        os.environ["MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT"] = str(timeout_s)
    if workers > 1 and env_flag(METRICS_ENV):
        folder = os.environ.get(MULTIPROC_ENV) or tempfile.mkdtemp(prefix="stylize-metrics-")
        os.makedirs(folder, exist_ok=True)
        for stale in os.listdir(folder):  # prometheus-client: empty it before the workers start
            if stale.endswith(".db"):
                os.unlink(os.path.join(folder, stale))
        os.environ[MULTIPROC_ENV] = folder
    else:
        os.environ.pop(MULTIPROC_ENV, None)


def serve(host: str, port: int, workers: int) -> int:
    """Run uvicorn in this process (its exit status: 0 after a drained SIGTERM)."""
    from uvicorn.main import main as uvicorn_cli  # the click command `uvicorn` runs

    # uvicorn drains on SIGTERM, then raises the signal again under the handler it found, so the
    # process would die of it (status -15, what `mlflow models serve` does); found, this one
    # makes a completed drain exit 0, which is what a rolling update expects of a clean stop.
    signal.signal(signal.SIGTERM, _drained)
    try:
        uvicorn_cli.main(args=uvicorn_args(host, port, workers), prog_name="uvicorn",
                         standalone_mode=True)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def _drained(signum: int, frame: Any) -> None:
    raise SystemExit(0)


def serve_behind_nginx(nginx_conf: str, port: int, workers: int) -> int:
    """The serving image's PID 1: nginx in front of the server; SIGTERM drains both, in order.

    nginx gets SIGQUIT (its graceful stop: no new connections, in-flight requests finish), then,
    once it has exited, the server gets SIGTERM (uvicorn's graceful stop). Either exiting on its
    own stops the other; the exit status is 0 only after a drain.
    """
    os.makedirs("/var/log/nginx", exist_ok=True)
    for name, target in (("access.log", "/dev/stdout"), ("error.log", "/dev/stderr")):
        link = os.path.join("/var/log/nginx", name)
        with contextlib.suppress(OSError):
            os.unlink(link)
        with contextlib.suppress(OSError):
            os.symlink(target, link)
    server = subprocess.Popen([sys.executable, "-m", MODULE, "--model-uri",
                               os.environ[MODEL_URI_ENV], "--host", "127.0.0.1", "--port",
                               str(port), "--workers", str(workers)])
    nginx = subprocess.Popen([shutil.which("nginx") or "nginx", "-c", nginx_conf])
    draining = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: draining.set())
    signal.signal(signal.SIGINT, lambda *_: draining.set())
    while not draining.is_set():
        if server.poll() is not None or nginx.poll() is not None:
            break
        draining.wait(0.2)
    deadline = time.monotonic() + drain_seconds() + 5
    if draining.is_set():
        log.warning("SIGTERM: draining nginx, then the model server")
        with contextlib.suppress(ProcessLookupError):
            nginx.send_signal(signal.SIGQUIT)
        _wait(nginx, deadline)
        with contextlib.suppress(ProcessLookupError):
            server.send_signal(signal.SIGTERM)
        _wait(server, deadline)
        return 0 if server.returncode == 0 else 1
    for process in (nginx, server):  # one died: stop the other, fail
        if process.poll() is None:
            process.terminate()
            _wait(process, time.monotonic() + 10)
    return 1


def _wait(process: subprocess.Popen, deadline: float) -> None:
    """Wait for ``process`` until ``deadline``, then kill it."""
    try:
        process.wait(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def main(argv: list[str] | None = None) -> int:
    """Serve a registered model with /metrics, /stylize and /ready beside MLflow's routes."""
    parser = argparse.ArgumentParser(prog="python -m neuralstyle.run.server", description=main.__doc__)
    parser.add_argument("-m", "--model-uri", default=os.environ.get(MODEL_URI_ENV),
                        required=MODEL_URI_ENV not in os.environ,
                        help=f"model to serve (default: ${MODEL_URI_ENV})")
    parser.add_argument("-H", "--host", default="127.0.0.1",
                        help="address to listen on (default: %(default)s)")
    parser.add_argument("-p", "--port", type=int, default=5001, help="port (default: %(default)s)")
    parser.add_argument("-w", "--workers", type=int,
                        default=int(os.environ.get("MLFLOW_MODELS_WORKERS", "1")),
                        help="uvicorn worker processes, each with its own copy of the model "
                             "(default: $MLFLOW_MODELS_WORKERS, else 1)")
    parser.add_argument("-t", "--timeout", type=int, default=None,
                        help="seconds per request (default: $MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT, "
                             "else MLflow's 60)")
    parser.add_argument("--front-nginx", metavar="CONF", default=None,
                        help="run nginx -c CONF in front (the serving image; default: off)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    warm_sizes()  # a bad setting fails here, once, not in every worker
    prepare_env(args.model_uri, args.workers, args.timeout)
    if args.front_nginx:
        return serve_behind_nginx(args.front_nginx, args.port, args.workers)
    return serve(args.host, args.port, args.workers)


if __name__ == "__main__":
    sys.exit(main())
