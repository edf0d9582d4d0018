"""The model server's raw-image route against base64 JSON, the cost of metrics, and of no warm-up.

    python bench/serve_raw.py                                  # packages this checkout, ~6 min
    python bench/serve_raw.py --tracking-uri sqlite:///mlflow.db --runs 15 --load-runs 3

Against one ``python -m neuralstyle.run.server`` (``make serve``'s settings), same photo, same
params, alternating the two routes request by request:

* bytes on the wire (request + answer) and latency, ``/stylize`` (JPEG body, JPEG back) against
  ``/invocations`` (the same JPEG as base64 in ``dataframe_split``), at 256 and 1024 px;
* the server's CPU seconds per request (its process's user + system time over the requests);
* metrics on against off: throughput of 16 keep-alive clients over both routes, two servers
  (``STYLIZE_METRICS=1`` and ``=0``) loaded in turn, alternating, ``--load-runs`` each;
* what a first request pays without the warm-up (``STYLIZE_WARM_SIZES=""``) at a common size.

Writes bench/results/serve_raw.md with the CPU, the command and the load average.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
import shlex
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DEFAULT_OUTPUT = REPO / "bench" / "results" / "serve_raw.md"
SIZES = (256, 1024)


def photo(side: int) -> bytes:
    """The bundled astronaut at ``side`` x ``side``, JPEG quality 90."""
    from PIL import Image

    from neuralstyle.builder.samples import sample_rgb

    out = io.BytesIO()
    Image.fromarray(sample_rgb("astronaut")).resize((side, side), Image.Resampling.LANCZOS).save(
        out, "JPEG", quality=90)
    return out.getvalue()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its threads (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def server(model_uri: str, tracking_uri: str, **env: str) -> Iterator:
    """``make serve``'s server with extra environment, ready (warmed unless told otherwise)."""
    from neuralstyle.run.serving import STYLIZE, running_server

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with running_server(model_uri, tracking_uri=tracking_uri, server=STYLIZE) as srv:
            yield srv
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def routes_compared(srv, side: int, runs: int) -> dict:
    """Alternate the two routes ``runs`` times each on one photo; wire bytes, latency, CPU."""
    data = photo(side)
    params = {"max_size": side, "format": "jpeg"}
    body = json.dumps({"dataframe_split": {"columns": ["image", "style"], "data": [
        [base64.b64encode(data).decode("ascii"), "7"]]}, "params": params}).encode()
    session = requests.Session()
    calls = {
        "raw": lambda: session.post(f"{srv.url}/stylize?style=7&max_size={side}&format=jpeg",
                                    data=data, headers={"Content-Type": "image/jpeg"}, timeout=120),
        "json": lambda: session.post(f"{srv.url}/invocations", data=body,
                                     headers={"Content-Type": "application/json"}, timeout=120),
    }
    for call in calls.values():  # this size's compile, and the connection
        assert call().status_code == 200
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    cpu: dict[str, float] = dict.fromkeys(calls, 0.0)
    wire: dict[str, int] = {}
    pid = srv.process.pid
    for _ in range(runs):
        for name, call in calls.items():
            before = cpu_seconds(pid)
            started = time.perf_counter()
            answer = call()
            seconds[name].append(time.perf_counter() - started)
            cpu[name] += cpu_seconds(pid) - before
            assert answer.status_code == 200, answer.text[:300]
            sent = len(data) if name == "raw" else len(body)
            wire[name] = sent + len(answer.content)
    return {"side": side, "photo_bytes": len(data), "wire": wire,
            "median": {k: statistics.median(v) for k, v in seconds.items()},
            "min": {k: min(v) for k, v in seconds.items()},
            "cpu": {k: v / runs for k, v in cpu.items()}, "runs": runs}


def metrics_overhead(model_uri: str, tracking_uri: str, runs: int, seconds: float) -> dict:
    """Throughput (photos/s) of 16 clients over both routes, metrics on and off, alternating."""
    from bench.load import photo_jpegs, raw_bodies, request_bodies, run_load

    photos = photo_jpegs()
    bodies = [*request_bodies(photos), *raw_bodies(photos)]
    results: dict[str, list[float]] = {"on": [], "off": []}
    statuses: dict[str, dict] = {}
    with server(model_uri, tracking_uri, STYLIZE_METRICS="1") as on, \
            server(model_uri, tracking_uri, STYLIZE_METRICS="0") as off:
        assert requests.get(f"{off.url}/metrics", timeout=5).status_code == 404
        for _ in range(runs):
            for name, srv in (("on", on), ("off", off)):
                result = run_load(srv.url, clients=16, seconds=seconds, bodies=bodies)
                results[name].append(result.photos_per_s)
                statuses[name] = result.statuses
                print(f"metrics {name}: {result.summary()}", flush=True)
    return {"runs": results, "statuses": statuses}


