"""Build the networks, prove them, export them to ONNX and register one pyfunc model version.

One call of :func:`package_models` = one MLflow run: params (weight source and sha256), metrics
(parity errors, packaging time), a contact sheet of all 26 styles, and a registered version with
alias ``champion``. Identical weights + code + style map never pile up identical versions.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import subprocess
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from neuralstyle import config
from neuralstyle.pyfunc_model import IDENTITY_FILE, QUALITY_FILE
from neuralstyle.styles import N_STYLES, Catalog, load_style_map, validate_network_name

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent
PARITY_TOLERANCE = 1e-3  # vs the original ONNX graph, 0..1 scale
EXPORT_TOLERANCE = 1e-4  # exported ONNX vs the PyTorch module
PARITY_STYLES = ("0", "7", "19", "3:0.5,12:0.5")
# precision=fast against exact, per style, worst over the bundled sample photos (8-bit results):
# a style below either bound is served exact.
FAST_MIN_PSNR_DB = 40.0
FAST_MAX_MEAN_LEVELS = 1.5  # mean |fast - exact| in levels of 255
# The files that define what a model version is (how it is built and what it does when served);
# their hash is the version's code_version, so a change to any of them makes a new version.
MODEL_FILES = (
    "__init__.py", "errors.py", "imaging.py", "styles.py", "pyfunc_model.py", "model_code.py",
    "networks.py", "weights.py", "packaging.py", "config.py", "runtime.py",
)


@dataclass
class PackageResult:
    """What a packaging call did, for the CLI to print and tests to check."""

    name: str
    version: str
    created: bool
    run_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    fingerprint: str = ""


def serving_requirements() -> list[str]:
    """The model's pip requirements: the project's own pinned runtime dependencies (no torch)."""
    pyproject = tomllib.loads((REPO_DIR / "pyproject.toml").read_text())
    reqs = list(pyproject["project"]["dependencies"])
    assert not any(r.startswith("torch") for r in reqs), "serving must not depend on torch"
    return reqs


def code_version() -> str:
    """sha256 (first 12 hex) over the files that build and serve the model."""
    digest = hashlib.sha256()
    for name in MODEL_FILES:
        digest.update(name.encode() + b"\0" + (PACKAGE_DIR / name).read_bytes())
    return digest.hexdigest()[:12]


def git_commit() -> str:
    """The repo's commit (``+dirty`` when there are local changes), or ``unknown``."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO_DIR, capture_output=True,
            text=True, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_DIR,
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def parity_against_original(net, onnx_path: Path, photos: dict[str, np.ndarray]) -> float:
    """Max |torch - original ONNX graph| over the parity styles and photos (0..1 scale)."""
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    catalog = Catalog()
    worst = 0.0
    for photo in photos.values():
        x = np.ascontiguousarray((photo.astype(np.float32) / 255.0).transpose(2, 0, 1)[None])
        for spec in PARITY_STYLES:
            weights = catalog.resolve(spec).weights
            ref = session.run(None, {"image": x, "style_weights": weights})[0]
            with torch.no_grad():
                out = net(torch.from_numpy(x), torch.from_numpy(weights)).numpy()
            worst = max(worst, float(np.abs(out - ref).max()))
    return worst


def export_onnx(module, example: tuple, path: Path, input_names: list[str]) -> None:
    """torch.onnx (dynamo exporter) with dynamic height and width; the image is input 0."""
    import torch

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    height = torch.export.Dim("height", min=32, max=8192)
    width = torch.export.Dim("width", min=32, max=8192)
    shapes = ({2: height, 3: width},) + (None,) * (len(example) - 1)
    # The exporter's optimizer prints every pass to stdout; keep the CLI output readable.
    with contextlib.redirect_stdout(io.StringIO()):
        torch.onnx.export(
            module, example, str(path), dynamo=True, input_names=input_names,
            output_names=["stylized"], dynamic_shapes=shapes, opset_version=18, verbose=False,
            external_data=False,  # one self-contained file per network (< 2 GB)
        )


