"""The one home for building Docker images of the registered model.

Two images, both tagged by the model version and the code version, labelled with what they hold,
and reused while the model and the code are unchanged:

* the **serving image** ``style-transfer:v<N>-<code>`` (also ``style-transfer:latest``):
  ``mlflow models build-docker -m <uri> --env-manager local`` as MLflow makes it, plus one thin
  layer that replaces MLflow's nginx.conf with ``docker/nginx.conf`` (answers ``/health`` and
  ``/version``, 64 MB bodies, 310 s proxy timeout) and sets the server's limits::

      tag = ensure_serving_image("models:/style-transfer@champion", "sqlite:///mlflow.db")
      docker run --rm -p 127.0.0.1:5001:8080 <tag>        # SERVING_PORT: nginx in the container

  ``lean=True`` makes ``style-transfer:v<N>-<code>-lean`` instead: the same, with mlflow-skinny
  in place of mlflow (557 MB instead of 1.1 GB);

* the **batch image** ``stylize:v<N>-<code>`` (also ``stylize:latest``): the project
  ``Dockerfile``: the packaged model fetched into ``build/model/``, ``stylize.py`` and
  ``neuralstyle/``, no torch, a non-root user, ``stylize.py`` as the entrypoint::

      tag = ensure_batch_image("models:/style-transfer@champion", "sqlite:///mlflow.db")
      docker run --rm --user "$(id -u):$(id -g)" -v "$PWD:/data" <tag> --image in.jpg --output out.jpg

Builds run on the Docker SDK (MLflow's ``build-docker`` / ``generate-dockerfile`` as the
subprocess users type) and log their output line by line (logger
``neuralstyle.containers.images``): a cold serving build takes minutes. docker/README.md says what
each image contains and why; bench/results/docker.md has the measured sizes and times.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from neuralstyle import config
from neuralstyle.codebase import REPO_DIR
from neuralstyle.containers import engine, tryit
from neuralstyle.registry import ModelRef, content_key, resolve_model

log = logging.getLogger(__name__)

NGINX_CONF = REPO_DIR / "docker" / "nginx.conf"
# The model server (neuralstyle/run/server.py) goes into the image beside the model's own code,
# which already holds neuralstyle/ and neuralstyle/model/: it imports nothing else of ours.
SERVER_FILES = (REPO_DIR / "neuralstyle" / "run" / "__init__.py",
                REPO_DIR / "neuralstyle" / "run" / "server.py")
MODEL_DIR_IN_IMAGE = "/opt/ml/model"  # where build-docker copies the model (code/ inside)
SERVER_PORT_IN_IMAGE = 8000  # MLflow's nginx.conf and ours proxy to uvicorn here
BATCH_MODEL_DIR = Path("build") / "model"  # relative to the build context (the repo)

SERVING_REPOSITORY = "style-transfer"
BATCH_REPOSITORY = "stylize"
# nginx listens here inside the serving container; publish it: -p 127.0.0.1:<host port>:8080.
SERVING_PORT = 8080
SERVING_CONTAINER_PORT = f"{SERVING_PORT}/tcp"  # the Docker SDK's ``ports=`` key

# The serving container's limits (docs/serving.md says why). The request timeout is
# `mlflow models serve`'s; docker/nginx.conf's proxy_read_timeout (310 s) sits above it. nginx
# holds the queue (limit_conn: at most serving.LIMIT_CONCURRENCY /invocations requests go on to
# uvicorn at once, one connection each), so uvicorn's own limit is only a backstop above it,
# with room for /ping and /health and for connections nginx has closed that uvicorn has not yet
# seen; nginx adds Retry-After to every 503, so uvicorn sends no header of its own.
SERVING_ENV = {
    "MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT": "300",
    "UVICORN_LIMIT_CONCURRENCY": "48",
    "STYLIZE_PARALLEL_PHOTOS": "2",
    # MLflow's container starts one uvicorn worker per CPU, each with its own copy of the model;
    # OpenVINO already uses every core for one photo. Override with -e MLFLOW_MODELS_WORKERS=N.
    "MLFLOW_MODELS_WORKERS": "1",
    **config.SERVER_MALLOC_ENV,  # why: neuralstyle.config
    # SIGTERM: nginx, then the server, finish what is in flight within this (docs/serving.md).
    "STYLIZE_DRAIN_SECONDS": "30",
}

# The thin layer on top of what build-docker makes, written out with the base image and MLflow's
# nginx.conf path filled in. With the vfs storage driver every Dockerfile step (metadata ones too)
# costs a container and a full copy of the image (~10 s for 1.1 GB), so there are as few steps as
# possible: no ARG, all labels in one LABEL, one RUN. The RUN makes the unprivileged user the
# container runs as (uid SERVING_UID, like the batch image) and hands it /var/log/nginx, where
# MLflow's entrypoint links nginx's logs to stdout and stderr at start; nginx keeps its temporary
# files under /tmp (docker/nginx.conf) and listens on 8080, so nothing needs root.
SERVING_UID = 10001
SERVING_LAYER = """\
FROM {base}
COPY nginx.conf {nginx_conf}
COPY server {model_dir}/code/neuralstyle/run
RUN groupadd --system --gid {uid} stylize \\
    && useradd --system --uid {uid} --gid {uid} --no-create-home --home-dir /nonexistent \\
       --shell /usr/sbin/nologin stylize \\
    && chown -R {uid}:{uid} /var/log/nginx \\
    && pip install --no-cache-dir {server_requirements}
