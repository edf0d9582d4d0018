"""64 photos of 512 px: the Spark job (spark_udf) vs the Luigi batch vs the bare in-process loop.

    python bench/spark.py --tracking-uri sqlite:///mlflow.db        # ~15 min on 2 busy cores
    python bench/spark.py --runs 3                                  # packages a temp registry first

Photos: ``bench/batch.py``'s generator (crops and mirror images of the scikit-image samples,
JPEG q90) in a local folder, so S3 is not part of the figures; style 7, JPEG out, default
params; every configuration writes all 64 results into a fresh folder. Each timed run is a fresh
Python process, and the rounds go through every configuration in turn (load from other work on a
shared machine then spreads over all of them):

* bare loop and Luigi batch (1 worker): ``bench/batch.py``'s own measurement (model loaded and
  one untimed pass first);
* Spark ``local[2]`` and ``local[1]``: ``tasks.spark.run_job`` in one SparkSession, twice: the
  first job ("cold") starts the Python workers and imports pandas/pyarrow/mlflow in them, the
  second ("warm") reuses them. Both load the model once per Spark task (what spark_udf does in
  local mode). Session start and the driver's model check are timed apart.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from serve_latency import add_model_flags  # noqa: E402

from neuralstyle import config  # noqa: E402

DEFAULT_OUTPUT = REPO / "bench" / "results" / "spark.md"
BARE = "bare loop, in-process"
LUIGI = "pipeline, local executor, 1 worker"
SPARK = {"Spark local[2]": "local[2]", "Spark local[1]": "local[1]"}


def build_parser() -> argparse.ArgumentParser:
    """CLI flags; every default is stated in its help."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3,
                        help="rounds over all configurations (default: %(default)s)")
    parser.add_argument("--photos", type=int, default=64, help="photos (default: %(default)s)")
    parser.add_argument("--size", type=int, default=512,
                        help="side of the square photos in px (default: %(default)s)")
    add_model_flags(parser, DEFAULT_OUTPUT)
    parser.add_argument("--measure-spark", default=None, help=argparse.SUPPRESS)  # internal
    parser.add_argument("--photos-dir", default=None, help=argparse.SUPPRESS)
    return parser


def measure_spark(master: str, photos_dir: str, tracking_uri: str, model_uri: str) -> dict:
    """In this (fresh) process: session start, model check, a cold job and a warm job."""
    from tasks.spark import JobSettings, make_plan, prepare, run_job, spark_session

    settings = JobSettings(images=photos_dir, output="unused", model_uri=model_uri,
                           tracking_uri=tracking_uri, master=master)
    found: dict = {}
    started = time.perf_counter()
    ctx, fingerprint = prepare(settings)
    found["model_check"] = time.perf_counter() - started
    started = time.perf_counter()
    with config.mlflow_scope(tracking_uri), spark_session(settings.conf()) as spark:
        found["session_start"] = time.perf_counter() - started
        for name in ("cold", "warm"):
            results = tempfile.mkdtemp(prefix=f"bench-spark-{name}-")
            plan = make_plan(photos_dir, results, settings.style, settings.suffix)
            result = run_job(spark, plan, style=settings.style, model_uri=model_uri,
                             params=settings.params(), photos_per_task=settings.photos_per_task,
                             ctx=ctx, fingerprint=fingerprint)
            assert result.ok == plan.listed and not result.failures, result.failures
            assert len(list(Path(results).glob("*.jpg"))) == plan.listed
            found[name] = result.seconds_job
            found[f"{name}_memory"] = result.memory
            found["tasks"] = result.partitions
    return found


def busy_note(load: tuple[float, float], info: dict[str, str]) -> list[str]:
    """The warning a run on a loaded machine needs: its wall times favour many processes."""
    return [
        f"**This run is not a fair race**: the load average ({load[0]:.1f} before, {load[1]:.1f} "
        f"after) was far above nproc ({info.get('nproc')}): other work held most of the CPU, so "
        "every configuration ran several times slower than alone, and each got the share of "
        "the cores the kernel gave its processes. Configurations with more busy processes "
        "(Spark's JVM and Python workers) win a larger share against the other work than the "
        "one-process bare loop, so here the wall times favour Spark and understate its "
        "overhead; they do not show what it costs on an idle machine. Rerun on a quiet one.",
        "",
    ]


