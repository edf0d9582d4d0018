"""deploy/kubernetes/ checked against the serving image it deploys, run as the Deployment says.

No cluster runs on these machines: the manifests are read, and the serving image is started with
the Deployment's env, user, CPU and memory limits and port. Every probe path and port must answer
as the probe expects (readiness 503 while the model warms, 200 after), the scrape annotation must
name a port and path that serve Prometheus text (a real Prometheus scrapes it under load), every
env var must be one the server reads, and a ``docker stop`` with the manifest's grace period must
drain nginx and the server: every request in flight answered, none accepted after, exit 0.
Figures are printed as ``[k8s]`` lines.
"""

from __future__ import annotations

import contextlib
import io
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
import yaml
from figures import reporter
from loadcheck import CLIENTS, assert_served_everyone
from oracle import decode_rgb
from PIL import Image
from promcheck import metrics, prometheus, promql, scrape_while_loaded, status_of, value

from bench.load import photo_jpegs, raw_bodies, request_bodies, run_load
from neuralstyle import config
from neuralstyle.builder.samples import sample_rgb
from neuralstyle.containers import images
from neuralstyle.run import server as service
from neuralstyle.run.serving import free_port

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "kubernetes"
TEST_LABEL = "org.stylize.test"
START_TIMEOUT_S = 180.0
ENTRYPOINT_MARGIN_S = 5  # serve_behind_nginx: drain + 5 s, then it kills what is left


report = reporter("k8s")