def export_error(module, path: Path, inputs: list[tuple]) -> float:
    """Max |exported ONNX - torch module| over a few input sizes (dynamic shapes exercised)."""
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    worst = 0.0
    for args in inputs:
        with torch.no_grad():
            ref = module(*args).numpy()
        out = session.run(None, {n: a.numpy() for n, a in zip(names, args, strict=True)})[0]
        worst = max(worst, float(np.abs(out - ref).max()))
    return worst


def resolve_checkpoint(source: str, workdir: Path) -> Path:
    """A local path as is; an ``s3://`` URI downloaded atomically through the pipeline's helper."""
    if source.startswith("s3://"):
        from tasks import download_s3_object

        return download_s3_object(source, workdir / "checkpoints" / Path(source).name)
    return Path(source)


def plan_catalog(
    checkpoints: list[str], aliases: dict[str, str], workdir: Path
) -> tuple[Catalog, dict[str, Path]]:
    """What the model will serve, known before any export (so an unchanged rerun is instant)."""
    from neuralstyle import weights
    from neuralstyle.networks import load_transformer_checkpoint

    catalog = Catalog(aliases=aliases)
    paths: dict[str, Path] = {}
    for source in checkpoints:
        name = validate_network_name(Path(source).stem.lower())
        if name in catalog.networks or name in aliases:
            raise ValueError(f"checkpoint {source}: the style name {name!r} is already taken")
        paths[name] = resolve_checkpoint(source, workdir)
        if not paths[name].is_file():
            raise FileNotFoundError(f"checkpoint {source} does not exist")
        load_transformer_checkpoint(paths[name])  # fail before the slow exports, not after
        sha = weights.sha256_file(paths[name])
        catalog.networks[name] = {"file": f"{name}.onnx", "source": source, "sha256": sha}
    for alias in aliases:
        catalog.resolve(alias)  # a bad alias fails packaging, not a request later
    return catalog, paths


def build_networks(
    staging: Path, catalog: Catalog, checkpoint_paths: dict[str, Path]
) -> tuple[dict[str, float], dict[str, str]]:
    """Rebuild, prove and export every network into ``staging``; returns metrics and params."""
    import torch

    from neuralstyle import samples, weights
    from neuralstyle.networks import UnitRangeTransformerNet, load_transformer_checkpoint

    metrics: dict[str, float] = {}
    source_path = weights.locate(weights.MULTISTYLE26)
    net = weights.load_multistyle26(source_path)
    photos = {
        "astronaut": samples.sample_rgb("astronaut"),
        "chelsea": samples.sample_rgb("chelsea"),
    }
    metrics["parity_max_abs_diff"] = parity_against_original(net, source_path, photos)
    if metrics["parity_max_abs_diff"] > PARITY_TOLERANCE:
        raise RuntimeError(
            f"rebuilt network differs from the original graph by {metrics['parity_max_abs_diff']:.2e}"
            f" > {PARITY_TOLERANCE}: refusing to package"
        )
    w7 = Catalog().resolve("7").weights
    example = (torch.rand(1, 3, 64, 96), torch.from_numpy(w7))
    export_onnx(net, example, staging / catalog.multistyle_file, ["image", "style_weights"])
    checks = [(torch.rand(1, 3, h, w), torch.from_numpy(w7)) for h, w in ((97, 131), (128, 128))]
    metrics["export_max_abs_diff"] = export_error(net, staging / catalog.multistyle_file, checks)
    params = {
        "weight_source": weights.MULTISTYLE26.source,
        "weight_sha256": weights.MULTISTYLE26.sha256,
    }
    for name, path in checkpoint_paths.items():
        module = UnitRangeTransformerNet(load_transformer_checkpoint(path)).eval()
        onnx_path = staging / catalog.networks[name]["file"]
        export_onnx(module, (torch.rand(1, 3, 64, 96),), onnx_path, ["image"])
        metrics[f"export_max_abs_diff_{name}"] = export_error(
            module, onnx_path, [(c[0],) for c in checks]
        )
        params[f"checkpoint_{name}_sha256"] = catalog.networks[name]["sha256"]
        params[f"checkpoint_{name}_source"] = catalog.networks[name]["source"]
    worst_export = max(v for k, v in metrics.items() if k.startswith("export_max_abs_diff"))
    if worst_export > EXPORT_TOLERANCE:
        raise RuntimeError(f"ONNX export differs from PyTorch by {worst_export:.2e} > {EXPORT_TOLERANCE}")
    (staging / "catalog.json").write_text(catalog.to_json())
    return metrics, params


