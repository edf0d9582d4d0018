"""Submit a result file to a Canvas LMS assignment, once.

    export CANVAS_API_TOKEN=...    # Canvas: Account > Settings > New access token
    luigi --module tasks SubmitToCanvas --course-id 123 --assignment-id 456 --file-path out/cat.jpg

Canvas's file upload for submissions takes three steps (ask for an upload slot, POST the bytes to
the slot with its signed parameters, confirm), then one more call submits the uploaded file.
The token comes from the environment only and goes only to the Canvas host: never to the upload
slot (often S3 or a file service), never into logs or error messages.
"""

from __future__ import annotations

import hashlib
import json
import logging
import mimetypes
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import luigi
import requests

from tasks.base import ForceableTask, LocalFileExists, local_input_path
from tasks.targets import SuffixAtomicLocalTarget

logger = logging.getLogger("luigi-interface.tasks")

TOKEN_ENV = "CANVAS_API_TOKEN"


class canvas(luigi.Config):  # noqa: N801  (Luigi config sections are named like this: [canvas])
    """The ``[canvas]`` section of luigi.cfg."""

    url = luigi.OptionalParameter(
        default=None,
        description="Canvas base URL, e.g. https://school.instructure.com (default: none)",
    )
    timeout = luigi.FloatParameter(
        default=60.0, description="seconds to wait for each Canvas response (default: 60)"
    )


class CanvasError(RuntimeError):
    """Canvas refused or could not be reached; the message never contains the token."""


def canvas_token() -> str:
    """The API token from ``CANVAS_API_TOKEN``: the only place it is read from."""
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise CanvasError(
            f"{TOKEN_ENV} is not set: create an access token in Canvas "
            "(Account > Settings > New access token) and export it"
        )
    return token


def _path_safe(value: str) -> str:
    """A parameter value usable as one path segment (ids may be sis_course_id:..., never a path)."""
    return re.sub(r"[^A-Za-z0-9._:-]", "_", value).lstrip(".") or "_"


def _redact(text: str, token: str) -> str:
    return text.replace(token, "[redacted]") if token else text


def _where(url: str) -> str:
    """A URL without its query: signed upload URLs carry credentials there."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def _same_origin(url: str, base: str) -> bool:
    a, b = urlsplit(url), urlsplit(base)
    return (a.scheme, a.hostname, a.port) == (b.scheme, b.hostname, b.port)


def _canvas_messages(response: requests.Response) -> str:
    """Canvas's own error text: ``errors`` as a list or a dict of lists, or ``message``."""
    try:
        body = response.json()
    except ValueError:
        return " ".join(response.text.split())[:300]
    found: list[str] = []

    def collect(value: Any) -> None:
        if isinstance(value, str):
            found.append(value)
        elif isinstance(value, dict):
            if "message" in value and isinstance(value["message"], str):
                found.append(value["message"])
            else:
                for item in value.values():
                    collect(item)
        elif isinstance(value, list):
            for item in value:
                collect(item)

    if isinstance(body, dict):
        collect(body.get("errors") or body.get("message") or body.get("error") or [])
    return "; ".join(found) or json.dumps(body)[:300]


def _request(
    session: requests.Session,
    method: str,
    url: str,
    step: str,
    token: str,
    timeout: float,
    **kwargs: Any,
) -> requests.Response:
    """One HTTP call with redirects left to us and connection errors reworded without secrets."""
    try:
        return session.request(method, url, timeout=timeout, allow_redirects=False, **kwargs)
    except requests.RequestException as err:
        raise CanvasError(
            _redact(
                f"Canvas {step}: {method} {_where(url)} failed: {type(err).__name__}: {err}", token
            )
        ) from None


