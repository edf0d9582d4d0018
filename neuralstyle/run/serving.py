"""The one home for starting a model server: tests, the demo, the pipeline and the benchmark.

    with serve_model("models:/style-transfer@champion", tracking_uri="sqlite:///mlflow.db") as url:
        StyleServerClient(url).predict(frame)

It runs the same command a user types, in its own process group, with the limits below set on
purpose rather than inherited from whatever the caller's environment holds (docs/serving.md
explains each limit). Two servers, one contract: ``server="mlflow"`` (the default) runs
``mlflow models serve -m <uri> --env-manager local -h 127.0.0.1 -p <port>``; ``server="stylize"``
runs ``python -m neuralstyle.run.server`` (``make serve``, the stack, the serving image): MLflow's
same app plus /metrics, /stylize and /ready, started once it is ready (warmed), not only alive.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from neuralstyle import config
from neuralstyle.model.contract import DEFAULT_PARALLEL_PHOTOS, PARALLEL_PHOTOS_ENV

HOST = "127.0.0.1"
# MLflow's default is 60 s (mlflow/environment_variables.py, MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT).
# A 20 MB photo takes a few seconds and a batch of rows at max_size=2048 tens of seconds; 300 s
# matches StyleServerClient's read timeout so the client sees the server's 504, not its own.
REQUEST_TIMEOUT_S = 300
# The queue (docs/serving.md, "Under load"). uvicorn --limit-concurrency: once open connections
# (idle keep-alive ones too) or requests in flight reach it, uvicorn answers every new request
# 503. 32 lets 16+ keep-alive clients wait their turn instead of bouncing (8 turned away most
# requests of 8 such clients) and bounds the buffered bodies (~27 MB for a 20 MB photo).
LIMIT_CONCURRENCY = 32
# Sent on every response (uvicorn --header; MLflow's app cannot add headers to its 503s, nor can
# a model); clients heed Retry-After only on 503/429/3xx (RFC 9110 10.2.3). 5 s is uvicorn's
# --timeout-keep-alive: by then idle keep-alive connections have closed and left the count.
RETRY_AFTER_S = 5
# The variables serve_env sets on purpose; `make serve`, docs/serving.md and bench/load.py show
# the same values (tests/run/test_load.py checks).
LIMIT_VARIABLES = ("MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT", "UVICORN_LIMIT_CONCURRENCY",
                   "UVICORN_HEADERS", "STYLIZE_PARALLEL_PHOTOS", *config.SERVER_MALLOC_ENV)
READY_TIMEOUT_S = 180.0
# Which server: `mlflow models serve`, or neuralstyle.run.server (MLflow's app + our routes).
MLFLOW = "mlflow"
STYLIZE = "stylize"
READY_PATHS = {MLFLOW: "/ping", STYLIZE: "/ready"}
SERVER_NAMES = {MLFLOW: "mlflow models serve", STYLIZE: "python -m neuralstyle.run.server"}
STOP_GRACE_S = 10.0
LOG_TAIL_LINES = 30


class ServerStartError(RuntimeError):
    """``mlflow models serve`` exited or never answered ``/ping``; the message has its log tail."""


def free_port(host: str = HOST) -> int:
    """A TCP port nobody listens on right now (the OS picks it; a race is retried by the caller)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def serve_command(model_uri: str, port: int, timeout_s: int, workers: int,
                  server: str = MLFLOW) -> list[str]:
    """The server's command line, with the interpreter running this code."""
    if server == STYLIZE:
        return [sys.executable, "-m", "neuralstyle.run.server", "-m", model_uri, "-H", HOST,
                "-p", str(port), "--timeout", str(timeout_s), "--workers", str(workers)]
    if server != MLFLOW:
        raise ValueError(f"server {server!r} must be {MLFLOW!r} or {STYLIZE!r}")
    return [
        sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri,
        "--env-manager", "local", "-h", HOST, "-p", str(port),
        "--timeout", str(timeout_s), "--workers", str(workers),
    ]


def serve_env(
    tracking_uri: str | None, timeout_s: int, limit_concurrency: int = LIMIT_CONCURRENCY,
    parallel_photos: int = DEFAULT_PARALLEL_PHOTOS,
) -> dict[str, str]:
    """The server's environment: registry, limits, and ``uvicorn`` on PATH.

    An explicit ``tracking_uri`` is the registry too, so a ``MLFLOW_REGISTRY_URI`` left in the
    environment cannot send the server to another registry. MLflow starts the server as
    ``bash -c "exec uvicorn ..."``, so ``uvicorn`` must be on PATH even when the virtual
    environment is not activated; its own bin folder goes first.
    """
    env = dict(os.environ)
    env["MLFLOW_TRACKING_URI"] = config.tracking_uri(tracking_uri)
    if tracking_uri is not None:
        env["MLFLOW_REGISTRY_URI"] = tracking_uri
    env["MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT"] = str(timeout_s)
    # uvicorn's CLI reads UVICORN_<PARAMETER NAME> (click auto_envvar_prefix; --header's is
    # HEADERS, space-separated Name:Value pairs); MLflow passes the environment through.
    env["UVICORN_LIMIT_CONCURRENCY"] = str(limit_concurrency)
    env["UVICORN_HEADERS"] = f"Retry-After:{RETRY_AFTER_S}"
    env[PARALLEL_PHOTOS_ENV] = str(parallel_photos)
    for name, value in config.SERVER_MALLOC_ENV.items():  # the caller's own setting wins
        env.setdefault(name, value)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class Server:
    """A running model server's process group and where its log goes."""

    url: str
    process: subprocess.Popen
    log_path: Path

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines of the server's stdout+stderr, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def alive(self) -> bool:
        """True while the process we started has not exited."""
        return self.process.poll() is None

    def rss_bytes(self) -> int:
        """Resident memory of every process in the server's group (the CLI, uvicorn, workers)."""
        return sum(rss_bytes(pid) for pid in _group_pids(self.process.pid))

    def peak_rss_bytes(self) -> dict[int, int]:
        """Each live process's own peak resident memory (VmHWM, exact: not sampled), by pid."""
        return {pid: peak_rss_bytes(pid) for pid in _group_pids(self.process.pid)}

    def stop(self) -> None:
        """SIGTERM the whole group, SIGKILL it after a grace period; safe to call twice."""
        pgid = self.process.pid  # start_new_session=True: the leader's pid is the group id
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, sig)
            # The grace period is for the whole group: the mlflow CLI (the leader) dies at
            # once, uvicorn finishes in-flight requests first.
            deadline = time.monotonic() + STOP_GRACE_S
            while time.monotonic() < deadline:
                self.process.poll()  # reap the leader so it does not linger as a zombie
                if not _group_pids(pgid):
                    return
                time.sleep(0.1)


