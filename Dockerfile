# The batch image: stylize photos from the command line with the packaged model, no server.
#
#   mlflow artifacts download -u models:/style-transfer@champion -d build/model   # the pyfunc folder
#   docker build -t stylize .
#   docker run --rm --user "$(id -u):$(id -g)" -v "$PWD:/data" stylize \
#       --image /data/in.jpg --style 7 --output /data/out.jpg
#
# neuralstyle.containers.images.ensure_batch_image() does the first two steps (tag stylize:v<N>-<code>).
# Arguments after the image name go to stylize.py; exit status 0 ok, 2 bad input, 1 failure.
# /data is the working folder, so relative paths name files in the mounted folder.
# The container runs as an unprivileged user (uid 10001) unless --user says otherwise: use
# --user "$(id -u):$(id -g)" so it can write into your folder and the output is yours.
# Base: python:<the model's Python>-slim; without Docker Hub build it with docker/build-base.sh.
ARG BASE_IMAGE=python:3.11.7-slim
FROM ${BASE_IMAGE}

# Only the model's pinned requirements (no torch: the model runs on onnxruntime), with
# mlflow-skinny instead of mlflow: loading a pyfunc needs none of the tracking server's
# dependencies (pyarrow, scipy, sklearn, matplotlib, ... 800 MB). Copied first so that a
# new model version with the same requirements reuses this layer.
COPY build/model/requirements.txt /tmp/model-requirements.txt
RUN sed -E 's/^mlflow(\[[^]]*\])?([=<>~! ]|$)/mlflow-skinny\2/' /tmp/model-requirements.txt \
        > /tmp/requirements.txt \
    && pip install --no-cache-dir --disable-pip-version-check -r /tmp/requirements.txt \
    && rm /tmp/model-requirements.txt /tmp/requirements.txt \
    && python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)" \
    && groupadd --system --gid 10001 stylize \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin stylize \
    && mkdir -m 1777 /data

# HOME=/tmp: any --user uid (with no passwd entry) has a writable home for library caches.
# MLFLOW_TRACKING_URI: the model is a local folder; nothing reads or writes a registry.
# (With the vfs storage driver each step below costs a few seconds even when it only sets
# metadata: they come before the COPYs so a new model or code version rebuilds only those.)
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    MLFLOW_TRACKING_URI=file:///tmp/mlruns
USER 10001:10001
WORKDIR /data
ENTRYPOINT ["python", "/app/stylize.py", "--model-uri", "/app/model"]

COPY build/model /app/model
COPY stylize.py /app/stylize.py
COPY neuralstyle /app/neuralstyle

# What the image holds, filled in by neuralstyle.containers.images.ensure_batch_image (empty for a plain
# `docker build`): `docker inspect --format '{{json .Config.Labels}}' stylize`.
ARG MODEL_URI="" MODEL_NAME="" MODEL_VERSION="" MODEL_RUN_ID="" MODEL_FINGERPRINT="" \
    CODE_VERSION="" RECIPE=""
LABEL org.stylize.kind="batch" \
      org.stylize.model-uri="$MODEL_URI" \
      org.stylize.model-name="$MODEL_NAME" \
      org.stylize.model-version="$MODEL_VERSION" \
      org.stylize.model-run-id="$MODEL_RUN_ID" \
      org.stylize.model-fingerprint="$MODEL_FINGERPRINT" \
      org.stylize.code-version="$CODE_VERSION" \
      org.stylize.recipe="$RECIPE"
