"""What a stylize run shows in the MLflow UI: a readable name, a note, the model version it used
(as MLflow's own model link), the input beside the result, and for a batch a contact sheet of
the results and a table of the failures.

The pipeline (``tasks/run.py``) hands over plain records; nothing here imports ``tasks``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neuralstyle.ui import model_card

SHEET_LIMIT = 48  # photos on a batch's contact sheet (the rest are counted, not shown)
RESULTS_SHEET = "results_contact_sheet.png"
FAILURES_TABLE = "failures.json"


@dataclass(frozen=True)
class PhotoRecord:
    """One photo of the run: where it came from, the local input and result files, the outcome."""

    image: str
    input_path: Path | None
    output_path: Path | None
    ok: bool
    reason: str = ""
    model: tuple[str, str] | None = None  # (name, version) the result's lineage names


@dataclass(frozen=True)
class UsedModel:
    """The registered version a model URI resolved to."""

    name: str
    version: str
    model_id: str | None


_ALIAS = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/]+)/?$")
_NUMBER = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)/?$")


def resolve_version(client: Any, model_uri: str) -> UsedModel | None:
    """``models:/name@alias`` or ``models:/name/N`` -> its version now; None for other URIs."""
    alias, number = _ALIAS.match(model_uri), _NUMBER.match(model_uri)
    if alias:
        mv = client.get_model_version_by_alias(alias["name"], alias["alias"])
    elif number:
        mv = client.get_model_version(number["name"], number["version"])
    else:
        return None
    # MLflow 3 registers a logged model: its id is in model_id, or in a source ``models:/m-...``.
    model_id = getattr(mv, "model_id", None)
    if not model_id and (mv.source or "").startswith("models:/m-"):
        model_id = mv.source.removeprefix("models:/").strip("/")
    return UsedModel(mv.name, str(mv.version), model_id)


def link_model(client: Any, run_id: str, used: UsedModel) -> None:
    """The run's "Logged models" input: MLflow's own link to the version's model page."""
    from mlflow.entities import LoggedModelInput

    if used.model_id:
        client.log_inputs(run_id, models=[LoggedModelInput(used.model_id)])
    client.set_tag(run_id, "model", f"{used.name} v{used.version}")


def log_photos(client: Any, run_id: str, photos: list[PhotoRecord]) -> None:
    """One photo: ``input/`` beside ``result/``. Many: a contact sheet and the failures table."""
    if len(photos) == 1:
        photo = photos[0]
        if photo.input_path is not None and photo.input_path.is_file():
            client.log_artifact(run_id, str(photo.input_path), "input")
        return
    failures = [p for p in photos if not p.ok]
    if failures:
        client.log_table(run_id, {"image": [p.image for p in failures],
                                  "reason": [p.reason for p in failures]}, FAILURES_TABLE)
    done = [p for p in photos if p.ok and p.output_path is not None and p.output_path.is_file()]
    if done:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="stylize-run-") as tmp:
            sheet = Path(tmp) / RESULTS_SHEET
            results_sheet(done, sheet, len(photos))
            client.log_artifact(run_id, str(sheet))


def results_sheet(done: list[PhotoRecord], path: Path, total: int) -> None:
    """The batch's results as one picture, each captioned with its source photo."""
    from neuralstyle.model import imaging

    cells = []
    for photo in done[:SHEET_LIMIT]:
        data = Path(photo.output_path).read_bytes()  # type: ignore[arg-type]
        rgb = imaging.decode_image(data, str(photo.output_path), model_card.TILE)
        rgb = imaging.fit_within(rgb, model_card.TILE, str(photo.output_path))
        cells.append(([Path(photo.image.rstrip("/")).name, Path(photo.output_path).name], rgb))
    if total > len(cells):
        note = f"{len(cells)} of {total} photos shown"
        cells[-1] = (cells[-1][0][:1] + [note], cells[-1][1])
    model_card.contact_sheet(cells, path)


