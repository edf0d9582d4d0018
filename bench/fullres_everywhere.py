"""A 45 MP photo at its own size through every way a user runs the model: time, peak memory, bytes.

    make bench-fullres-everywhere     # packages a throwaway registry, then:
    python bench/fullres_everywhere.py --tracking-uri sqlite:///.bench/mlflow.db

One seeded mosaic of the bundled photos at 8256x5504 (45 MP, JPEG), ``max_size=0`` (the photo's
own size), one precision (``fast`` by default), through:

* the Luigi task, local executor (``luigi --module tasks Stylize``): the process's peak RSS;
* Spark (``python -m tasks.run_spark`` on ``local[2]``, its Python workers capped at 6 GB of
  address space): the job's own peak RSS figures (JVM, largest Python worker, all together);
* the serving image (nginx + ``neuralstyle.run.server``, MLflow's scoring app with /stylize,
  /ready and /metrics around it, six photo sizes warmed at start): each process's own peak
  (VmHWM, read through the host pids ``docker top`` gives), and the container's memory from its
  cgroup, sampled every ~0.5 s;
* the batch image (``docker run ... stylize.py``): the container's memory, as above.

Every path must give the same JPEG bytes (one model version, one photo, one set of params).
The results go to bench/results/fullres-everywhere.md with the CPU and the load average.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script from anywhere

from neuralstyle import config  # noqa: E402
from neuralstyle.model.runtime import cpu_model  # noqa: E402

CAMERA = (8256, 5504)
STYLE = "7"


def child_peak_mb(command: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Run ``command``; its wall seconds, its own peak RSS (MB, from wait4) and its output."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - started
        log.seek(0)
        output = log.read().decode(errors="replace")
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited {proc.returncode}:\n{output[-3000:]}")
    return seconds, usage.ru_maxrss / 1024, output


@contextmanager
def container_peak(container: Any) -> Iterator[dict[str, float]]:
    """The container's peak memory (MB) while the block runs, from its cgroup, sampled every
    ~0.5 s: ``rss``, its processes' resident anonymous memory together (cgroup ``total_rss``:
    what the other rows count), and ``docker``, the cgroup's own peak usage (``max_usage``,
    which also counts page cache: the photo and result files, nginx's buffers)."""
    peak = {"rss": 0.0, "docker": 0.0}
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            try:
                memory = container.stats(stream=False, one_shot=True).get("memory_stats", {})
            except Exception:  # the container is gone: the work is over
                return
            stats = memory.get("stats", {})
            rss = stats.get("total_rss", stats.get("anon", 0))  # cgroup v1, else v2
            usage = memory.get("max_usage", memory.get("usage", 0) - stats.get("inactive_file", 0))
            peak["rss"] = max(peak["rss"], rss / 2**20)
            peak["docker"] = max(peak["docker"], usage / 2**20)
            time.sleep(0.5)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        stop.set()
        thread.join(5)


def peak_text(peak: dict[str, float], what: str) -> str:
    return (f"{peak['rss']:.0f} MB resident ({what}); {peak['docker']:.0f} MB with page cache "
            "(the cgroup's peak)")


def through_luigi(photo: Path, out: Path, args: argparse.Namespace, env: dict[str, str]) -> dict:
    seconds, peak, _ = child_peak_mb(
        [sys.executable, "-m", "luigi", "--module", "tasks", "Stylize", "--image", str(photo),
         "--style", STYLE, "--output-path", str(out), "--max-size", "0", "--precision",
         args.precision, "--model-uri", args.model_uri, "--tracking-uri", args.tracking_uri,
         "--local-scheduler"], env)
    return {"seconds": seconds, "peak": f"{peak:.0f} MB (the process)", "bytes": out.read_bytes()}


def through_spark(photo: Path, folder: Path, args: argparse.Namespace, env: dict[str, str]) -> dict:
    results = folder / "spark-out"
    seconds, _, output = child_peak_mb(
        [sys.executable, "-m", "tasks.run_spark", "--images", str(photo.parent), "--output",
         str(results), "--style", STYLE, "--max-size", "0", "--precision", args.precision,
         "--model-uri", args.model_uri, "--tracking-uri", args.tracking_uri], env)
    found = re.search(r"jvm_mb (\d+) MB, python_worker_mb (\d+) MB, total_mb (\d+) MB", output)
    peak = (f"{found[2]} MB the Python worker (cap 6 GB of address space), {found[1]} MB the "
            f"JVM, {found[3]} MB together" if found else "not reported")
    return {"seconds": seconds, "peak": peak,
            "bytes": (results / f"{photo.stem}-{STYLE}.jpg").read_bytes()}


def through_serving_image(photo: Path, args: argparse.Namespace) -> dict:
    from neuralstyle.run.client import StyleServerClient
    from neuralstyle.run.container import docker_client, model_container

    client = docker_client()
    with model_container(args.model_uri, tracking_uri=args.tracking_uri, client=client) as url:
        port = url.rsplit(":", 1)[1]
        container = next(c for c in client.containers.list()
                         if any(b.get("HostPort") == port for bindings in
                                c.ports.values() if bindings for b in bindings))
        import pandas as pd

        frame = pd.DataFrame({"image": [base64.b64encode(photo.read_bytes()).decode()],
                              "style": [STYLE]})
        with container_peak(container) as peak:
            started = time.perf_counter()
            row = StyleServerClient(url).predict(
                frame, params={"max_size": 0, "precision": args.precision}).iloc[0]
            seconds = time.perf_counter() - started
        processes = process_peaks(container)
    return {"seconds": seconds,
            "peak": f"{peak_text(peak, 'nginx and the model server together')}; each process's "
                    f"own peak (VmHWM): {processes}",
            "bytes": base64.b64decode(row["image"])}


