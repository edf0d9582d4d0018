"""The look at print size (``paint_size``): the network at the full size vs painting at 1024 px and
bringing the result up guided by the photo, on a composed large photo; and the filter's settings.

    python bench/paint_size.py                           # packages this checkout first
    python bench/paint_size.py --tracking-uri sqlite:///mlflow.db --size 6000x4000
    make bench-paint-size

Measured, whole requests in-process (PNG out, the photo's own size, ``max_size=0``):
* the network at the full size, ``paint_size=1024`` guided, and the 1024 px painting upscaled
  bicubically (the plain way): seconds (one run each, noisy on a shared machine), and how well
  each result's edges follow the photo's (correlation of luma gradient magnitudes);
* the filter's settings (radius, eps, detail) on a seeded family of mosaics: edge alignment
  against stroke fidelity (the result scaled back to the paint size vs the painting, PSNR).
Writes bench/results/paint_size.md and docs/images/paint-size-crop.jpg (a 100% crop, side by
side: the photo, the network at the full size, 1024 bicubic, 1024 guided).
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from fullres import mosaic  # noqa: E402
from serve_latency import add_model_flags  # noqa: E402

from neuralstyle import config  # noqa: E402

DEFAULT_OUTPUT = REPO / "bench" / "results" / "paint_size.md"
DEFAULT_PICTURE = REPO / "docs" / "images" / "paint-size-crop.jpg"
STYLE = "7"
PAINT = 1024
CROP = 384


def build_parser() -> argparse.ArgumentParser:
    """CLI flags; every default is stated in its help."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="4096x2731",
                        help="the composed photo, WIDTHxHEIGHT (default: %(default)s, 11 MP)")
    parser.add_argument("--seed", type=int, default=3, help="the mosaic's seed (default: %(default)s)")
    parser.add_argument("--precision", default="fast", help="(default: %(default)s)")
    parser.add_argument("--picture", default=str(DEFAULT_PICTURE),
                        help="the side-by-side crop (default: docs/images/paint-size-crop.jpg)")
    parser.add_argument("--sweep", type=int, default=4,
                        help="mosaics in the settings family, 0 to skip (default: %(default)s)")
    parser.add_argument("--print-size", default="8256x5504",
                        help="a whole request at this size with paint_size=1024, in a fresh "
                             "process, for its seconds and peak memory; '' to skip "
                             "(default: %(default)s, 45 MP)")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    add_model_flags(parser, DEFAULT_OUTPUT)
    return parser


def child(spec: str) -> None:
    """One whole request (JPEG in, JPEG out, max_size=0, paint_size) in this fresh process:
    prints a JSON line with its seconds and the process's peak resident memory (VmHWM)."""
    import json

    import mlflow
    import pandas as pd
    from fullres import peak_rss_mb
    from fullres_floor import resident_mb

    args = json.loads(spec)
    mlflow.set_tracking_uri(args["tracking_uri"])
    model = mlflow.pyfunc.load_model(args["model_uri"])
    loaded = resident_mb()
    frame = pd.DataFrame({"image": [base64.b64encode(Path(args["photo"]).read_bytes()).decode()],
                          "style": [STYLE]})
    started = time.perf_counter()
    out = model.predict(frame, params={"max_size": 0, "paint_size": args.get("paint", PAINT),
                                       "precision": args["precision"]})
    print(json.dumps({"seconds": time.perf_counter() - started, "after_load_mb": loaded,
                      "peak_mb": peak_rss_mb(),
                      "size": [int(out.loc[0, "width"]), int(out.loc[0, "height"])]}))


