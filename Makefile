# htr-triton: the two set-up commands are `make demo` and `make test`; both install first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
PERF_VENV ?= .venv-perf
# extra bench/perf.py options for `make perf`, e.g. PERF_ARGS="--concurrency 1,4 --measurement-interval 2000"
PERF_ARGS ?=
SHARED ?= ../shared/data/kaggle_names
export HTR_DATA ?= $(abspath $(SHARED))

.PHONY: install build test test-fast demo bench perf serve repository loadtest dashboards clean help

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(VENV)/.installed: requirements.txt requirements-runtime.txt requirements-dev.txt requirements-fonts.txt setup.py pyproject.toml
	@# the Triton python-backend stub embeds the system libpython of the same major.minor
	@v=$$($(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])'); \
	  ldconfig -p | grep -q "libpython$$v.so.1.0" || { echo "installing libpython$$v (Triton python-backend stub)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "libpython$$v" >/dev/null; }
	@# Prometheus (+ promtool) and docker-compose (only to validate docker-compose.yml) for the monitoring tests
	@command -v prometheus >/dev/null && command -v promtool >/dev/null && command -v docker-compose >/dev/null || { \
	  echo "installing prometheus and docker-compose (Debian packages)"; apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus docker-compose >/dev/null; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip==24.3.1
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -r requirements.txt -r requirements-dev.txt -r requirements-fonts.txt
	$(PIP) install -q --no-build-isolation -e .
	touch $@

# perf_analyzer in its own venv (requirements-perf.txt says why); the binary also links Debian's libb64
$(PERF_VENV)/.installed: requirements-perf.txt
	@ldconfig -p | grep -q 'libb64\.so\.0d' || dpkg -s libb64-0d >/dev/null 2>&1 || { \
	  echo "installing libb64-0d: perf_analyzer links libb64.so.0d, which this machine lacks"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libb64-0d >/dev/null; }
	test -x $(PERF_VENV)/bin/python || $(PYTHON) -m venv $(PERF_VENV)
	$(PERF_VENV)/bin/python -m pip install -q --upgrade pip==24.3.1
	$(PERF_VENV)/bin/python -m pip install -q -r requirements-perf.txt
	touch $@

install: $(VENV)/.installed build  ## venv + pinned requirements + editable install (builds the Cython extension)

build: $(VENV)/.installed  ## (re)compile the Cython kernels in place after editing a .pyx
	$(PY) setup.py -q build_ext --inplace

test: install  ## run the whole test suite (Cython and pure-Python reference paths)
	$(PY) -m pytest -q tests
	HTR_PURE_PYTHON=1 $(PY) -m pytest -q tests/test_preprocess.py tests/test_ctc.py

test-fast: install  ## the tests not marked slow (no servers, no training runs, no fuzzing)
	$(PY) -m pytest -q -m "not slow" tests

demo: install  ## run the main job end to end on the bundled defaults
	$(PY) -m htr.cli demo --data $(HTR_DATA)

bench: install  ## timing goals (see BENCHMARKS.md)
	$(PY) bench/preprocess_bench.py --data $(HTR_DATA)
	$(PY) bench/decode_bench.py
	$(PY) bench/serving_bench.py --data $(HTR_DATA)

perf: repository $(PERF_VENV)/.installed  ## perf_analyzer sweep (ensemble + crnn) vs ONNX Runtime and matmul; CSVs in bench/results/perf/
	$(PY) bench/perf.py --repository model_repository --perf-venv $(PERF_VENV) --data $(HTR_DATA) \
	  --json bench/results/perf/perf.json $(PERF_ARGS)

repository: install  ## build model_repository/ (CPU variant) from models/crnn_names.pt
	$(PY) export/build_engine.py --checkpoint models/crnn_names.pt --repository model_repository --data $(HTR_DATA)

serve: repository  ## serve model_repository/ on 127.0.0.1:8000 (HTTP), 8001 (gRPC), 8002 (metrics)
	$(VENV)/bin/htr serve --repository model_repository

loadtest: repository  ## bounded headless Locust run (60 s, 16 users) on a local server; reports in loadtest/reports/
	$(VENV)/bin/htr loadtest --repository model_repository --users 16 --run-time 60s

dashboards: install  ## regenerate monitoring/grafana/dashboards/serving.json from monitoring/build_dashboards.py
	$(PY) monitoring/build_dashboards.py

clean:  ## remove build outputs (keeps the venv)
	rm -rf build preprocess/_*.c preprocess/*.so *.egg-info