ENV {env} \\
    STYLIZE_MODEL_URI={model_dir} PYTHONPATH={model_dir}/code
USER {uid}:{uid}
EXPOSE {port}
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \\
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:{port}/health', timeout=4)"
ENTRYPOINT ["python", "-m", "neuralstyle.run.server", \\
            "--front-nginx", "{nginx_conf}", "--port", "{server_port}"]
CMD []
"""

LABEL = "org.stylize"
BUILD_LOG_TAIL = 40
LOCK_DIR = Path(tempfile.gettempdir())

# Where MLflow keeps its nginx.conf inside the image (it runs `nginx -c <that file>`), and a
# check that the image has no torch; one `docker run` answers both.
_PROBE = (
    "import importlib.util, os; s = importlib.util.find_spec('mlflow'); "
    "print(os.path.join(s.submodule_search_locations[0], 'models', 'container', "
    "'scoring_server', 'nginx.conf')); print(importlib.util.find_spec('torch') is None)"
)


class ImageBuildError(RuntimeError):
    """A build failed; the message holds the command, its exit status and its last lines."""


def _tag_safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", text).lstrip(".-")[:128]


def _tag_suffix(model: ModelRef) -> str:
    """``v3-1a2b3c4d5e6f`` for a registered version, ``uri-<hash>`` otherwise."""
    if model.version is None:
        return f"uri-{model.key[:12]}"
    return _tag_safe(f"v{model.version}-{model.code_version}")


def _model_labels(model: ModelRef, kind: str, recipe: str) -> dict[str, str]:
    """The ``org.stylize.*`` labels both images carry (the batch Dockerfile names the same)."""
    return {
        f"{LABEL}.kind": kind,
        f"{LABEL}.model-uri": model.uri,
        f"{LABEL}.model-name": model.name or "",
        f"{LABEL}.model-version": model.version or "",
        f"{LABEL}.model-run-id": model.run_id,
        f"{LABEL}.model-fingerprint": model.key,
        f"{LABEL}.code-version": model.code_version,
        f"{LABEL}.recipe": recipe,
    }


# --- the engine (Docker SDK) and MLflow's image CLI ----------------------------------------


def _client():
    """The engine's SDK client; no engine is a build error that says how to start one."""
    try:
        return engine.docker_client()
    except engine.EngineError as err:
        raise ImageBuildError(str(err)) from None