def manifests() -> dict[str, dict]:
    """Every object under deploy/kubernetes/, by kind."""
    found = {}
    for path in sorted(DEPLOY.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                found[doc["kind"]] = doc
    return found


def pod_container() -> dict:
    (container,) = manifests()["Deployment"]["spec"]["template"]["spec"]["containers"]
    return container


def manifest_env() -> dict[str, str]:
    return {e["name"]: e["value"] for e in pod_container().get("env", [])}


def cpu_cores(text: str) -> float:
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def env_readers(name: str) -> list[str]:
    """Where ``name`` is read: our code (outside READ_ENV's own list), uvicorn's CLI, MLflow, glibc."""
    readers = []
    server_source = Path(service.__file__).read_text()
    listed = server_source.split("READ_ENV = (", 1)[1].split(")", 1)[0]
    for path in sorted((REPO / "neuralstyle").rglob("*.py")):
        text = path.read_text()
        if path.name == "server.py":
            text = text.replace(listed, "")
        if f'"{name}"' in text:
            readers.append(str(path.relative_to(REPO)))
    if name.startswith("UVICORN_"):
        from uvicorn.main import main as uvicorn_cli

        options = {p.name.upper() for p in uvicorn_cli.params}
        if name.removeprefix("UVICORN_") in options:
            readers.append("uvicorn's command line (UVICORN_ prefix)")
    if name in config.SERVER_MALLOC_ENV:
        readers.append("glibc malloc (neuralstyle.config.SERVER_MALLOC_ENV)")
    if name.startswith("MLFLOW_"):
        import mlflow

        mlflow_dir = Path(mlflow.__file__).parent
        for relative in ("environment_variables.py", "models/container/__init__.py"):
            if name in (mlflow_dir / relative).read_text():
                readers.append(f"mlflow/{relative}")
    return readers


def test_manifests_fit_together_and_the_image() -> None:
    objects = manifests()
    assert set(objects) == {"Deployment", "Service", "HorizontalPodAutoscaler"}
    deployment, svc, hpa = objects["Deployment"], objects["Service"], objects["HorizontalPodAutoscaler"]
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert svc["spec"]["selector"].items() <= labels.items()
    container = pod_container()
    (port,) = container["ports"]
    assert port["containerPort"] == images.SERVING_PORT
    assert {p["targetPort"] for p in svc["spec"]["ports"]} <= {port["name"], port["containerPort"]}
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment"
    assert container["image"].split(":")[0] == images.SERVING_REPOSITORY
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == port["containerPort"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] in (port["name"], port["containerPort"]), probe
    security = pod["spec"]["securityContext"]
    assert security["runAsUser"] == security["runAsGroup"] == images.SERVING_UID


def test_every_env_var_the_deployment_sets_is_one_the_server_reads() -> None:
    env = manifest_env()
    unknown = sorted(set(env) - set(service.READ_ENV))
    assert not unknown, f"deploy/kubernetes sets {unknown}, which the server never reads"
    for name in env:
        assert env_readers(name), f"{name}: listed in READ_ENV but read nowhere"
    # The limits are the image's own (docs/serving.md): a manifest cannot drift from them.
    for name, value_ in env.items():
        if name in images.SERVING_ENV:
            assert value_ == images.SERVING_ENV[name], name
    # OpenVINO sizes its pool to the cores it sees; on a node those are not the pod's limit.
    assert int(env["STYLIZE_THREADS"]) == cpu_cores(pod_container()["resources"]["limits"]["cpu"])
    service.warm_sizes(env["STYLIZE_WARM_SIZES"])  # parses


def test_the_grace_period_covers_the_drain() -> None:
    spec = manifests()["Deployment"]["spec"]["template"]["spec"]
    pre_stop = pod_container()["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    drain = int(manifest_env().get("STYLIZE_DRAIN_SECONDS", images.SERVING_ENV["STYLIZE_DRAIN_SECONDS"]))
    needed = int(pre_stop[1]) + drain + ENTRYPOINT_MARGIN_S
    assert spec["terminationGracePeriodSeconds"] >= needed, (spec["terminationGracePeriodSeconds"], needed)


# --- against the running image ---------------------------------------------------------------


@pytest.fixture(scope="module")
def serving_image(docker_client, registry) -> str:
    return images.ensure_serving_image(registry.model_uri, registry.tracking_uri)


@contextlib.contextmanager
def as_deployed(docker_client, tag: str) -> Iterator[SimpleNamespace]:
    """The image run with the Deployment's env, user, limits and port; always removed."""
    container_spec = pod_container()
    limits = container_spec["resources"]["limits"]
    host_port = free_port()
    container = docker_client.containers.create(
        tag, environment=manifest_env(),
        user=f"{images.SERVING_UID}:{images.SERVING_UID}",
        nano_cpus=int(cpu_cores(limits["cpu"]) * 1e9),
        mem_limit=limits["memory"].replace("Gi", "g").replace("Mi", "m"),
        ports={images.SERVING_CONTAINER_PORT: ("127.0.0.1", host_port)},
        labels={TEST_LABEL: "tests/containers/test_kubernetes.py"},
    )
    try:
        container.start()
        yield SimpleNamespace(container=container, url=f"http://127.0.0.1:{host_port}")
    finally:
        container.remove(force=True)


@pytest.fixture(scope="module")
def deployed(docker_client, serving_image) -> Iterator[SimpleNamespace]:
    """One container as deployed, started (the probes' history in ``seen``); the last test stops it."""
    with as_deployed(docker_client, serving_image) as running:
        running.seen = wait_started(running)
        yield running


def probe_url(base: str, probe: dict) -> str:
    return f"{base}{probe['httpGet']['path']}"


def wait_started(running: SimpleNamespace) -> list[tuple[float, int, int]]:
    """Poll the startup and readiness probes until ready: (seconds, startup status, ready status)."""
    spec = pod_container()
    startup, readiness = probe_url(running.url, spec["startupProbe"]), probe_url(
        running.url, spec["readinessProbe"])
    seen = []
    started = time.monotonic()
    while True:
        running.container.reload()
        if running.container.status in ("exited", "dead"):
            pytest.fail(f"container exited:\n{running.container.logs(tail=40).decode(errors='replace')}")
        seen.append((time.monotonic() - started, status_of(startup), status_of(readiness)))
        if seen[-1][2] == 200:
            return seen
        if seen[-1][0] > START_TIMEOUT_S:
            pytest.fail(f"not ready in {START_TIMEOUT_S:.0f} s: {seen[-3:]}\n"
                        f"{running.container.logs(tail=40).decode(errors='replace')}")
        time.sleep(0.1)


def jpeg(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(sample_rgb("rocket")).resize((width, height)).save(out, "JPEG", quality=90)
    return out.getvalue()


@pytest.mark.docker
def test_probes_paths_and_scrape_answer_on_the_container_as_deployed(deployed, request) -> None:
    spec = pod_container()
    running = deployed  # one container for this test and the drain test after it
    seen = running.seen
    alive_first = next((t for t, alive, _ in seen if alive == 200), None)
    report(request, f"as deployed: startup probe 200 after {alive_first:.1f} s, readiness 200 "
                    f"after {seen[-1][0]:.1f} s")
    assert any(alive == 200 and ready == 503 for _, alive, ready in seen), (
        "readiness never held a started container out while it warmed", seen[-5:])
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        answer = requests.get(probe_url(running.url, spec[probe]), timeout=spec[probe].get(
            "timeoutSeconds", 1))
        assert answer.status_code == 200, (probe, answer.text[:200])
    annotations = manifests()["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == "/metrics"  # what metrics() reads
    samples = metrics(running.url)
    info = [dict(labels) for (name, labels) in samples if name == "stylize_model_info"]
    assert info and info[0]["version"] and len(info[0]["fingerprint"]) == 64
    assert value(samples, "stylize_ready") == 1
    # The raw route through nginx, and nothing private of the FastAPI app.
    raw = requests.post(f"{running.url}/stylize?style=7&format=png", data=jpeg(640, 427),
                        headers={"Content-Type": "image/jpeg"}, timeout=120)
    assert raw.status_code == 200 and raw.headers["Content-Type"] == "image/png"
    assert decode_rgb(raw.content).shape == (427, 640, 3)
    assert raw.headers["Stylize-Model-Version"] == info[0]["version"]
    bad = requests.post(f"{running.url}/stylize?style=7", data=b"not a photo",
                        headers={"Content-Type": "image/jpeg"}, timeout=60)
    assert bad.status_code == 400 and "not a JPEG/PNG/WebP" in bad.json()["message"]
    for private in ("/docs", "/openapi.json"):
        hidden = requests.get(f"{running.url}{private}", timeout=10)
        assert hidden.status_code == 404 and "ENDPOINT_NOT_FOUND" in hidden.text, private
    # 16 keep-alive clients over both routes through nginx, then a real Prometheus scrape.
    photos = photo_jpegs()
    result = run_load(running.url, clients=CLIENTS, seconds=10,
                      bodies=[*request_bodies(photos), *raw_bodies(photos)])
    report(request, f"container, both routes: {result.summary()}")
    assert_served_everyone(result)
    target = running.url.removeprefix("http://")
    with prometheus([target]) as prom:
        scrape_while_loaded(prom, target, [*request_bodies(photo_jpegs(256)),
                                           *raw_bodies(photo_jpegs(256))],
                            lambda line: report(request, line))
        assert promql(prom, f'stylize_model_info{{instance="{target}"}}')


@pytest.mark.docker
def test_docker_stop_drains_nginx_and_the_server(deployed, request) -> None:
    """Runs last: it stops the container the probe test used."""
    grace = manifests()["Deployment"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    running = deployed
    body = jpeg(1024, 683)
    answers: list = []

    def send() -> None:
        try:
            answers.append(requests.post(f"{running.url}/stylize?style=7&precision=exact",
                                         data=body, headers={"Content-Type": "image/jpeg"},
                                         timeout=120))
        except requests.RequestException as exc:
            answers.append(exc)

    threads = [threading.Thread(target=send) for _ in range(6)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while value(metrics(running.url), "stylize_photos_running") < 2:
        assert time.monotonic() < deadline, "requests never started"
        time.sleep(0.05)
    started = time.monotonic()
    stopper = threading.Thread(target=lambda: running.container.stop(timeout=grace))
    stopper.start()  # docker stop: SIGTERM, then SIGKILL after the grace period
    time.sleep(1.0)
    refused = []
    try:
        late = requests.post(f"{running.url}/stylize?style=7", data=body,
                             headers={"Content-Type": "image/jpeg"}, timeout=30)
        refused.append(late.status_code)
    except requests.RequestException as exc:
        refused.append(type(exc).__name__)
    for thread in threads:
        thread.join(timeout=120)
    stopper.join(timeout=grace + 10)
    seconds = time.monotonic() - started
    status = running.container.wait(timeout=10)["StatusCode"]
    logs = running.container.logs().decode(errors="replace")
    report(request, f"docker stop with 6 requests in flight at 1024x683: answers "
                    f"{[getattr(a, 'status_code', a) for a in answers]}, a new request got "
                    f"{refused[0]}, exit {status} after {seconds:.1f} s (grace {grace} s)")
    assert [getattr(a, "status_code", a) for a in answers] == [200] * 6
    assert all(decode_rgb(a.content).shape == (683, 1024, 3) for a in answers)
    assert not isinstance(refused[0], int), f"a request after SIGTERM was answered {refused[0]}"
    assert status == 0, logs[-2000:]
    assert "draining nginx, then the model server" in logs
    assert seconds < int(manifest_env()["STYLIZE_DRAIN_SECONDS"]) + ENTRYPOINT_MARGIN_S
    assert re.search(r"Finished server process", logs), logs[-2000:]