def first_request(model_uri: str, tracking_uri: str) -> dict:
    """Seconds of the first and second request at 1024x768, without and with the warm-up."""
    from PIL import Image

    from neuralstyle.builder.samples import sample_rgb

    out = io.BytesIO()
    Image.fromarray(sample_rgb("coffee")).resize((1024, 768)).save(out, "JPEG", quality=90)
    data = out.getvalue()
    figures = {}
    for name, warm in (("no warm-up", ""), ("warm-up (default)", None)):
        env = {"STYLIZE_WARM_SIZES": warm} if warm is not None else {}
        with server(model_uri, tracking_uri, **env) as srv:
            times = []
            for _ in range(3):
                started = time.perf_counter()
                answer = requests.post(f"{srv.url}/stylize?style=7", data=data,
                                       headers={"Content-Type": "image/jpeg"}, timeout=120)
                times.append(time.perf_counter() - started)
                assert answer.status_code == 200
            figures[name] = times
    return figures


def report(argv: list[str], machine: dict[str, str], compared: list[dict], overhead: dict,
           first: dict, load_average: float) -> str:
    """The Markdown report."""
    lines = ["# The raw-image route against base64 JSON, metrics overhead, warm-up", "",
             f"Command: `{shlex.join(['python', 'bench/serve_raw.py', *argv])}`", "",
             f"Measured while other sessions shared this machine (1-minute load average "
             f"{load_average:.1f} at start): compare within this file only.", "",
             "| Machine | |", "|---|---|", *[f"| {k} | {v} |" for k, v in machine.items()], "",
             "## Wire bytes, latency and server CPU per request (style 7, JPEG in and out)", "",
             "One `python -m neuralstyle.run.server`; the two routes alternate on one keep-alive "
             "connection. Wire = request body + answer body.", "",
             "| photo | route | wire bytes | median s | min s | server CPU s/request |",
             "|---|---|---|---|---|---|"]
    for c in compared:
        for name, label in (("json", "/invocations (base64 JSON)"), ("raw", "/stylize (raw JPEG)")):
            lines.append(f"| {c['side']} px ({c['photo_bytes']} B) | {label} | {c['wire'][name]} | "
                         f"{c['median'][name]:.4f} | {c['min'][name]:.4f} | {c['cpu'][name]:.4f} |")
        lines.append(f"| | **raw / JSON** | **{c['wire']['raw'] / c['wire']['json']:.2f}x** | "
                     f"**{c['median']['raw'] / c['median']['json']:.2f}x** "
                     f"({(c['median']['json'] - c['median']['raw']) * 1000:+.1f} ms) | | "
                     f"**{c['cpu']['raw'] / c['cpu']['json']:.2f}x** |")
    on, off = overhead["runs"]["on"], overhead["runs"]["off"]
    lines += ["", "## Metrics on against off (16 keep-alive clients, both routes, 512 px)", "",
              "Two servers at once (`STYLIZE_METRICS=1` and `=0`), loaded in turn, alternating.", "",
              "| | photos/s per run | median |", "|---|---|---|",
              f"| metrics on | {', '.join(f'{x:.2f}' for x in on)} | {statistics.median(on):.2f} |",
              f"| metrics off | {', '.join(f'{x:.2f}' for x in off)} | {statistics.median(off):.2f} |",
              f"| **on / off** | | **{statistics.median(on) / statistics.median(off):.3f}** |", "",
              f"Statuses of the last runs: on {overhead['statuses']['on']}, off "
              f"{overhead['statuses']['off']}.", "",
              "## A first request at 1024x768 (seconds of requests 1, 2, 3)", "",
              "| server | 1st | 2nd | 3rd |", "|---|---|---|---|"]
    for name, times in first.items():
        lines.append(f"| {name} | " + " | ".join(f"{t:.3f}" for t in times) + " |")
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracking-uri", default=None,
                        help="registry holding the model (default: package this checkout into a "
                             "temporary one)")
    parser.add_argument("--runs", type=int, default=15,
                        help="requests per route and size (default: %(default)s)")
    parser.add_argument("--load-runs", type=int, default=3,
                        help="load runs per setting for the metrics overhead (default: %(default)s)")
    parser.add_argument("--load-seconds", type=float, default=15.0,
                        help="seconds per load run (default: %(default)s)")
    parser.add_argument("--output", default=str(DEFAULT_OUTPUT),
                        help="Markdown report (default: bench/results/serve_raw.md)")
    args = parser.parse_args(argv)
    from bench.serve_latency import machine, registry
    from neuralstyle import config

    load_average = os.getloadavg()[0]
    with registry(args.tracking_uri) as tracking_uri:
        with server(config.DEFAULT_MODEL_URI, tracking_uri) as srv:
            compared = [routes_compared(srv, side, args.runs) for side in SIZES]
        for c in compared:
            print(f"{c['side']} px: {c}", flush=True)
        overhead = metrics_overhead(config.DEFAULT_MODEL_URI, tracking_uri, args.load_runs,
                                    args.load_seconds)
        first = first_request(config.DEFAULT_MODEL_URI, tracking_uri)
    text = report(argv, machine(), compared, overhead, first, load_average)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(text)
    print(text)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