def run_note(style: str, photos: list[PhotoRecord], used: UsedModel | None, executor: str,
             server_url: str | None, model_uri: str) -> str:
    """The run's description: what went in, with which model, what came out."""
    ok = sum(p.ok for p in photos)
    if used is not None:
        model = (f"**{used.name} version {used.version}** (`{model_uri}`, "
                 f"[open the version](#/models/{used.name}/versions/{used.version}))")
    elif executor == "server":
        model = f"the model served at `{server_url}` (its results name no registered version)"
    else:
        model = f"`{model_uri}`"
    lines = [f"Stylized with style `{model_card.style_label(style)}` by {model}, executor "
             f"`{executor}`: {ok} of {len(photos)} photo{'s' if len(photos) != 1 else ''} done."]
    if len(photos) == 1:
        photo = photos[0]
        lines.append(f"\n* input: `{photo.image}` (artifact `input/`)")
        if photo.ok:
            lines.append(f"* result: `{photo.output_path}` (artifact `result/`)")
        else:
            lines.append(f"* failed: {photo.reason}")
    else:
        lines.append(f"\nResults: `{RESULTS_SHEET}`" + (
            f"; failures: `{FAILURES_TABLE}`" if ok < len(photos) else ""))
    return "\n".join(lines)


def how_to_see(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """The line that tells a user where the run is: a tracking server's page, else ``mlflow ui``."""
    page = f"#/experiments/{experiment_id}/runs/{run_id}"
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {tracking_uri.rstrip('/')}/{page}"
    return (f"mlflow ui --backend-store-uri {tracking_uri}, then open "
            f"http://127.0.0.1:5000/{page}")


def default_experiment_id(client: Any) -> str | None:
    """The packaging experiment, for a stylize run started outside ``mlflow run``.

    The UI lists a run's model link ("Logged models", "Registered models") only when the model
    was logged in the run's own experiment, so stylize runs go beside the packaging runs. None
    when the caller chose: ``MLFLOW_RUN_ID``, ``MLFLOW_EXPERIMENT_NAME`` or ``_ID`` set. The
    environment is left as it was (``mlflow.set_experiment`` would export the id).
    """
    import os

    from neuralstyle import config

    if any(os.environ.get(k) for k in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME",
                                       "MLFLOW_EXPERIMENT_ID")):
        return None
    found = client.get_experiment_by_name(config.DEFAULT_EXPERIMENT)
    if found is not None:
        return found.experiment_id
    return client.create_experiment(config.DEFAULT_EXPERIMENT)


def used_version(client: Any, photos: list[PhotoRecord], executor: str,
                 model_uri: str) -> UsedModel | None:
    """The version that made the results: from their lineage (the model reports its
    fingerprint, whatever runs it), else what ``model_uri`` resolves to for the executors that
    load it themselves (local, docker); None for a server whose results say nothing."""
    named = {p.model for p in photos if p.model is not None}
    try:
        if len(named) == 1:
            name, version = named.pop()
            return resolve_version(client, f"models:/{name}/{version}")
        if not named and executor in ("local", "docker"):
            return resolve_version(client, model_uri)
    except Exception:  # not registered (any more): the note says what the run was given
        return None
    return None


def describe_stylize_run(
    client: Any,
    run_id: str,
    *,
    image: str,
    style: str,
    batch: bool,
    photos: list[PhotoRecord],
    executor: str,
    model_uri: str,
    server_url: str | None = None,
) -> UsedModel | None:
    """Name, note, model link and pictures of a stylize run; returns the version it linked."""
    run = client.get_run(run_id)
    model_card.describe_experiment(client, run.info.experiment_id, model_card.EXPERIMENT_NOTE)
    client.update_run(run_id, name=model_card.stylize_run_name(image, style, len(photos) if batch
                                                               else None))
    used = used_version(client, photos, executor, model_uri)
    if used is not None:
        link_model(client, run_id, used)
    log_photos(client, run_id, photos)
    client.set_tag(run_id, model_card.NOTE_TAG,
                   run_note(style, photos, used, executor, server_url, model_uri))
    return used