def _image(tag: str):
    """The local image with this tag or id, or None."""
    import docker.errors

    try:
        return _client().images.get(tag)
    except docker.errors.ImageNotFound:
        return None
    except docker.errors.APIError as err:
        raise ImageBuildError(f"cannot inspect image {tag}: {err}") from None


def image_labels(tag: str) -> dict[str, str] | None:
    """The labels of a local image, or None when no image has that tag."""
    image = _image(tag)
    return None if image is None else (image.labels or {})


def image_id(tag: str) -> str | None:
    """The local image's id, or None when no image has that tag."""
    image = _image(tag)
    return None if image is None else image.id


def remove_replaced(old_id: str | None, tag: str) -> None:
    """Remove the image a rebuild of ``tag`` replaced, if it is ours and nothing else names it.

    With the vfs storage driver every layer is a full copy of the image: a replaced serving
    image left dangling holds gigabytes. Images still tagged, or used by a container, stay.
    """
    import docker.errors

    if not old_id or old_id == image_id(tag):
        return
    old = _image(old_id)
    if old is None or old.tags or old.labels.get(f"{LABEL}.kind") not in ("serving", "batch"):
        return
    try:
        _client().images.remove(old_id)
        log.info("removed %s, the image %s replaced", old_id[:19], tag)
    except docker.errors.APIError as err:  # e.g. a container still uses it
        log.info("kept %s, the image %s replaced: %s", old_id[:19], tag, err)


def image_size_bytes(tag: str) -> int:
    """The image's size as ``docker images`` reports it."""
    image = _image(tag)
    if image is None:
        raise ImageBuildError(f"no image {tag}")
    return int(image.attrs["Size"])


def _engine_hint(text: str) -> str:
    text = text.lower()
    if ("pull access denied" in text or "not found" in text or "no such image" in text) and (
            "python" in text):
        return " (the base image is missing: build it with `sudo docker/build-base.sh`)"
    return ""


def _build(context: Path, tags: list[str], what: str, rebuild: bool = False,
           buildargs: dict[str, str] | None = None) -> float:
    """``docker build`` through the SDK (its .dockerignore honoured, never pulling, removing
    intermediate containers also on failure), logging the build's output line by line."""
    import docker.errors

    client = _client()
    log.info("%s: %s -> %s", what, context, ", ".join(tags))
    started = time.perf_counter()
    tail: list[str] = []
    try:
        for chunk in client.api.build(path=str(context), tag=tags[0], pull=False, rm=True,
                                      forcerm=True, nocache=rebuild, buildargs=buildargs or {},
                                      decode=True):
            for line in str(chunk.get("stream") or chunk.get("status") or "").splitlines():
                if line.strip():
                    log.info("%s: %s", what, line.rstrip())
                    tail = (tail + [line.rstrip()])[-BUILD_LOG_TAIL:]
            if "error" in chunk:
                raise docker.errors.BuildError(chunk["error"], [])
        for extra in tags[1:]:
            repository, _, name = extra.rpartition(":")
            client.api.tag(tags[0], repository, name)
    except (docker.errors.BuildError, docker.errors.APIError) as err:
        joined = "\n".join(tail)
        raise ImageBuildError(f"{what} failed: {err}{_engine_hint(str(err))}\nlast lines:\n{joined}"
                              ) from None
    seconds = time.perf_counter() - started
    log.info("%s: done in %.0f s", what, seconds)
    return seconds