def _expect_json(response: requests.Response, step: str, token: str) -> dict[str, Any]:
    """The JSON body of a 2xx response; otherwise a CanvasError carrying Canvas's message."""
    request = response.request
    where = f"{request.method} {_where(str(request.url))}"
    if not 200 <= response.status_code < 300:
        message = _canvas_messages(response)
        if 300 <= response.status_code < 400:
            target = _where(response.headers.get("Location", "?"))
            message = f"redirected to {target} (is [canvas] url right?)"
        raise CanvasError(
            _redact(
                f"Canvas {step}: {where} answered HTTP {response.status_code}: {message}", token
            )
        )
    try:
        body = response.json()
    except ValueError:
        raise CanvasError(
            f"Canvas {step}: {where} answered HTTP {response.status_code} without JSON"
        ) from None
    if not isinstance(body, dict):
        raise CanvasError(
            f"Canvas {step}: {where} answered with {type(body).__name__}, expected an object"
        )
    return body


@dataclass(frozen=True)
class _Canvas:
    """One submission's connection: the base URL, the token, the session and the timeout."""

    base: str
    token: str
    session: requests.Session
    timeout: float

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def request(self, method: str, url: str, step: str, **kwargs: Any) -> requests.Response:
        return _request(self.session, method, url, step, self.token, self.timeout, **kwargs)

    def json(self, response: requests.Response, step: str) -> dict[str, Any]:
        return _expect_json(response, step, self.token)


def _upload_slot(canvas: _Canvas, api: str, path: Path, content_type: str) -> tuple[str, dict, str]:
    """Step 1: tell Canvas about the file; it answers with a signed upload slot."""
    step = f"step 1 (asking for an upload slot for {path.name})"
    response = canvas.request(
        "POST", f"{api}/self/files", step, headers=canvas.auth,
        data={"name": path.name, "size": str(path.stat().st_size), "content_type": content_type},
    )
    slot = canvas.json(response, step)
    if not slot.get("upload_url"):
        raise CanvasError(f"Canvas {step}: the answer has no upload_url")
    return slot["upload_url"], slot.get("upload_params") or {}, slot.get("file_param") or "file"


def _upload(canvas: _Canvas, path: Path, content_type: str, slot: tuple[str, dict, str]) -> Any:
    """Steps 2 and 3: POST the bytes with the slot's parameters (file last, no token), then
    confirm; returns the file id. A 3xx must be followed with a GET (or the file may never
    become available); a 201 carries the file JSON, or a Location to GET it from."""
    upload_url, upload_params, file_param = slot
    with open(path, "rb") as fh:
        response = canvas.request(
            "POST", upload_url, f"step 2 (uploading {path.name}, {path.stat().st_size} bytes)",
            data=upload_params, files={file_param: (path.name, fh, content_type)},
        )
    step = f"step 3 (confirming the upload of {path.name})"
    status = response.status_code
    body: dict[str, Any] = {}
    if 200 <= status < 300 and "json" in response.headers.get("Content-Type", ""):
        body = canvas.json(response, step)
    location = response.headers.get("Location")
    if 300 <= status < 400 or (200 <= status < 300 and "id" not in body and location):
        if not location:
            raise CanvasError(f"Canvas {step}: HTTP {status} without a Location to confirm")
        confirm_url = urljoin(upload_url, location)
        if not _same_origin(confirm_url, canvas.base):
            raise CanvasError(
                f"Canvas {step}: confirmation URL {_where(confirm_url)} is not on {canvas.base}; "
                "refusing to send the token there"
            )
        body = canvas.json(canvas.request("GET", confirm_url, step, headers=canvas.auth), step)
    elif not 200 <= status < 300:
        # A 4xx/5xx from the upload slot: raise with its message.
        canvas.json(response, f"step 2 (uploading {path.name})")
    if "id" not in body:
        raise CanvasError(f"Canvas {step}: no file id in the answer")
    return body["id"]


def _submit(canvas: _Canvas, api: str, file_id: Any) -> dict[str, Any]:
    """Step 4: submit the uploaded file."""
    step = f"step 4 (submitting file {file_id})"
    response = canvas.request(
        "POST", api, step, headers=canvas.auth,
        data={"submission[submission_type]": "online_upload",
              "submission[file_ids][]": str(file_id)},
    )
    submission = canvas.json(response, step)
    if "id" not in submission:
        raise CanvasError(f"Canvas {step}: no submission id in the answer")
    return submission


