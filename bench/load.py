"""Many plain keep-alive HTTP clients at once against the served model, as shipped.

    python bench/load.py                                   # make serve's settings; temp registry
    python bench/load.py --container                       # and the serving image through nginx
    python bench/load.py --tracking-uri sqlite:///mlflow.db --clients 16 --seconds 20 --runs 3

Each client is one thread with its own ``requests.Session`` (one keep-alive connection, no
retries), posting one 512 px photo per request back to back; every fifth photo is bad (a
truncated JPEG) and must be answered 400. The server is started with exactly the settings
``make serve`` uses (``neuralstyle.run.serving.serve_model``), the container with the serving image's.
Reported per target and run: photos/s (200 answers per second of wall time), p50/p95 latency of
the 200s, every status seen, peak RSS of the server's processes (sampled every 0.25 s).
Tests reuse :func:`run_load` (tests/run/test_load.py); this script writes bench/results/load.md.
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import io
import json
import os
import shlex
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script from anywhere

DEFAULT_OUTPUT = REPO / "bench" / "results" / "load.md"
PHOTO_SIZE = 512
BAD_EVERY = 5  # one bad photo in five
RSS_INTERVAL_S = 0.25
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Answer:
    """One request as the client saw it: status (0 = no HTTP answer), seconds, what was sent."""

    status: int
    seconds: float
    bad_photo: bool
    retry_after: str | None
    error: str | None = None


@dataclass
class LoadResult:
    """Every answer of one load run, the wall time and the server's peak RSS."""

    clients: int
    wall_s: float
    answers: list[Answer] = field(default_factory=list)
    peak_rss_bytes: int = 0
    load_average: float = 0.0  # 1-minute load average of this machine when the run started

    @property
    def statuses(self) -> dict[str, int]:
        """Count per status, ``"no answer"`` for connection errors and timeouts."""
        counts = collections.Counter(str(a.status) if a.status else "no answer" for a in self.answers)
        return dict(sorted(counts.items()))

    @property
    def ok(self) -> list[Answer]:
        return [a for a in self.answers if a.status == 200]

    @property
    def photos_per_s(self) -> float:
        return len(self.ok) / self.wall_s if self.wall_s else 0.0

    def percentile(self, q: float) -> float:
        """Latency of the 200 answers at quantile ``q`` (0..1), in seconds."""
        seconds = sorted(a.seconds for a in self.ok)
        if not seconds:
            return float("nan")
        return seconds[min(len(seconds) - 1, int(q * len(seconds)))]

    def summary(self) -> str:
        """One line with every figure, for test output and the report."""
        return (f"{self.clients} clients, {len(self.answers)} requests in {self.wall_s:.1f} s: "
                f"{self.photos_per_s:.1f} photos/s, p50 {self.percentile(0.5):.2f} s, "
                f"p95 {self.percentile(0.95):.2f} s, statuses {self.statuses}, "
                + (f"peak RSS {self.peak_rss_bytes / 1e6:.0f} MB" if self.peak_rss_bytes
                   else "RSS not sampled"))


def photo_jpegs(size: int = PHOTO_SIZE) -> list[bytes]:
    """The bundled sample photos with the longest side scaled to ``size``, JPEG quality 90."""
    from PIL import Image

    from neuralstyle.builder.samples import SAMPLES, sample_rgb

    photos = []
    for name in SAMPLES:
        img = Image.fromarray(sample_rgb(name))
        scale = size / max(img.size)
        img = img.resize((round(img.width * scale), round(img.height * scale)),
                         Image.Resampling.LANCZOS)
        out = io.BytesIO()
        img.save(out, "JPEG", quality=90)
        photos.append(out.getvalue())
    return photos