def _run_streaming(command: list[str], what: str, env: dict[str, str] | None = None) -> float:
    """Run MLflow's image CLI (build-docker, generate-dockerfile), log its output line by line;
    raise with its tail if it fails."""
    log.info("%s: %s", what, " ".join(command))
    started = time.perf_counter()
    tail: list[str] = []
    process = subprocess.Popen(
        command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, errors="replace",
    )
    assert process.stdout is not None
    for line in process.stdout:
        line = line.rstrip()
        log.info("%s: %s", what, line)
        tail = (tail + [line])[-BUILD_LOG_TAIL:]
    if process.wait() != 0:
        joined = "\n".join(tail)
        raise ImageBuildError(
            f"{what} failed (exit status {process.returncode}){_engine_hint(joined)}: "
            f"{' '.join(command)}\nlast lines:\n{joined}"
        )
    seconds = time.perf_counter() - started
    log.info("%s: done in %.0f s", what, seconds)
    return seconds


@contextlib.contextmanager
def _build_lock(tag: str) -> Iterator[None]:
    """One build per tag at a time on this machine (Luigi workers may ask together)."""
    path = LOCK_DIR / f"stylize-image-{_tag_safe(tag.replace(':', '-'))}.lock"
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _reusable(tag: str, wanted: dict[str, str]) -> bool:
    labels = image_labels(tag)
    if labels is None:
        return False
    stale = {k: (labels.get(k), v) for k, v in wanted.items() if labels.get(k) != v}
    if stale:
        log.info("image %s is stale, rebuilding: %s", tag,
                 ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in stale.items()))
        return False
    return True


def _identity(labels: dict[str, str]) -> dict[str, str]:
    """The labels that decide reuse: what the model is (its fingerprint) and how the image is
    made (the recipe). The URI, version and run id the image was built for are only recorded:
    the same model registered again (another registry, a test session) reuses the image."""
    keys = ("kind", "variant", "model-fingerprint", "recipe")
    return {f"{LABEL}.{k}": labels[f"{LABEL}.{k}"] for k in keys if f"{LABEL}.{k}" in labels}


def _label_build_args(labels: dict[str, str]) -> dict[str, str]:
    """``MODEL_URI=...`` build args for the batch Dockerfile's one ARG + LABEL step (a label
    per key would cost the classic builder one step, ~8 s with vfs, each)."""
    args = {}
    for key, value in sorted(labels.items()):
        name = key.removeprefix(f"{LABEL}.").upper().replace("-", "_")
        if name != "KIND":
            args[name] = value
    return args


# --- the serving image ----------------------------------------------------------------------


def serving_layer_dockerfile(base: str = "<build-docker image>",
                             nginx_conf: str = "<MLflow's nginx.conf in the image>",
                             labels: dict[str, str] | None = None) -> str:
    """The thin layer's Dockerfile: FROM the build-docker image, our nginx.conf, limits, labels."""
    env = " \\\n    ".join(f"{k}={v}" for k, v in SERVING_ENV.items())
    text = SERVING_LAYER.format(base=base, nginx_conf=nginx_conf, env=env, port=SERVING_PORT,
                                uid=SERVING_UID, model_dir=MODEL_DIR_IN_IMAGE,
                                server_port=SERVER_PORT_IN_IMAGE,
                                server_requirements=" ".join(server_requirements()))
    text += tryit.dockerfile_step()  # the try-it page nginx serves at /
    if labels:  # the model's name and version for /metrics (the image holds no registry)
        text += (f"ENV STYLIZE_MODEL_NAME={json.dumps(labels.get(f'{LABEL}.model-name', ''))} "
                 f"STYLIZE_MODEL_VERSION={json.dumps(labels.get(f'{LABEL}.model-version', ''))}\n")
    if labels:
        text += "LABEL " + " \\\n      ".join(
            f"{json.dumps(k)}={json.dumps(v)}" for k, v in sorted(labels.items())) + "\n"
    return text


def serving_recipe() -> str:
    """Hash of what the thin layer adds: a change to docker/nginx.conf, the server or the env
    rebuilds it."""
    page = [part for p in tryit.page_files() for part in (p.name, p.read_bytes())]
    server = [part for p in SERVER_FILES for part in (p.name, p.read_bytes())]
    return content_key(serving_layer_dockerfile(), NGINX_CONF.read_bytes(), *page, *server)[:16]