def print_request(size: str, seed: int, precision: str, tracking_uri: str,
                  model_uri: str, paint: int = PAINT) -> dict:
    """``child`` on a composed photo of ``size``, in a fresh process."""
    import json
    import subprocess
    import tempfile

    from fullres import jpeg

    width, height = (int(v) for v in size.lower().split("x"))
    with tempfile.TemporaryDirectory() as folder:
        photo = Path(folder) / "print.jpg"
        photo.write_bytes(jpeg(mosaic(width, height, seed)))
        spec = json.dumps({"photo": str(photo), "precision": precision, "paint": paint,
                           "tracking_uri": tracking_uri, "model_uri": model_uri})
        done = subprocess.run([sys.executable, __file__, "--child", spec], capture_output=True,
                              text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the {size} request failed:\n{done.stderr[-3000:]}")
    return {"width": width, "height": height, **json.loads(done.stdout.strip().splitlines()[-1])}


def gradient_correlation(result: np.ndarray, photo: np.ndarray) -> float:
    """Pearson correlation of luma gradient magnitudes (as tests/model/test_paint_size.py)."""
    def magnitude(rgb: np.ndarray) -> np.ndarray:
        luma = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        gy, gx = np.gradient(luma)
        return np.hypot(gx, gy).ravel()

    a, b = magnitude(result), magnitude(photo)
    a, b = a - a.mean(), b - b.mean()
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def request(model, photo_png: bytes, precision: str, **params) -> tuple[np.ndarray, float]:
    """One whole in-process request: the decoded PNG result and its seconds."""
    import pandas as pd
    from PIL import Image

    frame = pd.DataFrame({"image": [base64.b64encode(photo_png).decode("ascii")], "style": [STYLE]})
    started = time.perf_counter()
    row = model.predict(frame, params={"format": "png", "precision": precision, **params}).iloc[0]
    seconds = time.perf_counter() - started
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(row["image"]))).convert("RGB")), seconds


def bicubic(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(rgb).resize((width, height), Image.Resampling.BICUBIC))


