"""Build the networks, prove them, export them to ONNX and register one pyfunc model version.

One call of :func:`package_models` = one MLflow run: params (weight source and sha256), metrics
(parity errors, packaging time), a contact sheet of all 26 styles, and a registered version with
alias ``champion``. Identical weights + code + style map never pile up identical versions.
"""

from __future__ import annotations

import contextlib
import hashlib
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
from neuralstyle.builder import kinds
from neuralstyle.builder.export import EXPORT_TOLERANCE, check_exports
from neuralstyle.builder.kinds.multistyle import PARITY_TOLERANCE
from neuralstyle.codebase import MODEL_CODE_FILE, REPO_DIR, code_version, stage_shipped_code
from neuralstyle.model.contract import signature
from neuralstyle.model.pyfunc_model import IDENTITY_FILE, QUALITY_FILE
from neuralstyle.model.runtime import FAST_MAX_MEAN_LEVELS, FAST_MIN_PSNR_DB
from neuralstyle.model.styles import Catalog, load_style_map
from neuralstyle.ui import model_card

log = logging.getLogger(__name__)

@dataclass
class PackageResult:
    """What a packaging call did, for the CLI to print and tests to check."""

    name: str
    version: str
    created: bool
    run_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    fingerprint: str = ""
    alias: str = ""  # the alias the version got (the gate may make it challenger)
    evaluation: str = ""  # the evaluation gate's one-line verdict


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


def fast_vs_exact(exact: np.ndarray, fast: np.ndarray) -> tuple[float, float]:
    """(PSNR in dB, mean |difference| in levels) between two uint8 images."""
    diff = exact.astype(np.float64) - fast.astype(np.float64)
    mse = float((diff**2).mean())
    psnr = 10.0 * np.log10(255.0**2 / mse) if mse > 0 else float("inf")
    return psnr, float(np.abs(diff).mean())


def check_fast_quality(
    staging: Path, catalog: Catalog, network_kinds: list[kinds.NetworkKind]
) -> tuple[dict, dict[str, float]]:
    """Which styles may run fast: every kind's quality jobs (each style, named network and the
    arbitrary-style network), fast vs exact on the sample photos, as served.

    Returns the record the model ships (``quality.json``) and the metrics to log. On a CPU
    without bf16, fast is exact, nothing can be checked, and the record lets no style run bf16
    wherever the version is later served.
    """
    from neuralstyle.builder import samples
    from neuralstyle.model import imaging, runtime
    from neuralstyle.model.pyfunc_model import SIZE_MULTIPLE, pad_to_multiple

    record: dict = {"checked": runtime.fast_precision(), "min_psnr_db": FAST_MIN_PSNR_DB,
                    "max_mean_levels": FAST_MAX_MEAN_LEVELS, "photos": list(samples.SAMPLES),
                    "styles": {}}
    if record["checked"] == runtime.FP32:
        log.warning("this CPU has no bf16 (AMX or AVX-512 BF16): fast runs fp32, no style checked")
        return record, {}
    # As served: uint8 pixels, padded to a multiple of 4 (Engine.run).
    photos = [np.ascontiguousarray(pad_to_multiple(samples.sample_rgb(name), SIZE_MULTIPLE)[None])
              for name in samples.SAMPLES]
    jobs = [job for kind in network_kinds for job in kind.quality_jobs(staging, catalog)]
    compiled: dict = {}
    metrics: dict[str, float] = {}
    for job in jobs:
        if job.file not in compiled:
            compiled[job.file] = [runtime.compile_network(staging / job.file, p, pixels_input="image")
                                  for p in ("exact", "fast")]
        exact, fast = compiled[job.file]
        worst_psnr, worst_mean = float("inf"), 0.0
        for x in photos:
            for extra in job.feeds:
                feeds = {"image": x, **extra}
                a, b = (imaging.to_uint8(n.run(feeds)[0][0]) for n in (exact, fast))
                psnr, mean = fast_vs_exact(a, b)
                worst_psnr, worst_mean = min(worst_psnr, psnr), max(worst_mean, mean)
        ok = bool(worst_psnr >= FAST_MIN_PSNR_DB and worst_mean <= FAST_MAX_MEAN_LEVELS)
        record["styles"][job.label] = {"psnr_db": round(float(worst_psnr), 2),
                                       "mean_levels": round(float(worst_mean), 3), "fast": ok}
        record.update(job.record)
        if not ok:
            log.warning("%s misses the fast bound (%.1f dB, mean %.2f levels): served exact",
                        job.label, worst_psnr, worst_mean)
        metrics[f"fast_psnr_db.{job.label}"] = worst_psnr
        metrics[f"fast_mean_levels.{job.label}"] = worst_mean
    metrics["fast_styles"] = float(sum(v["fast"] for v in record["styles"].values()))
    metrics["fast_styles_served_exact"] = float(len(jobs) - metrics["fast_styles"])
    return record, metrics