def server_requirements() -> list[str]:
    """The model server's own pins (pyproject's ``serve`` extra): prometheus-client."""
    import tomllib

    pyproject = tomllib.loads((REPO_DIR / "pyproject.toml").read_text())
    return list(pyproject["project"]["optional-dependencies"]["serve"])


def build_docker_command(model_uri: str, tag: str) -> list[str]:
    """``mlflow models build-docker`` exactly as a user types it, with this interpreter."""
    return [sys.executable, "-m", "mlflow", "models", "build-docker", "-m", model_uri, "-n", tag,
            "--env-manager", "local"]


def _probe(tag: str) -> tuple[str, bool]:
    """(MLflow's nginx.conf path in the image, True when the image has no torch)."""
    import docker.errors

    try:
        output = _client().containers.run(tag, ["-c", _PROBE], entrypoint="python", remove=True)
    except (docker.errors.ContainerError, docker.errors.APIError) as err:
        raise ImageBuildError(f"cannot inspect {tag}: {err}") from None
    lines = output.decode(errors="replace").split()
    if len(lines) != 2:
        raise ImageBuildError(f"cannot inspect {tag}: unexpected probe output {lines!r}")
    return lines[0], lines[1] == "True"


def generate_dockerfile_command(model_uri: str, directory: str) -> list[str]:
    """``mlflow models generate-dockerfile``: build-docker's Dockerfile and context, unbuilt."""
    return [sys.executable, "-m", "mlflow", "models", "generate-dockerfile", "-m", model_uri,
            "-d", directory, "--env-manager", "local"]


def make_lean(context: Path) -> None:
    """Edit a generated build-docker context to install mlflow-skinny instead of mlflow.

    The Dockerfile's ``pip install mlflow==V`` becomes ``pip install mlflow-skinny==V`` plus the
    model's numpy and pandas pins (the next step imports ``mlflow.pyfunc``, which needs them),
    and the copied model's requirements.txt names mlflow-skinny, or that step would install the
    full mlflow after all. Skinny ships no nginx.conf: the thin layer supplies ours.
    """
    requirements = context / "model_dir" / "requirements.txt"
    lines = requirements.read_text().splitlines()
    pins = {re.split(r"[=<>~! \[]", line, maxsplit=1)[0].lower(): line.strip() for line in lines
            if line.strip() and not line.startswith(("#", "-"))}
    if "mlflow" not in pins:
        raise ImageBuildError(f"{requirements} names no mlflow requirement: cannot make it lean")
    skinny = "mlflow-skinny" + pins["mlflow"][len("mlflow"):]
    requirements.write_text("\n".join(skinny if line.strip() == pins["mlflow"] else line
                                      for line in lines) + "\n")
    dockerfile = context / "Dockerfile"
    extra = " ".join(pins[name] for name in ("numpy", "pandas") if name in pins)
    text, count = re.subn(r"^RUN pip install mlflow==(\S+)$",
                          lambda m: f"RUN pip install mlflow-skinny=={m.group(1)} {extra}".rstrip(),
                          dockerfile.read_text(), flags=re.MULTILINE)
    if count != 1:
        raise ImageBuildError(f"{dockerfile}: no `RUN pip install mlflow==...` line to replace "
                              "(has MLflow's Dockerfile template changed?)")
    dockerfile.write_text(text)


def _build_stock(model: ModelRef, stock: str, lean: bool) -> None:
    env = {**os.environ, "MLFLOW_TRACKING_URI": model.tracking_uri,
           "MLFLOW_REGISTRY_URI": model.registry_uri}
    if not lean:
        _run_streaming(build_docker_command(model.uri, stock), "mlflow models build-docker", env)
        return
    with tempfile.TemporaryDirectory(prefix="stylize-serving-lean-") as ctx:
        _run_streaming(generate_dockerfile_command(model.uri, ctx),
                       "mlflow models generate-dockerfile", env)
        make_lean(Path(ctx))
        _build(Path(ctx), [stock], "docker build (lean serving image)")