def fast_vs_exact(exact: np.ndarray, fast: np.ndarray) -> tuple[float, float]:
    """(PSNR in dB, mean |difference| in levels) between two uint8 images."""
    diff = exact.astype(np.float64) - fast.astype(np.float64)
    mse = float((diff**2).mean())
    psnr = 10.0 * np.log10(255.0**2 / mse) if mse > 0 else float("inf")
    return psnr, float(np.abs(diff).mean())


def check_fast_quality(staging: Path, catalog: Catalog) -> tuple[dict, dict[str, float]]:
    """Which styles may run fast: each style and named network, fast vs exact on the sample photos.

    Returns the record the model ships (``quality.json``) and the metrics to log. On a CPU
    without bf16, fast is exact, nothing can be checked, and the record lets no style run bf16
    wherever the version is later served.
    """
    from neuralstyle import imaging, runtime, samples
    from neuralstyle.pyfunc_model import SIZE_MULTIPLE, pad_to_multiple
    from neuralstyle.styles import style_name

    record: dict = {"checked": runtime.fast_precision(), "min_psnr_db": FAST_MIN_PSNR_DB,
                    "max_mean_levels": FAST_MAX_MEAN_LEVELS, "photos": list(samples.SAMPLES),
                    "styles": {}}
    if record["checked"] == runtime.FP32:
        log.warning("this CPU has no bf16 (AMX or AVX-512 BF16): fast runs fp32, no style checked")
        return record, {}
    # As served: uint8 pixels, padded to a multiple of 4 (Engine.run).
    photos = [np.ascontiguousarray(pad_to_multiple(samples.sample_rgb(name), SIZE_MULTIPLE)[None])
              for name in samples.SAMPLES]
    jobs = [(style_name(i), None, {"style_weights": catalog.resolve(str(i)).weights})
            for i in range(N_STYLES)]
    jobs += [(name, name, {}) for name in sorted(catalog.networks)]
    compiled: dict = {}
    metrics: dict[str, float] = {}
    for label, network, extra in jobs:
        file = catalog.networks[network]["file"] if network else catalog.multistyle_file
        if file not in compiled:
            compiled[file] = [runtime.compile_network(staging / file, p, pixels_input="image")
                              for p in ("exact", "fast")]
        exact, fast = compiled[file]
        worst_psnr, worst_mean = float("inf"), 0.0
        for x in photos:
            feeds = {"image": x, **extra}
            a, b = (imaging.to_uint8(n.run(feeds)[0][0]) for n in (exact, fast))
            psnr, mean = fast_vs_exact(a, b)
            worst_psnr, worst_mean = min(worst_psnr, psnr), max(worst_mean, mean)
        ok = bool(worst_psnr >= FAST_MIN_PSNR_DB and worst_mean <= FAST_MAX_MEAN_LEVELS)
        record["styles"][label] = {"psnr_db": round(float(worst_psnr), 2),
                                   "mean_levels": round(float(worst_mean), 3),
                                   "fast": ok}
        metrics[f"fast_psnr_db.{label}"] = worst_psnr
        metrics[f"fast_mean_levels.{label}"] = worst_mean
    metrics["fast_styles"] = float(sum(v["fast"] for v in record["styles"].values()))
    metrics["fast_styles_served_exact"] = float(len(jobs) - metrics["fast_styles"])
    return record, metrics


