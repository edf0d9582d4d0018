"""In-process latency of the arbitrary-style path (a painting as ``style_image``) at 384 and 1024 px.

    python bench/arbitrary.py --tracking-uri sqlite:///mlflow.db --runs 7

One row per request (base64 PNG photo + base64 PNG painting, JPEG out), through the registered
pyfunc loaded in this process. ``cold painting``: the style-vector cache is emptied before each
run (predictor + transformer); ``cached painting``: the painting was seen before (transformer
only); ``style 7``: the 26-style network on the same photo, for scale. Medians of ``--runs``
after one warm-up, runs interleaved so all see the same load; the CPU and load are recorded,
because these machines are shared.
"""

from __future__ import annotations

import argparse
import base64
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script from anywhere

from neuralstyle import config  # noqa: E402
from neuralstyle.model.runtime import cpu_model  # noqa: E402

DEFAULT_OUTPUT = REPO / "bench" / "results" / "arbitrary.md"
SIZES = (384, 1024)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracking-uri", default=config.DEFAULT_TRACKING_URI,
                        help="registry holding the model (default: %(default)s)")
    parser.add_argument("--model-uri", default=config.DEFAULT_MODEL_URI,
                        help="model to load (default: %(default)s)")
    parser.add_argument("--runs", type=int, default=7, help="timed runs per case (default: 7)")
    parser.add_argument("--precision", choices=("exact", "fast", "both"), default="both",
                        help="the request's precision param; both: interleaved, one row each "
                             "(default: %(default)s)")
    parser.add_argument("--output", default=str(DEFAULT_OUTPUT),
                        help="results file (default: bench/results/arbitrary.md)")
    args = parser.parse_args(argv)

    import mlflow
    import numpy as np
    import pandas as pd
    from PIL import Image

    from neuralstyle.builder.samples import LARGE_PHOTO, encode, sample_painting, sample_rgb

    with config.mlflow_scope(args.tracking_uri):
        model = mlflow.pyfunc.load_model(args.model_uri)
    engine = model.unwrap_python_model().engine
    painting = base64.b64encode(encode(sample_painting("immunohistochemistry"))).decode()
    photos = {
        size: base64.b64encode(encode(np.asarray(Image.fromarray(sample_rgb(LARGE_PHOTO)).resize(
            (size, size), Image.Resampling.LANCZOS)))).decode()
        for size in SIZES
    }

    def request(size: int, case: str, precision: str) -> float:
        if case == "cold painting":
            engine.style_vectors = type(engine.style_vectors)()
        frame = (pd.DataFrame({"image": [photos[size]], "style": ["7"]}) if case == "style 7"
                 else pd.DataFrame({"image": [photos[size]], "style_image": [painting]}))
        started = time.perf_counter()
        out = model.predict(frame, params={"max_size": size, "precision": precision})
        ran.setdefault(precision, set()).add(str(out["precision"][0]))
        return time.perf_counter() - started

    ran: dict[str, set[str]] = {}
    load_before = os.getloadavg()[0]
    cases = ("cold painting", "cached painting", "style 7")
    precisions = ("exact", "fast") if args.precision == "both" else (args.precision,)
    timings: dict[tuple[int, str, str], list[float]] = {
        (s, c, p): [] for p in precisions for s in SIZES for c in cases}
    for key in timings:
        request(*key)  # warm-up (compiled networks, caches)
    for _ in range(args.runs):
        for key in timings:
            timings[key].append(request(*key))

    lines = [
        "# Arbitrary style (a painting as `style_image`): in-process latency",
        "",
        f"Command: `{shlex.join(['python', 'bench/arbitrary.py', *(argv or sys.argv[1:])])}`  ",
        f"CPU: {cpu_model()} ({os.cpu_count()} cores), 1-minute load average before "
        f"{load_before:.2f}, after {os.getloadavg()[0]:.2f}; OpenVINO; what each precision ran: "
        + ", ".join(f"{p}: {'/'.join(sorted(r))}" for p, r in ran.items()) + "  ",
        f"Photo: scikit-image `{LARGE_PHOTO}` resized to a square of each size, PNG in, JPEG out; "
        "painting: `immunohistochemistry` (512x512 PNG). Medians of "
        f"{args.runs} runs (min in brackets).",
        "",
        "| size | precision | " + " | ".join(cases) + " |",
        "|---|---|" + "---|" * len(cases),
    ]
    for size in SIZES:
        for precision in precisions:
            cells = [f"{statistics.median(timings[(size, c, precision)]) * 1000:.0f} ms "
                     f"({min(timings[(size, c, precision)]) * 1000:.0f})" for c in cases]
            lines.append(f"| {size}x{size} | {precision} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    Path(args.output).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