def request_bodies(photos: list[bytes], bad_every: int = BAD_EVERY) -> list[tuple[bytes, bool]]:
    """JSON bodies, one in ``bad_every`` a truncated JPEG; ``(body, is_bad)`` in sending order."""
    bodies = []
    for i in range(len(photos) * bad_every):
        photo = photos[i % len(photos)]
        bad = i % bad_every == bad_every - 1
        data = photo[: len(photo) // 2] if bad else photo
        body = {"dataframe_split": {"columns": ["image", "style"],
                                    "data": [[base64.b64encode(data).decode("ascii"), "7"]]}}
        bodies.append((json.dumps(body).encode(), bad))
    return bodies


def raw_bodies(photos: list[bytes], bad_every: int = BAD_EVERY,
               style: str = "7") -> list[tuple[bytes, bool, str, str]]:
    """The same photos for the raw route (``/stylize?style=7``, the JPEG as the body):
    ``(body, is_bad, path, content type)``, one in ``bad_every`` truncated."""
    bodies = []
    for i in range(len(photos) * bad_every):
        photo = photos[i % len(photos)]
        bad = i % bad_every == bad_every - 1
        bodies.append((photo[: len(photo) // 2] if bad else photo, bad, f"/stylize?style={style}",
                       "image/jpeg"))
    return bodies


def _client(url: str, bodies: list[tuple], offset: int, deadline: float,
            answers: list[Answer], lock: threading.Lock) -> None:
    """One keep-alive client posting back to back until ``deadline``; requests never retries.

    A body is ``(bytes, is_bad)`` for ``/invocations`` (JSON), or ``(bytes, is_bad, path,
    content type)``."""
    session = requests.Session()  # HTTPAdapter's default: max_retries=0
    i = offset
    try:
        while time.monotonic() < deadline:
            body, bad, *where = bodies[i % len(bodies)]
            path, content_type = where or ("/invocations", "application/json")
            i += 1
            started = time.perf_counter()
            try:
                response = session.post(f"{url}{path}", data=body,
                                        headers={"Content-Type": content_type},
                                        timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S))
                answer = Answer(response.status_code, time.perf_counter() - started, bad,
                                response.headers.get("Retry-After"))
            except requests.RequestException as exc:
                answer = Answer(0, time.perf_counter() - started, bad, None,
                                f"{type(exc).__name__}: {exc}")
            with lock:
                answers.append(answer)
    finally:
        session.close()


def run_load(url: str, *, clients: int = 16, seconds: float = 20.0,
             bodies: list[tuple] | None = None,
             rss: Callable[[], int] | None = None) -> LoadResult:
    """``clients`` threads post to ``url`` for ``seconds``; returns every answer and peak RSS.

    Clients stop starting requests at the deadline and finish the one in flight (at most
    ``READ_TIMEOUT_S`` more). ``rss`` (bytes of the server's processes) is sampled meanwhile.
    """
    bodies = bodies or request_bodies(photo_jpegs())
    answers: list[Answer] = []
    lock = threading.Lock()
    done = threading.Event()
    peak = [rss() if rss else 0]

    def sample_rss() -> None:
        while not done.wait(RSS_INTERVAL_S):
            peak[0] = max(peak[0], rss())

    sampler = threading.Thread(target=sample_rss, daemon=True) if rss else None
    if sampler:
        sampler.start()
    load_average = os.getloadavg()[0]
    started = time.monotonic()
    deadline = started + seconds
    threads = [threading.Thread(target=_client, args=(url, bodies, i * 7, deadline, answers, lock),
                                daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=seconds + READ_TIMEOUT_S + CONNECT_TIMEOUT_S + 5)
    wall = time.monotonic() - started
    done.set()
    if sampler:
        sampler.join()
        peak[0] = max(peak[0], rss())
    return LoadResult(clients, wall, answers, peak[0], load_average)


def container_rss(container) -> int:
    """Resident memory of every process in a container (host pids from ``docker top``)."""
    from neuralstyle.run.serving import rss_bytes

    try:
        top = container.top(ps_args="-eo pid")
    except Exception:  # the container is gone
        return 0
    return sum(rss_bytes(int(row[0])) for row in top.get("Processes") or [])


# --- the benchmark --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """CLI flags; every default is stated in its help."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=16,
                        help="concurrent keep-alive clients (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=20.0,
                        help="how long the clients send, per run (default: %(default)s)")
    parser.add_argument("--runs", type=int, default=3,
                        help="runs per target; the report gives each and their median "
                             "(default: %(default)s)")
    parser.add_argument("--container", action="store_true",
                        help="also load the serving image through its nginx (builds it once, "
                             "minutes; needs a Docker engine) (default: off)")
    parser.add_argument("--tracking-uri", default=None,
                        help="registry holding --model-uri (default: package this checkout into "
                             "a temporary sqlite registry, ~30 s)")
    parser.add_argument("--model-uri", default=None,
                        help="model to serve (default: models:/style-transfer@champion)")
    parser.add_argument("--output", default=str(DEFAULT_OUTPUT),
                        help="Markdown report (default: bench/results/load.md)")
    return parser


@contextlib.contextmanager
def _serve_target(model_uri: str, tracking_uri: str) -> Iterator[tuple[str, Callable[[], int]]]:
    """``make serve``'s server (``python -m neuralstyle.run.server``, MLflow's scoring app with
    /metrics, /stylize and /ready) with its settings: its URL and its process group's RSS."""
    from neuralstyle.run.serving import STYLIZE, running_server

    with running_server(model_uri, tracking_uri=tracking_uri, server=STYLIZE) as server:
        yield server.url, server.rss_bytes


@contextlib.contextmanager
def _container_target(model_uri: str, tracking_uri: str) -> Iterator[tuple[str, Callable[[], int]]]:
    """The serving image run as the pipeline's docker executor runs it: URL and container RSS."""
    from neuralstyle.run import container as containers

    client = containers.docker_client()
    with containers.model_container(model_uri, tracking_uri=tracking_uri, client=client) as url:
        port = url.rsplit(":", 1)[1]
        running = [c for c in client.containers.list(filters={"label": containers.LABEL})
                   if any(b and b[0]["HostPort"] == port for b in c.ports.values())]
        yield url, (lambda: container_rss(running[0])) if running else (lambda: 0)


def report(rows: list[tuple[str, list[LoadResult]]], argv: list[str], machine: dict[str, str],
           settings: str) -> str:
    """The Markdown report: machine, command, one line per run, the medians."""
    lines = ["# Under load: plain keep-alive clients against the served model", "",
             f"Command: `{shlex.join(['python', 'bench/load.py', *argv])}`", "",
             "Each client is a thread with its own `requests.Session` (one keep-alive connection, "
             "no retries) posting one 512 px sample photo (JPEG, style 7, default params) after "
             "another; every fifth photo is a truncated JPEG that must be answered 400. "
             "photos/s counts 200 answers per second of wall time; p50/p95 are over the 200s; "
             "peak RSS is the server's processes (the whole `make serve` process group, "
             "or every process in the container), sampled every 0.25 s.", "",
             settings, "", "| Machine | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in machine.items()]
    lines += ["", "| Target | run | photos/s | p50 (s) | p95 (s) | statuses | peak RSS (MB) | "
              "load avg at start |", "|---|---|---|---|---|---|---|---|"]
    for name, results in rows:
        for i, r in enumerate(results, 1):
            statuses = ", ".join(f"{k}: {v}" for k, v in r.statuses.items())
            lines.append(f"| {name} | {i} | {r.photos_per_s:.1f} | {r.percentile(0.5):.2f} | "
                         f"{r.percentile(0.95):.2f} | {statuses} | {r.peak_rss_bytes / 1e6:.0f} | "
                         f"{r.load_average:.1f} |")
        lines.append(
            f"| **{name}** | median | {statistics.median(r.photos_per_s for r in results):.1f} | "
            f"{statistics.median(r.percentile(0.5) for r in results):.2f} | "
            f"{statistics.median(r.percentile(0.95) for r in results):.2f} | | "
            f"{statistics.median(r.peak_rss_bytes for r in results) / 1e6:.0f} | |")
    lines += ["", "These machines are shared: a load average near or above nproc means other work "
              "took CPU time during the run; compare targets within one run of this script, not "
              "with another machine's figures.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Load ``make serve``'s server (and the container), write the report."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    from bench.serve_latency import machine, registry
    from neuralstyle import config
    from neuralstyle.containers import images
    from neuralstyle.run import serving

    model_uri = args.model_uri or config.DEFAULT_MODEL_URI
    bodies = request_bodies(photo_jpegs())
    targets: list[tuple[str, Callable]] = [("make serve (neuralstyle.run.server)", _serve_target)]
    if args.container:
        targets.append(("serving container (nginx)", _container_target))
    rows = []
    with registry(args.tracking_uri) as tracking_uri:
        for name, target in targets:
            results = []
            with target(model_uri, tracking_uri) as (url, rss):
                for run in range(args.runs):
                    result = run_load(url, clients=args.clients, seconds=args.seconds,
                                      bodies=bodies, rss=rss)
                    print(f"{name} run {run + 1}: {result.summary()}", flush=True)
                    results.append(result)
            rows.append((name, results))
    env = serving.serve_env(None, serving.REQUEST_TIMEOUT_S)
    settings = ("Settings: `make serve` / `serving.serve_model`: "
                + ", ".join(f"`{k}={env[k]}`" for k in serving.LIMIT_VARIABLES)
                + "; container: " + ", ".join(f"`{k}={v}`" for k, v in images.SERVING_ENV.items())
                + " and docker/nginx.conf (docs/serving.md, \"Under load\").")
    text = report(rows, argv, machine(), settings)
    Path(args.output).write_text(text)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