def submit_file_to_canvas(
    base_url: str,
    course_id: str | int,
    assignment_id: str | int,
    path: str | os.PathLike[str],
    *,
    token: str | None = None,
    session: requests.Session | None = None,
    timeout: float = 60.0,
) -> dict[str, Any]:
    """Upload ``path`` and submit it to the assignment as the token's user; return a receipt.

    The receipt (submission id, file id, attempt, file size and sha256) is what SubmitToCanvas
    stores so that a rerun does not submit again.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist or is not a file: nothing to submit")
    base = base_url.rstrip("/")
    if urlsplit(base).scheme not in ("http", "https"):
        raise CanvasError(f"Canvas URL {base_url!r} must start with https:// (or http://)")
    canvas = _Canvas(base, token or canvas_token(), session or requests.Session(), timeout)
    api = (
        f"{base}/api/v1/courses/{quote(str(course_id), safe=':')}"
        f"/assignments/{quote(str(assignment_id), safe=':')}/submissions"
    )
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    file_id = _upload(canvas, path, content_type, _upload_slot(canvas, api, path, content_type))
    submission = _submit(canvas, api, file_id)
    logger.info("submitted %s to %s course %s assignment %s: submission %s (attempt %s)",
                path, base, course_id, assignment_id, submission["id"], submission.get("attempt"))
    return {
        "canvas_url": base,
        "course_id": str(course_id),
        "assignment_id": str(assignment_id),
        "file_name": path.name,
        "file_size": path.stat().st_size,
        "file_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "file_id": file_id,
        "submission_id": submission["id"],
        "attempt": submission.get("attempt"),
        "submitted_at": submission.get("submitted_at"),
        "workflow_state": submission.get("workflow_state"),
    }


class SubmitToCanvas(ForceableTask):
    """Submit a file to a Canvas assignment; a JSON receipt marks it done so reruns do not resubmit.

    Give ``file_path``, or subclass and return the task that makes the file from ``requires()``.
    ``--force`` removes the receipt and submits again (a new attempt in Canvas).
    """

    course_id = luigi.Parameter(description="Canvas course id (or sis_course_id:...)")
    assignment_id = luigi.Parameter(description="Canvas assignment id")
    file_path = luigi.OptionalParameter(
        default=None,
        description="file to submit (default: none; subclasses submit their requires() output)",
    )
    canvas_url = luigi.OptionalParameter(
        default=None, description="Canvas base URL (default: [canvas] url in luigi.cfg)"
    )
    receipt_root = luigi.Parameter(
        default="data/canvas", description="folder for submission receipts (default: data/canvas)"
    )

    def base_url(self) -> str:
        """The Canvas base URL: the parameter, else ``[canvas] url``."""
        url = self.canvas_url or canvas().url
        if not url:
            raise CanvasError(
                "no Canvas URL: set url in the [canvas] section of luigi.cfg or pass --canvas-url"
            )
        return url.rstrip("/")

    def requires(self) -> luigi.Task:
        if not self.file_path:
            raise ValueError(
                f"{self}: set file_path, or subclass SubmitToCanvas and override requires()"
            )
        return LocalFileExists(path=self.file_path)

    def output(self) -> SuffixAtomicLocalTarget:
        host = urlsplit(self.base_url()).hostname or "canvas"
        name = local_input_path(self).name
        return SuffixAtomicLocalTarget(
            str(
                Path(
                    self.receipt_root,
                    _path_safe(host),
                    f"course-{_path_safe(self.course_id)}",
                    f"assignment-{_path_safe(self.assignment_id)}",
                )
                / f"{name}.submission.json"
            )
        )

    def run(self) -> None:
        receipt = submit_file_to_canvas(
            self.base_url(),
            self.course_id,
            self.assignment_id,
            local_input_path(self),
            timeout=canvas().timeout,
        )
        with self.output().open("w") as fh:
            json.dump(receipt, fh, indent=2)
            fh.write("\n")