def _group_pids(pgid: int) -> list[int]:
    """Live pids whose process group is ``pgid`` (Linux /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid pgrp ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(entry.name))
    return pids


def rss_bytes(pid: int) -> int:
    """Resident set size of one process, 0 if it is gone (benchmarks read theirs)."""
    try:
        pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes(pid: int) -> int:
    """Peak resident set size (VmHWM) of one process, 0 if it is gone (benchmarks read theirs)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return 0
    found = [line.split()[1] for line in lines if line.startswith("VmHWM:")]
    return int(found[0]) * 1024 if found else 0


def start_server(
    model_uri: str = config.DEFAULT_MODEL_URI,
    *,
    port: int | None = None,
    tracking_uri: str | None = None,
    timeout_s: int = REQUEST_TIMEOUT_S,
    workers: int = 1,
    limit_concurrency: int = LIMIT_CONCURRENCY,
    parallel_photos: int = DEFAULT_PARALLEL_PHOTOS,
    ready_timeout_s: float = READY_TIMEOUT_S,
    server: str = MLFLOW,
) -> Server:
    """Start the server and return once ``/ping`` answers; the caller must ``stop()`` it.

    With ``port=None`` a free port is picked, and picked again (up to 3 tries) if another
    process takes it between the check and the bind.
    """
    attempts = 1 if port is not None else 3
    for attempt in range(attempts):
        chosen = port if port is not None else free_port()
        started = _launch(model_uri, chosen, tracking_uri, timeout_s, workers,
                          serve_env(tracking_uri, timeout_s, limit_concurrency, parallel_photos),
                          server)
        try:
            _wait_ready(started, model_uri, ready_timeout_s, server)
            return started
        except ServerStartError as exc:
            started.stop()
            port_taken = "address already in use" in str(exc).lower()
            if not port_taken or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def _launch(
    model_uri: str, port: int, tracking_uri: str | None, timeout_s: int, workers: int,
    env: dict[str, str], server: str = MLFLOW,
) -> Server:
    log = tempfile.NamedTemporaryFile(  # kept after a failed start: the error names it
        prefix=f"mlflow-serve-{port}-", suffix=".log", delete=False
    )
    with log:
        process = subprocess.Popen(
            serve_command(model_uri, port, timeout_s, workers, server),
            env=env,
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Server(f"http://{HOST}:{port}", process, Path(log.name))


def _wait_ready(server: Server, model_uri: str, ready_timeout_s: float, kind: str = MLFLOW) -> None:
    """Poll the ready path; fail fast with the log tail if the process dies, or after the deadline."""
    from neuralstyle.run.client import NotReady, wait_for_ping

    def exit_reason() -> str | None:
        return None if server.alive() else f"exited with status {server.process.returncode}"

    try:
        wait_for_ping(server.url, ready_timeout_s, exit_reason, path=READY_PATHS[kind])
    except NotReady as exc:
        raise ServerStartError(
            f"{SERVER_NAMES[kind]} -m {model_uri} {exc}; "
            f"log tail ({server.log_path}):\n{server.log_tail()}"
        ) from None


@contextlib.contextmanager
def running_server(model_uri: str = config.DEFAULT_MODEL_URI, **kwargs) -> Iterator[Server]:
    """``start_server`` as a context manager: the group is always stopped, the log removed."""
    server = start_server(model_uri, **kwargs)
    try:
        yield server
    finally:
        server.stop()
        with contextlib.suppress(OSError):
            server.log_path.unlink()


@contextlib.contextmanager
def serve_model(
    model_uri: str = config.DEFAULT_MODEL_URI,
    *,
    port: int | None = None,
    tracking_uri: str | None = None,
    timeout_s: int = REQUEST_TIMEOUT_S,
    workers: int = 1,
    limit_concurrency: int = LIMIT_CONCURRENCY,
    parallel_photos: int = DEFAULT_PARALLEL_PHOTOS,
    server: str = MLFLOW,
) -> Iterator[str]:
    """Serve ``model_uri`` on 127.0.0.1 and yield its base URL; always stops the server."""
    with running_server(
        model_uri, port=port, tracking_uri=tracking_uri, timeout_s=timeout_s, workers=workers,
        limit_concurrency=limit_concurrency, parallel_photos=parallel_photos, server=server,
    ) as server:
        yield server.url
