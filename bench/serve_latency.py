"""End-to-end latency of one 1024x1024 photo: through ``mlflow models serve`` vs the pyfunc in-process.

    python bench/serve_latency.py                 # packages this checkout into a temp registry
    python bench/serve_latency.py --tracking-uri sqlite:///mlflow.db --runs 9

Both sides start from the same one-row DataFrame (base64 JPEG, style 7, default params: JPEG
out, max_size 1024) and end with the predictions DataFrame, so the difference is what serving
adds: JSON encoding, HTTP on 127.0.0.1, MLflow's parsing and schema checks, JSON decoding.
Runs alternate between the two after a warm-up, so both see the same machine load; the medians
are reported with the load average, because these machines are shared.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import os
import platform
import shlex
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script from anywhere

from neuralstyle import config  # noqa: E402

DEFAULT_OUTPUT = REPO / "bench" / "results" / "serve_latency.md"


@dataclass(frozen=True)
class Timings:
    """Seconds per run for one way of calling the model."""

    name: str
    seconds: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def add_model_flags(parser: argparse.ArgumentParser, output: Path) -> None:
    """The flags every bench script shares: which registry and model, where the report goes."""
    parser.add_argument("--tracking-uri", default=None,
                        help="registry holding --model-uri (default: package this checkout into "
                             "a temporary sqlite registry, ~20 s)")
    parser.add_argument("--model-uri", default=config.DEFAULT_MODEL_URI,
                        help="model to benchmark (default: %(default)s)")
    parser.add_argument("--output", default=str(output),
                        help=f"Markdown report (default: {output.relative_to(REPO)})")


def build_parser() -> argparse.ArgumentParser:
    """CLI flags; every default is stated in its help."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=7,
                        help="timed runs per side after the warm-up (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=2,
                        help="untimed runs per side first (default: %(default)s)")
    add_model_flags(parser, DEFAULT_OUTPUT)
    return parser


def photo_1024() -> bytes:
    """A real photo (scikit-image's astronaut, 512 px) scaled to 1024x1024, JPEG quality 95."""
    from PIL import Image

    from neuralstyle.builder.samples import sample_rgb

    img = Image.fromarray(sample_rgb("astronaut")).resize((1024, 1024), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    img.save(out, "JPEG", quality=95)
    return out.getvalue()


def registry(tracking_uri: str | None) -> contextlib.AbstractContextManager[str]:
    """The given registry, or this checkout packaged into a throwaway one."""
    from neuralstyle.builder.packaging import temporary_registry

    return temporary_registry(REPO / config.DEFAULT_STYLE_MAP, given=tracking_uri)


def machine() -> dict[str, str]:
    """What the figures were measured on."""
    from neuralstyle.model.runtime import cpu_model

    cpu = cpu_model()
    memory = "unknown"
    with contextlib.suppress(OSError, ValueError, IndexError):
        kib = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
        memory = f"{kib / 1024 / 1024:.1f} GiB"
    import mlflow
    import onnxruntime

    return {
        "nproc": str(len(os.sched_getaffinity(0))),
        "CPU": cpu,
        "memory": memory,
        "OS": platform.platform(),
        "Python": platform.python_version(),
        "mlflow": mlflow.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def measure(model_uri: str, tracking_uri: str, runs: int, warmup: int) -> dict:
    """Alternate in-process and served calls on the same frame; return timings and context."""
    import pandas as pd

    from neuralstyle.run.client import StyleServerClient
    from neuralstyle.run.inference import LocalPredictor
    from neuralstyle.run.serving import REQUEST_TIMEOUT_S, running_server

    photo = photo_1024()
    frame = pd.DataFrame({"image": [base64.b64encode(photo).decode("ascii")], "style": ["7"]})
    local = LocalPredictor(model_uri, tracking_uri)
    started = time.monotonic()
    with running_server(model_uri, tracking_uri=tracking_uri) as server:
        ready_s = time.monotonic() - started
        client = StyleServerClient(server.url)
        sides = {"in-process pyfunc": local, "mlflow models serve": client}
        for _ in range(warmup):
            for predictor in sides.values():
                predictor.predict(frame)
        load_before = os.getloadavg()
        timings = {name: [] for name in sides}
        for _ in range(runs):
            for name, predictor in sides.items():
                t0 = time.perf_counter()
                result = predictor.predict(frame)
                timings[name].append(time.perf_counter() - t0)
                assert (int(result["width"][0]), int(result["height"][0])) == (1024, 1024)
        load_after = os.getloadavg()
        rss = server.rss_bytes()
    return {
        "timings": [Timings(name, seconds) for name, seconds in timings.items()],
        "photo_bytes": len(photo),
        "ready_s": ready_s,
        "load": (load_before[0], load_after[0]),
        "server_rss_mb": rss / 1e6,
        "request_timeout_s": REQUEST_TIMEOUT_S,
    }


def report(command: str, info: dict[str, str], result: dict, tracking: str) -> str:
    """The Markdown report."""
    local, served = result["timings"]
    lines = [
        "# Serving latency: one 1024x1024 photo, server vs in-process",
        "",
        f"Command: `{command}`",
        "",
        f"Model: {tracking}. Photo: scikit-image's astronaut scaled to 1024x1024, JPEG q95, "
        f"{result['photo_bytes'] / 1000:.0f} kB; style 7; default params (JPEG out, max_size "
        "1024, so no resize). Both sides go from the same one-row DataFrame to the predictions "
        "DataFrame; runs alternate between them after the warm-up.",
        "",
        "| Machine | |",
        "|---|---|",
        *[f"| {key} | {value} |" for key, value in info.items()],
        f"| load average (1 min) before / after | {result['load'][0]:.2f} / "
        f"{result['load'][1]:.2f} |",
        "",
        "| Path | median (s) | min (s) | max (s) | runs |",
        "|---|---|---|---|---|",
        *[f"| {t.name} | {t.median:.3f} | {min(t.seconds):.3f} | {max(t.seconds):.3f} | "
          f"{len(t.seconds)} |" for t in (local, served)],
        "",
        f"Serving adds {served.median - local.median:+.3f} s per photo "
        f"({(served.median / local.median - 1) * 100:+.0f}% of the in-process median). "
        f"The server answered /ping {result['ready_s']:.1f} s after start and held "
        f"{result['server_rss_mb']:.0f} MB RSS (its whole process group) at the end; its "
        f"request timeout was {result['request_timeout_s']} s.",
        "",
        "These machines are shared: a load average near or above nproc means other work took "
        "CPU time during the run. The two paths alternated, so compare them within one run, "
        "not with another run's figures.",
        "",
        "Raw seconds:",
        "",
        *[f"- {t.name}: {', '.join(f'{s:.3f}' for s in t.seconds)}" for t in (local, served)],
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = "python bench/serve_latency.py" + "".join(
        f" {shlex.quote(a)}" for a in (argv if argv is not None else sys.argv[1:]))
    with registry(args.tracking_uri) as tracking_uri:
        tracking = (f"`{args.model_uri}` from {args.tracking_uri}" if args.tracking_uri
                    else f"`{args.model_uri}` packaged from this checkout into a temp registry")
        result = measure(args.model_uri, tracking_uri, args.runs, args.warmup)
    text = report(command, machine(), result, tracking)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