def process_peaks(container: Any) -> str:
    """Each process of a running container, by its command's first words, with its own peak
    resident memory (VmHWM, exact; read through the host pids ``docker top`` gives)."""
    from neuralstyle.run.serving import peak_rss_bytes

    top = container.top(ps_args="-eo pid,args")
    rows = [(peak_rss_bytes(int(row[0])) / 2**20, " ".join(row[1].split()[:3])[:60])
            for row in top.get("Processes") or []]
    return ", ".join(f"{mb:.0f} MB `{what}`" for mb, what in sorted(rows, reverse=True) if mb)


def through_batch_image(photo: Path, folder: Path, args: argparse.Namespace) -> dict:
    from neuralstyle.containers import images
    from neuralstyle.run.container import docker_client

    tag = images.ensure_batch_image(args.model_uri, args.tracking_uri)
    data = folder / "data"
    data.mkdir()
    (data / "in.jpg").write_bytes(photo.read_bytes())
    os.chmod(data, 0o777)
    client = docker_client()
    container = client.containers.run(
        tag, ["--image", "/data/in.jpg", "--style", STYLE, "--output", "/data/out.jpg",
              "--max-size", "0", "--precision", args.precision],
        volumes={str(data): {"bind": "/data", "mode": "rw"}}, detach=True)
    try:
        started = time.perf_counter()
        with container_peak(container) as peak:
            status = container.wait(timeout=1200)["StatusCode"]
        seconds = time.perf_counter() - started
        if status != 0:
            raise SystemExit(container.logs().decode(errors="replace")[-3000:])
    finally:
        container.remove(force=True)
    return {"seconds": seconds, "peak": peak_text(peak, "the CLI"),
            "bytes": (data / "out.jpg").read_bytes()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--model-uri", default=config.DEFAULT_MODEL_URI)
    parser.add_argument("--precision", default="fast", choices=("fast", "exact"))
    parser.add_argument("--paths", default="luigi,spark,serving,batch")
    parser.add_argument("--output", default=str(REPO / "bench" / "results" /
                                                "fullres-everywhere.md"))
    args = parser.parse_args(argv)
    from neuralstyle.builder.samples import encode, mosaic

    load = os.getloadavg()[0]
    env = {**os.environ, "MLFLOW_TRACKING_URI": args.tracking_uri,
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])}
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "in").mkdir()
        photo = folder / "in" / "camera.jpg"
        photo.write_bytes(encode(mosaic(*CAMERA, seed=45), "JPEG"))
        ways: dict[str, tuple[str, Callable[[], dict]]] = {
            "luigi": ("Luigi task, local executor",
                      lambda: through_luigi(photo, folder / "luigi.jpg", args, env)),
            "spark": ("Spark (`tasks.run_spark`, local[2])",
                      lambda: through_spark(photo, folder, args, env)),
            "serving": ("serving image (nginx + `neuralstyle.run.server`)",
                        lambda: through_serving_image(photo, args)),
            "batch": ("batch image (`docker run ... stylize.py`)",
                      lambda: through_batch_image(photo, folder, args)),
        }
        for key in args.paths.split(","):
            label, run = ways[key]
            rows[label] = run()
            print(f"{label}: {rows[label]['seconds']:.1f} s, peak {rows[label]['peak']}",
                  flush=True)
    digests = {label: hashlib.sha256(row["bytes"]).hexdigest()[:16] for label, row in rows.items()}
    same = len(set(digests.values())) == 1
    lines = [
        "# A 45 MP photo through every path (8256x5504, `max_size=0`)", "",
        f"Command: `python bench/fullres_everywhere.py {' '.join(argv or sys.argv[1:])}`; "
        f"CPU: {cpu_model()}, {os.cpu_count()} cores; load average at start {load:.1f} "
        f"(a shared machine: seconds are noisy); precision {args.precision}, style {STYLE}.", "",
        "| path | seconds | peak memory | result sha256 |", "|---|---|---|---|",
        *[f"| {label} | {row['seconds']:.1f} | {row['peak']} | `{digests[label]}` |"
          for label, row in rows.items()], "",
        f"Same bytes on every path: **{'yes' if same else 'NO'}**.", "",
        "A container's resident figure is its cgroup's anonymous memory (`total_rss`, or `anon` "
        "on cgroup v2) sampled every ~0.5 s, so it can miss a short peak; the serving image's "
        "per-process VmHWM cannot. The page-cache figure is the cgroup's peak usage, which also "
        "counts the tiled run's spill file and the photo and result files (reclaimable, but a "
        "`--memory` limit counts it too).", ""]
    Path(args.output).write_text("\n".join(lines))
    print("\n".join(lines))
    if not same:
        raise SystemExit("the paths gave different bytes")


if __name__ == "__main__":
    main()