def run_measure(command: list[str], cwd: Path) -> object:
    proc = subprocess.run(command, capture_output=True, text=True, cwd=cwd)
    if proc.returncode != 0:
        raise RuntimeError(f"{command} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def report(command: str, info: dict[str, str], loop: dict[str, list[float]],
           spark: dict[str, list[dict]], photos: int, size: int, tracking: str,
           load: tuple[float, float]) -> str:
    """The Markdown report."""
    bare = statistics.median(loop[BARE])
    rows = []

    def row(name: str, seconds: list[float]) -> str:
        median = statistics.median(seconds)
        return (f"| {name} | {median:.2f} | {min(seconds):.2f} | {photos / median:.2f} | "
                f"{median / photos * 1000:.0f} | {(median - bare) / photos * 1000:+.0f} | "
                f"{median / bare:.2f}x | {', '.join(f'{s:.2f}' for s in seconds)} |")

    rows.append(row("bare loop, in-process (model loaded, warm)", loop[BARE]))
    rows.append(row("Luigi batch, local executor, 1 worker (warm)", loop[LUIGI]))
    fixed = []
    memory = []
    for name, runs in spark.items():
        tasks = runs[0]["tasks"]
        rows.append(row(f"{name}, warm job ({tasks} tasks)", [r["warm"] for r in runs]))
        rows.append(row(f"{name}, cold job (Python workers start)", [r["cold"] for r in runs]))
        fixed.append(f"| {name} | {statistics.median(r['session_start'] for r in runs):.1f} | "
                     f"{statistics.median(r['model_check'] for r in runs):.1f} |")
        peak = runs[-1]["warm_memory"]
        memory.append(f"| {name} | {peak.get('jvm_mb', 0):.0f} | "
                      f"{peak.get('python_worker_mb', 0):.0f} | {peak.get('total_mb', 0):.0f} |")
    warm2 = statistics.median(r["warm"] for r in spark["Spark local[2]"])
    return "\n".join([
        f"# Spark: {photos} photos of {size} px, spark_udf vs the Luigi batch vs a bare loop",
        "",
        f"Command: `{command}`",
        "",
        f"Model: {tracking}. Photos: {photos} JPEGs of {size}x{size} (`bench/batch.py`'s "
        "generator: crops and mirror images of scikit-image's astronaut, chelsea, coffee, "
        "rocket) in a local folder, so S3 is not part of the figures; style 7, JPEG out, "
        "default params; each run writes all results into a fresh folder. Each round runs "
        "every configuration once, each in a fresh Python process; the medians are over the "
        "rounds. Spark: `tasks.spark.run_job` (the job `python -m tasks.run_spark` and `mlflow run "
        ". -e stylize_spark` run), Arrow batches of 4 rows, 32 photos per Spark task, the "
        "model loaded once per task by `mlflow.pyfunc.spark_udf(..., env_manager=\"local\")`; "
        "a *cold* job is the first in its session (Python workers start and import pandas, "
        "pyarrow, mlflow), a *warm* job the second.",
        "",
        "| Machine | |",
        "|---|---|",
        *[f"| {key} | {value} |" for key, value in info.items()],
        f"| load average (1 min) before / after | {load[0]:.2f} / {load[1]:.2f} |",
        "",
        "| Configuration | median (s) | min (s) | photos/s (median) | ms per photo | "
        "overhead vs bare loop, ms per photo | median vs bare loop | runs (s) |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"Per-photo overhead of Spark at {size} px (warm `local[2]` job vs the bare loop, both "
        f"with 2 cores): {(warm2 - bare) / photos * 1000:+.0f} ms per photo "
        f"({warm2 / bare:.2f}x). Fixed costs on top, once per run:",
        "",
        "| | session start (s) | model check on the driver (s) |",
        "|---|---|---|",
        *fixed,
        "",
        "Peak resident memory during the last warm job (sampled from /proc every 0.2 s: the "
        "JVM, the largest Python worker, and the JVM with all its Python workers):",
        "",
        "| | JVM (MB) | largest Python worker (MB) | total (MB) |",
        "|---|---|---|---|",
        *memory,
        "",
        *(busy_note(load, info) if max(load) > float(info.get("nproc", "2")) else []),
        "Reading it: on one idle machine Spark can only add work, no CPU: each photo crosses the JVM "
        "twice more as Arrow batches (read -> model -> write are three Python stages), every "
        "task loads the model again, and `local[2]` runs two onnxruntime sessions that each "
        "want both cores; its fixed costs (session start, Python workers starting in a cold "
        "job) come on top. Its gain is elsewhere: the same command spreads a bucket of 100,000 "
        "photos over a cluster's executors, retries lost tasks, and keeps going past bad photos.",
        "",
    ])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.measure_spark:
        found = measure_spark(args.measure_spark, args.photos_dir, args.tracking_uri,
                              args.model_uri)
        print(json.dumps(found))
        return 0
    from batch import make_photos
    from serve_latency import machine, registry

    command = "python bench/spark.py" + "".join(
        f" {shlex.quote(a)}" for a in (argv if argv is not None else sys.argv[1:]))
    if args.tracking_uri and args.tracking_uri.startswith("sqlite:///"):
        args.tracking_uri = "sqlite:///" + os.path.abspath(args.tracking_uri[len("sqlite:///"):])
    loop: dict[str, list[float]] = {}
    spark: dict[str, list[dict]] = {}
    with contextlib.ExitStack() as stack:
        tracking_uri = stack.enter_context(registry(args.tracking_uri))
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-spark-")))
        photos_dir = work / "photos"
        make_photos(photos_dir, args.photos, args.size)
        load_before = os.getloadavg()
        tracking = (f"`{args.model_uri}` from {args.tracking_uri}" if args.tracking_uri
                    else f"`{args.model_uri}` packaged from this checkout into a temp registry")
        for round_ in range(args.runs):
            for name in (BARE, LUIGI):
                print(f"round {round_ + 1}/{args.runs}: {name}", flush=True)
                loop.setdefault(name, []).extend(run_measure(
                    [sys.executable, str(REPO / "bench" / "batch.py"), "--measure", name,
                     "--photos-dir", str(photos_dir), "--tracking-uri", tracking_uri,
                     "--model-uri", args.model_uri, "--runs", "1"], work))
            for name, master in SPARK.items():
                print(f"round {round_ + 1}/{args.runs}: {name}", flush=True)
                spark.setdefault(name, []).append(run_measure(
                    [sys.executable, __file__, "--measure-spark", master, "--photos-dir",
                     str(photos_dir), "--tracking-uri", tracking_uri, "--model-uri",
                     args.model_uri], work))
            # The report so far, after every round (a long run stopped early still tells).
            text = report(command, machine(), loop, spark, args.photos, args.size, tracking,
                          (load_before[0], os.getloadavg()[0]))
            output = Path(args.output)
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