def ensure_serving_image(model_uri: str, tracking_uri: str | None = None, *,
                         rebuild: bool = False, lean: bool = False) -> str:
    """The serving image's tag for ``model_uri``, built if it is missing or stale.

    ``style-transfer:v<N>-<code version>`` (and ``style-transfer:latest``): MLflow's
    ``build-docker`` image (kept as ``style-transfer:build-docker-<fingerprint>``, so a change to
    docker/nginx.conf rebuilds only the thin layer) plus our nginx.conf and limits. Reused when
    its labels say it holds this model (fingerprint) and this layer recipe. ``rebuild=True``
    runs both builds again (Docker's layer cache still applies to build-docker's steps).

    ``lean=True``: ``style-transfer:v<N>-<code version>-lean``, the same Dockerfile from
    ``mlflow models generate-dockerfile`` with mlflow-skinny instead of mlflow (half the size,
    a third of the build time; see :func:`make_lean`), same thin layer; not tagged ``latest``.

    Run it with ``SERVING_CONTAINER_PORT`` (8080/tcp, nginx) published on 127.0.0.1.
    """
    model = resolve_model(model_uri, tracking_uri)
    variant = "lean" if lean else "full"
    tag = f"{SERVING_REPOSITORY}:{_tag_suffix(model)}{'-lean' if lean else ''}"
    labels = {**_model_labels(model, "serving", serving_recipe()), f"{LABEL}.variant": variant}
    with _build_lock(tag):
        if not rebuild and _reusable(tag, _identity(labels)):
            log.info("reusing %s for %s", tag, model_uri)
            return tag
        replaced = image_id(tag)
        prefix = "generated-lean" if lean else "build-docker"
        stock = f"{SERVING_REPOSITORY}:{prefix}-{model.key[:12]}"
        if rebuild or image_labels(stock) is None:
            _build_stock(model, stock, lean)
        conf_path, torch_free = _probe(stock)
        if not torch_free:
            raise ImageBuildError(f"{stock} contains torch: the model's requirements must not "
                                  "pull it in (neuralstyle.builder.packaging.serving_requirements)")
        with tempfile.TemporaryDirectory(prefix="stylize-serving-layer-") as ctx:
            Path(ctx, "Dockerfile").write_text(serving_layer_dockerfile(stock, conf_path, labels))
            shutil.copyfile(NGINX_CONF, Path(ctx, "nginx.conf"))
            Path(ctx, "server").mkdir()
            for path in SERVER_FILES:
                shutil.copyfile(path, Path(ctx, "server", path.name))
            tryit.write_page(Path(ctx), model)
            latest = [] if lean else [f"{SERVING_REPOSITORY}:latest"]
            _build(Path(ctx), [tag, *latest], "docker build (serving layer)", rebuild)
        remove_replaced(replaced, tag)
    return tag


# --- the batch image ------------------------------------------------------------------------


def batch_context_files(context: Path = REPO_DIR) -> list[Path]:
    """The files of the build context that go into the batch image (the .dockerignore keeps
    the rest out), in a stable order; the model is hashed through its fingerprint instead."""
    files = [context / "Dockerfile", context / ".dockerignore", context / "stylize.py"]
    files += sorted(p for p in (context / "neuralstyle").rglob("*.py")
                    if "__pycache__" not in p.parts)
    return files


def batch_recipe(context: Path = REPO_DIR) -> str:
    """Hash of the Dockerfile, .dockerignore, stylize.py and neuralstyle/**.py."""
    return content_key(*(part for p in batch_context_files(context)
                  for part in (str(p.relative_to(context)), p.read_bytes())))[:16]


