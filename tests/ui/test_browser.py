"""What a person sees in a real browser: the MLflow UI on a fresh registry, and the try-it page.

Debian's chromium (``apt-get install -y chromium``) driven by Playwright from PyPI with
``executable_path``; Playwright's own browser download is never used. ``STYLIZE_SCREENSHOTS=<dir>``
keeps the screenshots (``make screenshots`` refreshes the ones in docs/screenshots/).
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from PIL import Image

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.integration]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--disable-sync"]
# MLflow 3.17's UI opens its assistant panel on a first visit; a person closes it once.
CLOSE_ASSISTANT = "localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');" \
                  "localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');"
NOT_AN_IMAGE = b"hello, I am text, not a photo\n"


def shot(page, name: str, tmp_path: Path, full_page: bool = False) -> Path:
    """Screenshot into the test's folder, and into $STYLIZE_SCREENSHOTS when set."""
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    keep = os.environ.get("STYLIZE_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(keep) / path.name)
    return path


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium under Playwright; a missing browser fails under CI=true."""
    if not Path(CHROMIUM).is_file():
        reason = f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.add_init_script(CLOSE_ASSISTANT)
    page = context.new_page()
    page.set_default_timeout(60_000)
    yield page
    context.close()


@pytest.fixture(scope="module")
def mlflow_ui(registry, tmp_path_factory) -> Iterator[str]:
    """``mlflow ui`` on the test registry, on 127.0.0.1; its whole process group stopped after."""
    from neuralstyle.run.serving import Server, free_port

    port = free_port()
    log = tmp_path_factory.mktemp("mlflow-ui") / "ui.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", registry.tracking_uri,
             "-h", "127.0.0.1", "-p", str(port)],
            cwd=registry.root, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, env={**os.environ, "PATH": os.pathsep.join(
                [str(Path(sys.executable).parent), os.environ.get("PATH", "")])},
        )
    server = Server(f"http://127.0.0.1:{port}", process, log)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if requests.get(f"{server.url}/health", timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            assert server.alive(), f"mlflow ui exited:\n{server.log_tail()}"
            assert time.monotonic() < deadline, f"mlflow ui did not start:\n{server.log_tail()}"
            time.sleep(0.5)
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="module")
def stylize_run(registry, tmp_path_factory) -> str:
    """One photo stylized by the pipeline with the registered model (local executor): its run."""
    import mlflow

    from neuralstyle.builder.samples import sample_jpeg
    from tasks.run import main

    folder = tmp_path_factory.mktemp("stylize-run")
    photo = folder / "chelsea.jpg"
    photo.write_bytes(sample_jpeg("chelsea"))
    assert main(["--image", str(photo), "--style", "favourite", "--output",
                 str(folder / "chelsea-favourite.jpg"), "--tracking-uri",
                 registry.tracking_uri]) == 0
    runs = mlflow.MlflowClient(registry.tracking_uri).search_runs(
        [e.experiment_id for e in mlflow.MlflowClient(registry.tracking_uri).search_experiments()],
        filter_string="attributes.run_name = 'chelsea -> favourite'")
    assert runs, "the stylize run is not named 'chelsea -> favourite'"
    return runs[0].info.run_id


def test_version_page_tells_the_versions_story(page, mlflow_ui, registry, tmp_path) -> None:
    page.goto(f"{mlflow_ui}/#/models/style-transfer/versions/{registry.version}")
    parity = page.get_by_text("Parity: PASS")
    parity.wait_for()
    description = page.locator("text=rebuilt network vs the original graph").first
    assert "≤ 0.001" in description.inner_text()
    # The styles table: an index with its alias, a blend alias.
    page.get_by_role("cell", name="favourite").wait_for()
    page.get_by_role("cell", name="blend 3:0.5,12:0.5").wait_for()
    page.get_by_text("curl -sS --fail-with-body", exact=False).first.wait_for()
    # The contact sheet preview inside the description is a loaded picture, not a broken link.
    preview = page.locator("img[src*='contact_sheet_preview']")
    preview.wait_for()
    page.wait_for_function(
        "() => { const i = document.querySelector(\"img[src*='contact_sheet_preview']\");"
        " return i && i.complete && i.naturalWidth > 0; }")
    assert preview.evaluate("i => i.naturalWidth") == 6 * 115
    # Short tags, a readable source run name.
    page.get_by_text(f"package v{registry.version}: 26 styles").first.wait_for()
    page.wait_for_timeout(500)
    shot(page, "version-page", tmp_path)
    page.get_by_role("heading", name="Contract").scroll_into_view_if_needed()
    page.wait_for_timeout(300)
    shot(page, "version-page-contract", tmp_path)


def test_registered_model_has_a_description_and_tags(page, mlflow_ui) -> None:
    page.goto(f"{mlflow_ui}/#/models/style-transfer")
    page.get_by_text("Neural style transfer as a versioned MLflow model").first.wait_for()
    page.get_by_text("Apache-2.0", exact=False).first.wait_for()


def test_packaging_runs_contact_sheet_is_legible(page, mlflow_ui, registry, tmp_path) -> None:
    import mlflow

    from neuralstyle.ui import model_card

    run_id = mlflow.MlflowClient(registry.tracking_uri).get_model_version(
        "style-transfer", registry.version).run_id
    experiment = mlflow.MlflowClient(registry.tracking_uri).get_run(run_id).info.experiment_id
    # As a person gets there: the link in the version's description.
    page.goto(f"{mlflow_ui}/#/models/style-transfer/versions/{registry.version}")
    link = page.get_by_role("link", name=model_card.CONTACT_SHEET).first
    href = link.get_attribute("href")  # MLflow opens description links in a new tab
    assert href.startswith("#/experiments/"), href
    page.goto(f"{mlflow_ui}/{href}")
    page.wait_for_url(f"**/experiments/{experiment}/runs/{run_id}/artifacts/"
                      f"{model_card.CONTACT_SHEET}**")
    page.wait_for_function(
        "() => [...document.images].some(i => i.complete && i.naturalWidth === 768)")
    natural, shown = page.evaluate(
        "() => { const i = [...document.images].find(i => i.naturalWidth === 768 && i.clientWidth);"
        " return [i.naturalWidth, i.clientWidth]; }")
    # 22 px captions shown at >= 75 % stay >= 16 px on screen.
    assert shown / natural >= 0.75, f"contact sheet shown at {shown}/{natural} px"
    page.get_by_text(model_card.CATALOG_ARTIFACT).first.wait_for()
    page.get_by_text(f"package v{registry.version}: 26 styles").first.wait_for()
    shot(page, "contact-sheet", tmp_path)


def test_experiment_opens_on_its_runs_table(page, mlflow_ui, registry) -> None:
    import mlflow

    from neuralstyle.ui import model_card

    experiment = mlflow.MlflowClient(registry.tracking_uri).get_experiment_by_name("style-transfer")
    assert experiment.tags[model_card.EXPERIMENT_KIND_TAG] == model_card.EXPERIMENT_KIND
    # MLflow 3.17 keeps a global GenAI / Model training switch (GenAI on a first visit): the
    # kind tag decides where the experiment opens once the switch says Model training.
    page.goto(f"{mlflow_ui}/#/experiments/{experiment.experiment_id}?workflowType=machine_learning")
    page.wait_for_url("**/runs**")
    page.get_by_text(f"package v{registry.version}: 26 styles").first.wait_for()


def test_stylize_run_links_its_model_version(page, mlflow_ui, registry, stylize_run,
                                             tmp_path) -> None:
    import mlflow

    run = mlflow.MlflowClient(registry.tracking_uri).get_run(stylize_run)
    page.goto(f"{mlflow_ui}/#/experiments/{run.info.experiment_id}/runs/{stylize_run}"
              "?workflowType=machine_learning")
    page.get_by_text("chelsea -> favourite").first.wait_for()
    page.get_by_text(f"style-transfer version {registry.version}").first.wait_for()
    # MLflow's own links: the logged model as the run's input, and its registered version.
    page.get_by_text("Logged models (1)").wait_for()
    page.locator("a[href*='/models/m-']", has_text="style-transfer").first.wait_for()
    page.locator(f"a[href$='#/models/style-transfer/versions/{registry.version}']",
                 has_text=f"v{registry.version}").first.wait_for()
    shot(page, "stylize-run", tmp_path)
    page.get_by_role("tab", name="Artifacts").click()
    page.get_by_text("input", exact=True).first.wait_for()
    page.get_by_text("result", exact=True).first.wait_for()


@pytest.mark.docker
def test_try_it_page_end_to_end(page, registry, docker_client, photos, tmp_path) -> None:
    import mlflow

    from neuralstyle.run.container import model_container

    with model_container(registry.model_uri, tracking_uri=registry.tracking_uri,
                         client=docker_client) as url:
        page.goto(f"{url}/")
        # The style list comes from the model's catalog: 26 built-ins, the blend alias and the
        # named painting the test registry ships (conftest: stain).
        page.wait_for_function("() => document.querySelectorAll('#style option').length >= 28")
        count = page.locator("#style option").count()
        assert page.locator("#style option[value='stain']").count() == 1
        fingerprint = mlflow.MlflowClient(registry.tracking_uri).get_model_version(
            "style-transfer", registry.version).tags["fingerprint"]
        assert page.locator("#model").inner_text().startswith(
            f"style-transfer {fingerprint[:12]}: {count} styles")
        assert "favourite" in page.locator("#style option[value='7']").inner_text()

        posted: list[str] = []  # the page sends the photo to the raw-image route, not as base64 JSON
        page.on("request", lambda r: posted.append(r.url.split("?")[0].rsplit("/", 1)[-1])
                if r.method == "POST" else None)
        source = tmp_path / "chelsea.jpg"
        source.write_bytes(photos["chelsea"])
        page.set_input_files("#photo", str(source))
        page.select_option("#style", "warm-blend")
        page.fill("#max-size", "400")
        page.locator("#preserve").check()
        page.click("#go")
        page.wait_for_function("() => { const r = document.getElementById('result');"
                               " return !r.hidden && r.complete && r.naturalWidth > 0; }",
                               timeout=120_000)
        assert page.locator("#error").is_hidden()
        from neuralstyle.model.imaging import fitted_size

        width, height = fitted_size(451, 300, 400, "chelsea")  # (400, 266)
        src = page.locator("#result").get_attribute("src")
        assert src.startswith("blob:") and posted == ["stylize"], (src, posted)
        data = bytes(page.evaluate("async (u) => Array.from(new Uint8Array("
                                   "await (await fetch(u)).arrayBuffer()))", src))
        result = Image.open(io.BytesIO(data))
        assert result.format == "JPEG" and result.size == (width, height)
        assert page.locator("#result").get_attribute("data-sha256") == hashlib.sha256(data).hexdigest()
        assert page.locator("#result").evaluate("i => [i.naturalWidth, i.naturalHeight]") == [
            width, height]
        assert page.locator("#download").get_attribute("download") == "chelsea-warm-blend.jpg"
        assert f"warm-blend, {width}x{height}" in page.locator("#result-info").inner_text()
        shot(page, "try-it", tmp_path)

        page.set_input_files("#photo", files=[{"name": "notes.jpg", "mimeType": "image/jpeg",
                                               "buffer": NOT_AN_IMAGE}])
        page.click("#go")
        error = page.locator("#error")
        error.wait_for(state="visible", timeout=60_000)
        text = error.inner_text()
        assert text.startswith("400: image (row 0) is not a JPEG/PNG/WebP image"), text
        assert page.locator("#result").is_hidden() and page.locator("#download").is_hidden()
        shot(page, "try-it-error", tmp_path)