def fingerprint(catalog: Catalog) -> str:
    """Identity of a model version: weights, extra checkpoints, style map, serving code."""
    from neuralstyle import weights

    payload = {
        "weights": weights.MULTISTYLE26.sha256,
        "catalog": json.loads(catalog.to_json()),
        "code": code_version(),
        "requirements": serving_requirements(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def experiment_id_for(client, name: str) -> str:
    """The id of experiment ``name``, created when missing."""
    found = client.get_experiment_by_name(name)
    return found.experiment_id if found is not None else client.create_experiment(name)


def find_existing(client, name: str, fp: str):
    """The registered version with this fingerprint, if any."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name='{name}'")
    except MlflowException:
        return None
    for version in versions:
        if version.tags.get("fingerprint") == fp:
            return version
    return None


def contact_sheet(staging: Path, catalog: Catalog, photo: np.ndarray, path: Path) -> None:
    """Every style rendered by the served networks, exact and fast side by side, with the original."""
    from PIL import Image, ImageDraw

    from neuralstyle import imaging
    from neuralstyle.pyfunc_model import Engine

    engine = Engine(staging)
    pixels = imaging.to_uint8(imaging.fit_within(photo.astype(np.float32) / 255.0, 256, "sample photo"))
    rgb = pixels.astype(np.float32) / 255.0
    specs = [str(i) for i in range(N_STYLES)] + sorted(catalog.networks)
    cells = [("original", rgb, rgb)]
    for spec in specs:
        style = catalog.resolve(spec)
        exact, _ = engine.run(pixels, style, "exact")
        fast, ran = engine.run(pixels, style, "fast")
        quality = engine.quality.get("styles", {}).get(style.label, {})
        if "psnr_db" not in quality:
            note = f"fast {ran}"
        elif quality["fast"]:
            note = f"fast {ran} {quality['psnr_db']:.1f} dB"
        else:
            note = f"fast {ran} (bf16 missed: {quality['psnr_db']:.1f} dB)"
        cells.append((f"{style.label}: exact | {note}", exact, fast))
    cols = 4
    rows = -(-len(cells) // cols)
    th, tw = rgb.shape[:2]
    cw = 2 * tw + 8
    sheet = Image.new("RGB", (cols * cw, rows * (th + 16)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (label, left, right) in enumerate(cells):
        x, y = (i % cols) * cw, (i // cols) * (th + 16)
        sheet.paste(Image.fromarray(imaging.to_uint8(left)), (x, y))
        sheet.paste(Image.fromarray(imaging.to_uint8(right)), (x + tw, y))
        draw.text((x + 4, y + th + 2), label, fill="black")
    sheet.save(path)


def input_example() -> tuple:
    """A small real request (sample photo at 64 px) so the UI and serving docs show real input."""
    import base64

    import pandas as pd

    from neuralstyle import imaging, samples

    rgb = imaging.fit_within(samples.sample_rgb("chelsea").astype(np.float32) / 255, 64, "sample")
    data = base64.b64encode(imaging.encode_image(rgb, "jpeg", 85)).decode()
    return pd.DataFrame({"image": [data], "style": ["7"]})


def signature():
    """Inputs, outputs and per-request params of the contract in DESIGN.md."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    from neuralstyle.pyfunc_model import DEFAULT_PARAMS

    dtypes = {int: "long", float: "double", bool: "boolean", str: "string"}
    return ModelSignature(
        inputs=Schema([ColSpec("string", "image"), ColSpec("string", "style")]),
        outputs=Schema([
            ColSpec("string", "image"), ColSpec("long", "width"), ColSpec("long", "height"),
            ColSpec("string", "style"), ColSpec("string", "model"), ColSpec("string", "precision"),
        ]),
        params=ParamSchema(
            [ParamSpec(k, dtypes[type(v)], v) for k, v in DEFAULT_PARAMS.items()]
        ),
    )


def package_models(
    model_name: str = config.DEFAULT_MODEL_NAME,
    alias: str = config.DEFAULT_ALIAS,
    checkpoints: list[str] | None = None,
    style_map: str | None = None,
    force: bool = False,
    tracking_uri: str | None = None,
    experiment: str = config.DEFAULT_EXPERIMENT,
) -> PackageResult:
    """Build, verify, export, log and register; reuse an identical existing version."""
    import mlflow
    from mlflow import MlflowClient

    from neuralstyle import samples, weights

    started = time.perf_counter()
    aliases = load_style_map(style_map)
    with config.mlflow_scope(tracking_uri), tempfile.TemporaryDirectory(prefix="stylize-package-") as tmp:
        client = MlflowClient()
        catalog, checkpoint_paths = plan_catalog(list(checkpoints or []), aliases, Path(tmp))
        fp = fingerprint(catalog)
        existing = find_existing(client, model_name, fp)
        if existing is not None and not force:
            log.info("unchanged: %s version %s already holds these weights and code",
                     model_name, existing.version)
            return PackageResult(model_name, existing.version, False, existing.run_id, {}, fp)
        staging = Path(tmp) / "networks"
        staging.mkdir()
        metrics, params = build_networks(staging, catalog, checkpoint_paths)
        (staging / IDENTITY_FILE).write_text(json.dumps({"fingerprint": fp}))
        quality, quality_metrics = check_fast_quality(staging, catalog)
        (staging / QUALITY_FILE).write_text(json.dumps(quality, indent=2, sort_keys=True))
        metrics.update(quality_metrics)
        # Under `mlflow run` the run (and its experiment, --experiment-name) already exists and
        # MLFLOW_RUN_ID names it; otherwise our experiment, without mlflow.set_experiment (which
        # would export MLFLOW_EXPERIMENT_ID to every later subprocess).
        experiment_id = None if os.environ.get("MLFLOW_RUN_ID") else experiment_id_for(client, experiment)
        with mlflow.start_run(run_name="package_models", experiment_id=experiment_id) as run:
            mlflow.log_params({
                **params, "model_name": model_name, "alias": alias,
                "styles": ",".join(catalog.names()), "code_version": code_version(),
                "git_commit": git_commit(), "force": force,
            })
            sheet = Path(tmp) / "contact_sheet.png"
            contact_sheet(staging, catalog, samples.sample_rgb("chelsea"), sheet)
            mlflow.log_artifact(str(sheet))
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(PACKAGE_DIR / "model_code.py"),
                code_paths=[str(PACKAGE_DIR)],
                artifacts={"networks": str(staging)},
                signature=signature(),
                input_example=input_example(),
                pip_requirements=serving_requirements(),
                registered_model_name=model_name,
            )
            version = str(info.registered_model_version)
            tags = {
                "weight_sha256": weights.MULTISTYLE26.sha256,
                "weight_source": weights.MULTISTYLE26.source,
                "code_version": code_version(),
                "git_commit": git_commit(),
                "fingerprint": fp,
                "styles": ",".join(catalog.names()),
                "fast_checked": quality["checked"],
                "served_exact": ",".join(k for k, v in quality["styles"].items() if not v["fast"]),
            }
            for key, value in tags.items():
                client.set_model_version_tag(model_name, version, key, value)
            client.set_registered_model_alias(model_name, alias, version)
            metrics["packaging_seconds"] = time.perf_counter() - started
            metrics["model_size_mb"] = _dir_size(staging) / 1e6
            mlflow.log_metrics(metrics)
        return PackageResult(model_name, version, True, run.info.run_id, metrics, fp)


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())

