# The two commands a newcomer needs: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3.11
# `make bench` packages this checkout once into a throwaway registry that every benchmark uses.
BENCH_DIR := $(abspath .bench)
BENCH_REGISTRY := sqlite:///$(BENCH_DIR)/mlflow.db
# `mlflow models serve` starts `uvicorn` through a shell: the venv's bin must be on PATH.
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: install demo test lint package serve bench docker-serving docker-batch clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[package,pipeline,dev]"
	touch $@

demo: install  ## package the models if needed and stylize a bundled sample photo
	$(PY) -m neuralstyle.demo

test: install  ## lint, then every test (docker tests skip, with a reason, without an engine)
	$(PY) -m ruff check .
	$(PY) -m pytest

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check . || true

package: install  ## package the networks into the local registry (sqlite:///mlflow.db)
	$(PY) package_models.py

serve: install  ## serve models:/style-transfer@champion on 127.0.0.1:5001 (limits: docs/serving.md)
	MLFLOW_TRACKING_URI=$${MLFLOW_TRACKING_URI:-sqlite:///mlflow.db} UVICORN_LIMIT_CONCURRENCY=32 \
		UVICORN_HEADERS=Retry-After:5 STYLIZE_PARALLEL_PHOTOS=2 \
		mlflow models serve -m models:/style-transfer@champion --env-manager local \
		-h 127.0.0.1 -p 5001 --timeout 300

bench: install  ## speed vs the peer, throughput (server + container): bench/RESULTS.md, bench/latency.png
	rm -rf $(BENCH_DIR) && mkdir -p $(BENCH_DIR)
	cd $(BENCH_DIR) && $(abspath $(PY)) $(CURDIR)/package_models.py --style-map $(CURDIR)/styles.json \
		--tracking-uri $(BENCH_REGISTRY)
	$(PY) bench/load.py --clients 8 --seconds 30 --runs 1 --container \
		--tracking-uri $(BENCH_REGISTRY) --output $(BENCH_DIR)/load.md
	$(PY) bench/speed.py --tracking-uri $(BENCH_REGISTRY) --load-report $(BENCH_DIR)/load.md

docker-serving: install  ## build (or reuse) the serving image style-transfer (docker/README.md)
	$(PY) -m neuralstyle.images serving

docker-batch: install  ## build (or reuse) the batch image stylize from ./Dockerfile
	$(PY) -m neuralstyle.images batch

clean:
	rm -rf out data .pytest_cache .ruff_cache
