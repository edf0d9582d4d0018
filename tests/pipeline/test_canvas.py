"""Canvas submission: the exact HTTP sequence, a secret token, Canvas's errors, no resubmits."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from urllib.parse import parse_qs

import luigi
import pytest
import responses
from luigi.execution_summary import LuigiStatusCode
from s3_fixtures import fresh_luigi, run  # noqa: F401  (fixtures are found by name)

from tasks import SubmitToCanvas, submit_file_to_canvas
from tasks.canvas import CanvasError

CANVAS = "https://canvas.test"
TOKEN = "7~s3cr3t-T0KEN-never-shown"
FILES = f"{CANVAS}/api/v1/courses/101/assignments/202/submissions/self/files"
SUBMIT = f"{CANVAS}/api/v1/courses/101/assignments/202/submissions"
UPLOAD = "https://uploads.files.test/upload"
CONFIRM = f"{CANVAS}/api/v1/files/555/create_success?uuid=abc"


@pytest.fixture
def token(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("CANVAS_API_TOKEN", TOKEN)
    return TOKEN


@pytest.fixture
def result_file(tmp_path: Path) -> Path:
    path = tmp_path / "out" / "cat-styled.jpg"
    path.parent.mkdir()
    path.write_bytes(b"\xff\xd8\xff styled jpeg \xff\xd9")
    return path


@pytest.fixture
def canvas_api() -> responses.RequestsMock:
    """No request leaves the process: an unregistered URL raises ConnectionError."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


def register_happy_path(mock: responses.RequestsMock) -> None:
    mock.post(
        FILES,
        json={
            "upload_url": UPLOAD,
            "upload_params": {
                "filename": "cat-styled.jpg",
                "content_type": "image/jpeg",
                "sig": "xyz",
            },
            "file_param": "file",
        },
    )
    mock.post(UPLOAD, status=302, headers={"Location": CONFIRM})
    mock.get(CONFIRM, json={"id": 555, "display_name": "cat-styled.jpg", "size": 22})
    mock.post(
        SUBMIT,
        json={
            "id": 9001,
            "attempt": 1,
            "workflow_state": "submitted",
            "submitted_at": "2026-11-24T22:00:00Z",
        },
    )


def task(result_file: Path, tmp_path: Path, **extra: object) -> SubmitToCanvas:
    return SubmitToCanvas(
        course_id="101",
        assignment_id="202",
        file_path=str(result_file),
        canvas_url=CANVAS,
        receipt_root=str(tmp_path / "receipts"),
        **extra,
    )


def test_the_recorded_request_sequence(
    token: str, result_file: Path, tmp_path: Path, canvas_api: responses.RequestsMock
) -> None:
    register_happy_path(canvas_api)
    submit = task(result_file, tmp_path)
    result = run(submit)
    assert result.status == LuigiStatusCode.SUCCESS, result.summary_text

    calls = [(c.request.method, c.request.url) for c in canvas_api.calls]
    assert calls == [("POST", FILES), ("POST", UPLOAD), ("GET", CONFIRM), ("POST", SUBMIT)]
    step1, step2, step3, step4 = (c.request for c in canvas_api.calls)

    # Step 1: name, size and content type, with the token.
    assert step1.headers["Authorization"] == f"Bearer {TOKEN}"
    assert parse_qs(step1.body) == {
        "name": ["cat-styled.jpg"],
        "size": [str(result_file.stat().st_size)],
        "content_type": ["image/jpeg"],
    }
    # Step 2: multipart, every upload_param before the file, and no token to the upload host.
    assert "Authorization" not in step2.headers
    assert step2.headers["Content-Type"].startswith("multipart/form-data")
    body = step2.body
    positions = [
        body.index(f'name="{field}"'.encode()) for field in ("filename", "content_type", "sig")
    ]
    file_at = body.index(b'name="file"; filename="cat-styled.jpg"')
    assert max(positions) < file_at
    assert result_file.read_bytes() in body
    # Step 3: the redirect is confirmed with a GET, authenticated, back on Canvas.
    assert step3.headers["Authorization"] == f"Bearer {TOKEN}"
    # Step 4: the submission names the uploaded file.
    assert step4.headers["Authorization"] == f"Bearer {TOKEN}"
    assert parse_qs(step4.body) == {
        "submission[submission_type]": ["online_upload"],
        "submission[file_ids][]": ["555"],
    }

    receipt = json.loads(Path(submit.output().path).read_text())
    assert receipt["submission_id"] == 9001 and receipt["file_id"] == 555
    assert receipt["file_name"] == "cat-styled.jpg"
    assert Path(submit.output().path).name == "cat-styled.jpg.submission.json"
    assert "canvas.test/course-101/assignment-202" in submit.output().path


def test_a_rerun_does_not_submit_again(
    token: str, result_file: Path, tmp_path: Path, canvas_api: responses.RequestsMock
) -> None:
    register_happy_path(canvas_api)
    assert run(task(result_file, tmp_path)).status == LuigiStatusCode.SUCCESS
    assert len(canvas_api.calls) == 4
    luigi.task_register.Register.clear_instance_cache()  # as a new `luigi` command would

    assert run(task(result_file, tmp_path)).status == LuigiStatusCode.SUCCESS
    assert len(canvas_api.calls) == 4  # the receipt says it is done: nothing sent

    assert run(task(result_file, tmp_path, force=True)).status == LuigiStatusCode.SUCCESS
    assert len(canvas_api.calls) == 8  # --force: a deliberate new attempt