def download_model(model: ModelRef, destination: Path) -> Path:
    """Fetch the model's pyfunc folder into ``destination`` (replaced whole, never half-written)."""
    import mlflow.artifacts

    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".model-", dir=destination.parent))
    try:
        with config.mlflow_scope(model.tracking_uri):  # see tryit.model_catalog: models:/ needs it
            mlflow.artifacts.download_artifacts(
                artifact_uri=model.uri, dst_path=str(staging), tracking_uri=model.tracking_uri,
                registry_uri=model.registry_uri,
            )
        if not (staging / "MLmodel").is_file():
            raise ImageBuildError(f"{model.uri} downloaded without an MLmodel file: not a model")
        old = destination.with_name(destination.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if destination.exists():
            destination.rename(old)
        staging.rename(destination)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return destination


def model_python_version(model_dir: Path) -> str:
    """The Python the model was logged with (python_env.yaml), which names the base image."""
    text = (model_dir / "python_env.yaml").read_text()
    found = re.search(r"^python:\s*([0-9][0-9.]*)\s*$", text, re.MULTILINE)
    if not found:
        raise ImageBuildError(f"{model_dir}/python_env.yaml names no Python version")
    return found.group(1)


def ensure_batch_image(model_uri: str, tracking_uri: str | None = None, *, rebuild: bool = False,
                       context: Path = REPO_DIR) -> str:
    """The batch image's tag for ``model_uri``, built from the project Dockerfile if needed.

    ``stylize:v<N>-<code version of this checkout>`` (and ``stylize:latest``). Before building,
    the model's pyfunc folder is downloaded into ``<context>/build/model/`` (what the Dockerfile
    copies), and the base image is ``python:<the model's Python>-slim``, as for build-docker.
    Reused when its labels say it holds this model and these files.
    """
    from neuralstyle.codebase import code_version

    model = resolve_model(model_uri, tracking_uri)
    identity = f"v{model.version}" if model.version else f"uri-{model.key[:12]}"
    tag = f"{BATCH_REPOSITORY}:{_tag_safe(f'{identity}-{code_version()}')}"
    labels = _model_labels(model, "batch", batch_recipe(context))
    labels[f"{LABEL}.code-version"] = code_version()  # the code that runs is this checkout's
    with _build_lock(tag):
        if not rebuild and _reusable(tag, _identity(labels)):
            log.info("reusing %s for %s", tag, model_uri)
            return tag
        replaced = image_id(tag)
        model_dir = download_model(model, context / BATCH_MODEL_DIR)
        base = f"python:{model_python_version(model_dir)}-slim"
        _build(context, [tag, f"{BATCH_REPOSITORY}:latest"], "docker build (batch image)", rebuild,
               {"BASE_IMAGE": base, **_label_build_args(labels)})
        remove_replaced(replaced, tag)
    return tag


def main(argv: list[str] | None = None) -> int:
    """``python -m neuralstyle.containers.images serving|batch``: build (or reuse) an image, print its tag."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m neuralstyle.containers.images", description=main.__doc__)
    parser.add_argument("kind", choices=["serving", "batch"],
                        help="serving: build-docker image + our proxy; batch: the project Dockerfile")
    parser.add_argument("--model-uri", default=config.DEFAULT_MODEL_URI,
                        help="registered model to put in the image (default: %(default)s)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking/registry URI (default: $MLFLOW_TRACKING_URI, else "
                             f"{config.DEFAULT_TRACKING_URI})")
    parser.add_argument("--rebuild", action="store_true",
                        help="build even if a current image exists (default: off)")
    parser.add_argument("--lean", action="store_true",
                        help="serving image on mlflow-skinny, ~half the size (default: off)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.kind == "serving":
        tag = ensure_serving_image(args.model_uri, args.tracking_uri, rebuild=args.rebuild,
                                   lean=args.lean)
    else:
        tag = ensure_batch_image(args.model_uri, args.tracking_uri, rebuild=args.rebuild)
    print(tag)
    return 0


if __name__ == "__main__":
    sys.exit(main())