def busiest_window(photo: np.ndarray, side: int) -> tuple[int, int]:
    """The top-left of the ``side`` px window with the most photo edges (a 100% crop worth seeing)."""
    luma = photo.astype(np.float32).mean(axis=2)
    energy = np.abs(np.diff(luma, axis=0))[:, :-1] + np.abs(np.diff(luma, axis=1))[:-1]
    best, where = -1.0, (0, 0)
    for y in range(0, energy.shape[0] - side, side // 2):
        for x in range(0, energy.shape[1] - side, side // 2):
            score = float(energy[y:y + side, x:x + side].mean())
            if score > best:
                best, where = score, (y, x)
    return where


def picture(panels: list[tuple[str, np.ndarray]], where: tuple[int, int], path: Path) -> None:
    """The crops side by side, each labelled."""
    from PIL import Image, ImageDraw

    y, x = where
    label_h = 22
    sheet = Image.new("RGB", (CROP * len(panels), CROP + label_h), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (label, rgb) in enumerate(panels):
        sheet.paste(Image.fromarray(rgb[y:y + CROP, x:x + CROP]), (i * CROP, label_h))
        draw.text((i * CROP + 6, 5), label, fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, "JPEG", quality=90)


def sweep(engine, count: int) -> list[dict]:
    """Radius, eps, detail on seeded 1536x1024 mosaics painted at 384 px (4x), styles 7 and 19."""
    from PIL import Image

    from neuralstyle.model import guided

    settings = [(r, eps, d) for d in (1.0, 0.5, 0.0) for r in (1, 2, 4) for eps in (1e-3, 1e-2)]
    scores: dict[tuple, list[tuple[float, float]]] = {s: [] for s in [*settings, "bicubic"]}
    for seed in range(count):
        photo = mosaic(1536, 1024, seed)
        small = np.asarray(Image.fromarray(photo).resize((384, 256), Image.Resampling.LANCZOS))
        for style in ("7", "19"):
            painted, _ = engine.run(small, engine.catalog.resolve(style), "exact")
            planes = [Image.fromarray(painted[..., c]) for c in range(3)]
            results = {"bicubic": np.clip(np.stack([np.asarray(p.resize(
                (1536, 1024), Image.Resampling.BICUBIC)) for p in planes], -1), 0, 1)}
            for r, eps, d in settings:
                results[(r, eps, d)] = guided.upsample(painted, small, photo, r, eps, d)
            for key, result in results.items():
                back = np.stack([np.asarray(Image.fromarray(result[..., c]).resize(
                    (384, 256), Image.Resampling.LANCZOS)) for c in range(3)], -1)
                fidelity = 10 * np.log10(1 / float(np.mean((back - painted) ** 2)))
                scores[key].append((gradient_correlation(result, photo), fidelity))
    rows = []
    for key, values in scores.items():
        edges, fid = [v[0] for v in values], [v[1] for v in values]
        rows.append({"setting": key, "edges_min": min(edges), "edges_median": statistics.median(edges),
                     "fid_min": min(fid), "fid_median": statistics.median(fid)})
    return rows


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.child:
        child(args.child)
        return
    import mlflow
    from PIL import Image
    from serve_latency import registry

    from neuralstyle.model import guided, runtime

    command = "python bench/paint_size.py " + " ".join(argv if argv is not None else sys.argv[1:])
    width, height = (int(v) for v in args.size.lower().split("x"))
    load = os.getloadavg()[0]
    photo = mosaic(width, height, args.seed)
    encoded = io.BytesIO()
    Image.fromarray(photo).save(encoded, "PNG")
    with registry(args.tracking_uri) as uri, config.mlflow_scope(uri):
        model = mlflow.pyfunc.load_model(args.model_uri)
        request(model, encoded.getvalue(), args.precision, max_size=PAINT)  # compile, warm
        full, full_s = request(model, encoded.getvalue(), args.precision, max_size=0)
        ours, ours_s = request(model, encoded.getvalue(), args.precision, max_size=0,
                               paint_size=PAINT)
        small, small_s = request(model, encoded.getvalue(), args.precision, max_size=PAINT)
        plain = bicubic(small, width, height)
        rows = sweep(model.unwrap_python_model().engine, args.sweep) if args.sweep else []
        big = (print_request(args.print_size, args.seed, args.precision, uri, args.model_uri)
               if args.print_size else None)
    where = busiest_window(photo, CROP)
    picture([("the photo", photo), (f"network at {width}x{height}", full),
             (f"paint_size={PAINT}, bicubic", plain), (f"paint_size={PAINT}, guided", ours)],
            where, Path(args.picture))
    edges = {name: gradient_correlation(rgb, photo) for name, rgb in
             (("full", full), ("bicubic", plain), ("guided", ours))}
    lines = [
        "# The look at print size: `paint_size`",
        "",
        f"Command: `{command}` (`make bench-paint-size`), "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        f"CPU: {runtime.cpu_model()}, {os.cpu_count()} cores. Load average at start {load:.1f}: "
        "seconds are one run each on a shared machine, noisy.",
        "",
        f"A seeded mosaic of the bundled photos, {width}x{height} ({width * height / 1e6:.1f} MP), "
        f"style {STYLE}, precision {args.precision}, whole in-process requests at the photo's own "
        "size (`max_size=0`, PNG out).",
        "",
        "| way | seconds | edges: gradient correlation with the photo |",
        "|---|---|---|",
        f"| network at {width}x{height} | {full_s:.1f} | {edges['full']:.3f} |",
        f"| `paint_size={PAINT}`, guided | {ours_s:.1f} | {edges['guided']:.3f} |",
        f"| `max_size={PAINT}` then bicubic (the plain way) | {small_s:.1f} + resize | "
        f"{edges['bicubic']:.3f} |",
        "",
        f"![100% crop](../../docs/images/{Path(args.picture).name})",
        "",
        f"100% crop at ({where[1]}, {where[0]}), {CROP} px: the photo, the network at the full size "
        f"(small strokes), the {PAINT} px painting upscaled bicubically (soft), the same painting "
        "guided by the photo (its strokes, the photo's edges).",
    ]
    if big:
        lines += [
            "",
            f"## A whole {big['width']}x{big['height']} request with `paint_size={PAINT}`",
            "",
            f"JPEG in and out, `max_size=0`, {args.precision}, in a fresh process: "
            f"{big['seconds']:.1f} s, result {big['size'][0]}x{big['size'][1]}; peak resident "
            f"memory (VmHWM, decode to encode) {big['peak_mb']:.0f} MB "
            f"({big['after_load_mb']:.0f} MB after loading the model). The network at the full "
            "size on the same kind of photo: bench/results/fullres.md.",
        ]
    if rows:
        lines += [
            "",
            f"## The filter's settings ({args.sweep} seeded 1536x1024 mosaics x styles 7, 19, "
            "painted at 384 px)",
            "",
            "Edges: gradient correlation with the photo (higher: edges where the photo's are). "
            "Strokes: the result scaled back to 384 px vs the painting, PSNR dB (higher: the "
            f"painting's strokes kept). Shipped: radius {guided.RADIUS}, eps {guided.EPS:g}, "
            f"detail {guided.DETAIL:g}.",
            "",
            "| radius, eps, detail | edges min | edges median | strokes min dB | strokes median dB |",
            "|---|---|---|---|---|",
        ]
        for row in rows:
            key = row["setting"]
            name = key if isinstance(key, str) else f"{key[0]}, {key[1]:g}, {key[2]:g}"
            lines.append(f"| {name} | {row['edges_min']:.3f} | {row['edges_median']:.3f} | "
                         f"{row['fid_min']:.1f} | {row['fid_median']:.1f} |")
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