def fingerprint(catalog: Catalog, network_kinds: list[kinds.NetworkKind]) -> str:
    """Identity of a model version: each kind's pinned weights, the catalog (extra checkpoints,
    named paintings and the style map, with their sha256), the serving code and requirements."""
    payload = {
        "kinds": {kind.name: kind.identity() for kind in network_kinds},
        "catalog": json.loads(catalog.to_json()),
        "code": code_version(),
        "requirements": serving_requirements(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def plan(inputs: kinds.PackageInputs, aliases: dict[str, str]) -> tuple[Catalog, list[kinds.NetworkKind]]:
    """What the model will serve, known before any export (so an unchanged rerun is instant)."""
    catalog = Catalog(aliases=aliases)
    network_kinds = kinds.for_inputs(inputs)
    for kind in network_kinds:
        kind.plan(catalog)
    for alias in aliases:
        catalog.resolve(alias)  # a bad alias fails packaging, not a request later
    return catalog, network_kinds


def build(staging: Path, catalog: Catalog, network_kinds: list[kinds.NetworkKind]
          ) -> tuple[dict[str, float], dict[str, str]]:
    """Every kind rebuilt, proven and exported into ``staging``, then completed; the catalog
    written beside the networks. Returns the metrics and params to log."""
    metrics: dict[str, float] = {}
    params: dict[str, str] = {}
    for kind in network_kinds:
        kind_metrics, kind_params = kind.build(staging, catalog)
        metrics.update(kind_metrics)
        params.update(kind_params)
    check_exports(metrics)
    (staging / "catalog.json").write_text(catalog.to_json())
    for kind in network_kinds:
        kind.after_build(staging, catalog)
    (staging / "catalog.json").write_text(catalog.to_json())
    return metrics, params


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
def temporary_registry(style_map: str | Path = config.DEFAULT_STYLE_MAP, given: str | None = None,
                       style_images: list[str] | None = None) -> Iterator[str]:
    """``given`` as is, else this checkout packaged into a throwaway sqlite registry (artifacts
    beside it, with ``style_images`` as named paintings): its URI, for benchmarks and docs
    pictures that must not touch the user's registry."""
    if given:
        yield given
        return
    with tempfile.TemporaryDirectory(prefix="stylize-registry-") as root:
        uri = f"sqlite:///{root}/mlflow.db"
        style_map = Path(style_map).resolve()  # before the chdir: the default is relative
        cwd = os.getcwd()
        os.chdir(root)  # artifacts go to <root>/mlruns
        try:
            package_models(style_map=str(style_map), tracking_uri=uri, style_images=style_images)
        finally:
            os.chdir(cwd)
        yield uri


@dataclass
class Staged:
    """A version built and checked in a temporary folder, ready to be logged and registered."""

    staging: Path  # the networks, catalog.json, identity.json, quality.json
    catalog: Catalog
    network_kinds: list[kinds.NetworkKind]
    fingerprint: str
    quality: dict
    metrics: dict[str, float]
    params: dict[str, str]


def package_models(
    model_name: str = config.DEFAULT_MODEL_NAME,
    alias: str = config.DEFAULT_ALIAS,
    checkpoints: list[str] | None = None,
    style_map: str | None = None,
    force: bool = False,
    tracking_uri: str | None = None,
    experiment: str = config.DEFAULT_EXPERIMENT,
    style_images: list[str] | None = None,
    force_champion: bool = False,
) -> PackageResult:
    """Build, verify, export, log and register; reuse an identical existing version.

    ``style_images`` are named paintings (``name=path`` or ``name=s3://...``): their style vectors
    ship with the version, so ``style=name`` works without sending the painting. A new version
    gets ``alias`` only when the evaluation gate finds it no worse than the version holding it
    (``neuralstyle.builder.evaluation``), or with ``force_champion``; else ``challenger``.
    """
    from mlflow import MlflowClient

    started = time.perf_counter()
    aliases = load_style_map(style_map)
    with config.mlflow_scope(tracking_uri), tempfile.TemporaryDirectory(prefix="stylize-package-") as tmp:
        client = MlflowClient()
        inputs = kinds.PackageInputs(Path(tmp), tuple(checkpoints or ()), tuple(style_images or ()))
        catalog, network_kinds = plan(inputs, aliases)
        fp = fingerprint(catalog, network_kinds)
        existing = find_existing(client, model_name, fp)
        if existing is not None and not force:
            log.info("unchanged: %s version %s already holds these weights and code",
                     model_name, existing.version)
            _finish_alias(client, model_name, alias, existing.version)
            return PackageResult(model_name, existing.version, False, existing.run_id, {}, fp, alias)
        staging = Path(tmp) / "networks"
        staging.mkdir()
        metrics, params = build(staging, catalog, network_kinds)
        (staging / IDENTITY_FILE).write_text(json.dumps({"fingerprint": fp}))
        quality, quality_metrics = check_fast_quality(staging, catalog, network_kinds)
        (staging / QUALITY_FILE).write_text(json.dumps(quality, indent=2, sort_keys=True))
        staged = Staged(staging, catalog, network_kinds, fp, quality, {**metrics, **quality_metrics}, params)
        version, run_id, promotion = log_and_register(client, staged, model_name, alias, force,
                                                      experiment, Path(tmp), started, force_champion)
        return PackageResult(model_name, version, True, run_id, staged.metrics, fp, promotion.alias,
                             promotion.summary())


def log_and_register(client, staged: Staged, model_name: str, alias: str, force: bool,
                     experiment: str, tmp: Path, started: float, force_champion: bool = False):
    """One MLflow run: params, pictures, the networks, the pyfunc model; then the registered
    version with its tags (one transaction), its evaluation and ``alias`` (or ``challenger``).
    Returns (version, run id, evaluation.Promotion)."""
    import mlflow

    from neuralstyle.builder import evaluation, samples, weights

    catalog, metrics = staged.catalog, staged.metrics
    # Under `mlflow run` the run (and its experiment, --experiment-name) already exists and
    # MLFLOW_RUN_ID names it; otherwise our experiment, without mlflow.set_experiment (which
    # would export MLFLOW_EXPERIMENT_ID to every later subprocess).
    experiment_id = None if os.environ.get("MLFLOW_RUN_ID") else experiment_id_for(client, experiment)
    with mlflow.start_run(run_name="package_models", experiment_id=experiment_id) as run:
        model_card.start_package_run(client, run.info, sys.argv[0])
        mlflow.log_params({
            **staged.params, "model_name": model_name, "alias": alias,
            "styles": ",".join(catalog.names()), "code_version": code_version(),
            "git_commit": git_commit(), "force": force,
        })
        # A tag, not a param: under `mlflow run -P force_champion=...` MLflow has already logged
        # the param as typed ("false"), and logging it again as False is refused.
        mlflow.set_tag("force_champion", str(force_champion).lower())
        model_card.log_pictures(staged.staging, catalog, samples.sample_rgb("chelsea"), tmp)
        for kind in staged.network_kinds:
            preview_metrics, pictures = kind.preview(staged.staging, catalog, tmp)
            metrics.update(preview_metrics)
            for picture in pictures:
                mlflow.log_artifact(str(picture))
        # Logged first, so the MLmodel records a URI that stays valid, not the temp folder.
        mlflow.log_artifacts(str(staged.staging), "networks")
        info = mlflow.pyfunc.log_model(
            name=model_name,
            python_model=str(MODEL_CODE_FILE),
            code_paths=[str(stage_shipped_code(tmp / "code"))],
            artifacts={"networks": f"runs:/{run.info.run_id}/networks"},
            signature=signature(),
            input_example=input_example(),
            pip_requirements=serving_requirements(),
            # What load_model(model_config=...) may override: {"streams": n} for a caller that
            # keeps n requests in flight (a clip in-process: LocalPredictor.with_streams).
            model_config={"streams": 0},
        )
        tags = {
            "weight_sha256": weights.MULTISTYLE26.sha256,
            "weight_source": weights.MULTISTYLE26.source,
            "code_version": code_version(),
            "git_commit": git_commit(),
            "fingerprint": staged.fingerprint,
            # (the short "styles" tag is the model card's, model_card.version_tags)
            "fast_checked": staged.quality["checked"],
            "served_exact": ",".join(k for k, v in staged.quality["styles"].items() if not v["fast"]),
        }
        # One request creates the version with its tags (one database transaction): a
        # registry failing mid-way leaves a whole version or none, never one without its
        # fingerprint that a rerun could not recognise.
        version = str(mlflow.register_model(info.model_uri, model_name, tags=tags).version)
        promotion = evaluation.evaluate_and_promote(client, catalog, model_name, alias, version,
                                                    force_champion)
        metrics["packaging_seconds"] = time.perf_counter() - started
        metrics["model_size_mb"] = _dir_size(staged.staging) / 1e6
        mlflow.log_metrics(metrics)
        model_card.finish_package_run(
            client, run.info, model_name, version, catalog, metrics,
            {**tags, "parity_bound": PARITY_TOLERANCE, "export_bound": EXPORT_TOLERANCE,
             "evaluation": promotion})
    return version, run.info.run_id, promotion


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