def test_201_created_with_the_file_json_needs_no_confirmation(
    token: str, result_file: Path, canvas_api: responses.RequestsMock
) -> None:
    canvas_api.post(FILES, json={"upload_url": UPLOAD, "upload_params": {"k": "v"}})
    canvas_api.post(UPLOAD, status=201, json={"id": 777, "location": CONFIRM})
    canvas_api.post(SUBMIT, json={"id": 1, "attempt": 2})
    receipt = submit_file_to_canvas(CANVAS, 101, 202, result_file)
    assert [c.request.method for c in canvas_api.calls] == ["POST", "POST", "POST"]
    assert parse_qs(canvas_api.calls[2].request.body)["submission[file_ids][]"] == ["777"]
    assert receipt["file_id"] == 777 and receipt["attempt"] == 2


def test_a_canvas_4xx_is_surfaced_with_its_message(
    token: str,
    result_file: Path,
    tmp_path: Path,
    canvas_api: responses.RequestsMock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    canvas_api.post(
        FILES,
        status=403,
        json={
            "status": "unauthorized",
            "errors": [{"message": "user not authorized to perform that action"}],
        },
    )
    with pytest.raises(CanvasError) as info:
        submit_file_to_canvas(CANVAS, 101, 202, result_file)
    message = str(info.value)
    assert "HTTP 403" in message and "user not authorized to perform that action" in message
    assert FILES in message and "step 1" in message

    submit = task(result_file, tmp_path)
    assert run(submit).status == LuigiStatusCode.FAILED
    assert "user not authorized to perform that action" in caplog.text
    assert not Path(submit.output().path).exists()  # no receipt: a later run tries again


def test_validation_errors_in_a_dict_are_surfaced(
    token: str, result_file: Path, canvas_api: responses.RequestsMock
) -> None:
    register_happy_path(canvas_api)
    canvas_api.replace(
        responses.POST,
        SUBMIT,
        status=400,
        json={"errors": {"base": [{"message": "This assignment is locked"}]}},
    )
    with pytest.raises(CanvasError, match="step 4 .* HTTP 400: This assignment is locked"):
        submit_file_to_canvas(CANVAS, 101, 202, result_file)


def test_the_token_never_reaches_logs_errors_or_the_receipt(
    token: str,
    result_file: Path,
    tmp_path: Path,
    canvas_api: responses.RequestsMock,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    register_happy_path(canvas_api)
    submit = task(result_file, tmp_path)
    assert run(submit).status == LuigiStatusCode.SUCCESS
    receipt = Path(submit.output().path).read_text()
    # A Canvas that echoes the token back in an error must not get it into our message either.
    canvas_api.replace(
        responses.POST, SUBMIT, status=401, json={"errors": [{"message": f"bad token {TOKEN}"}]}
    )
    with pytest.raises(CanvasError) as info:
        submit_file_to_canvas(CANVAS, 101, 202, result_file)
    luigi.task_register.Register.clear_instance_cache()
    assert run(task(result_file, tmp_path, force=True)).status == LuigiStatusCode.FAILED

    assert "[redacted]" in str(info.value)
    out = capsys.readouterr()
    assert "bad token" in caplog.text  # the forced rerun's failure was logged ...
    for text in (caplog.text, str(info.value), repr(info.value), out.out, out.err, receipt):
        assert TOKEN not in text  # ... without the token


def test_a_missing_token_is_a_clear_error_and_sends_nothing(
    monkeypatch: pytest.MonkeyPatch, result_file: Path, canvas_api: responses.RequestsMock
) -> None:
    monkeypatch.delenv("CANVAS_API_TOKEN", raising=False)
    with pytest.raises(CanvasError, match="CANVAS_API_TOKEN is not set"):
        submit_file_to_canvas(CANVAS, 101, 202, result_file)
    assert len(canvas_api.calls) == 0


def test_the_token_is_not_sent_to_a_confirmation_url_off_canvas(
    token: str, result_file: Path, canvas_api: responses.RequestsMock
) -> None:
    canvas_api.post(FILES, json={"upload_url": UPLOAD, "upload_params": {}})
    canvas_api.post(UPLOAD, status=303, headers={"Location": "https://elsewhere.test/steal"})
    with pytest.raises(CanvasError, match="refusing to send the token"):
        submit_file_to_canvas(CANVAS, 101, 202, result_file)
    assert [c.request.url for c in canvas_api.calls] == [FILES, UPLOAD]


def test_a_missing_canvas_url_says_where_to_set_it(token: str, result_file: Path) -> None:
    submit = SubmitToCanvas(course_id="1", assignment_id="2", file_path=str(result_file))
    with pytest.raises(CanvasError, match=r"\[canvas\] section of luigi.cfg or pass --canvas-url"):
        submit.output()
