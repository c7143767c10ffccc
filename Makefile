# Set-up and entry points. Every target creates .venv when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mofbalora-installed
PROFILE ?= cpu
BENCHMARK_ARGS ?=
ABLATION_ARGS ?=
EXTRAS ?= dev,notebooks

.PHONY: install test bandgap-benchmark balora-ablation release-pilot release-model bench data notebooks docs clean-cache

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# torch first: a bare torch requirement could otherwise pull a multi-GB CUDA build.
$(STAMP): $(PY) pyproject.toml requirements-laplace.txt
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	$(PY) -m pip install --quiet --no-deps -r requirements-laplace.txt
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

bandgap-benchmark: $(STAMP)
	$(PY) pipelines/bandgap_benchmark.py --profile $(PROFILE) $(BENCHMARK_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/run.py

data: $(STAMP)
	$(VENV)/bin/mofbalora data download qmof

notebooks: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

docs: $(STAMP)
	$(PY) -c "from mofbalora.cli import render_cli_reference; open('docs/cli.md', 'w').write(render_cli_reference())"

# Feature caches and unpacked archives, rebuilt on demand: the tests' (.cache, tests/conftest.py) and the
# one mofbalora uses ($MOFBALORA_CACHE, default ~/.cache/mofbalora; README).
clean-cache:
	rm -rf .cache "$${MOFBALORA_CACHE:-$$HOME/.cache/mofbalora}"

balora-ablation: $(STAMP)
	$(PY) pipelines/balora_ablation.py --profile $(PROFILE) $(ABLATION_ARGS)

# The candidates for the next shipped model, on validation (pipelines/release_pilot.py; resumable).
release-pilot: $(STAMP)
	$(PY) pipelines/release_pilot.py $(PILOT_ARGS)

# The shipped model: all of QMOF, resumable (rerun to continue); see pipelines/release_model.py.
# By default v2's fit first (release_qmof.yaml), then its warm restarts: v2.1 (release_qmof_v2.1.yaml)
# and v2.2 (release_qmof_v2.2.yaml), whose fit the shipped v2.4 has (v2.3 differs from v2.2 in its
# noise head only, v2.4 from v2.3 in where its intervals leave their 5%; run folder
# results/release/qmof-pbe-cgcnn-balora-v2.4). From v2.3's package alone, v2.4 is
# python pipelines/release_model.py --from-package mofbalora/pretrained/qmof-pbe-cgcnn-balora-v2.3
#   --current-settings --run-dir results/release/qmof-pbe-cgcnn-balora-v2.4
#   --package-dir mofbalora/pretrained/qmof-pbe-cgcnn-balora
RELEASE_ARGS ?=
release-model: $(STAMP)
ifeq ($(strip $(RELEASE_ARGS)),)
	$(PY) pipelines/release_model.py --config pipelines/configs/release_qmof.yaml \
		--run-dir results/release/qmof-pbe-cgcnn-balora --stop-after fit
	$(PY) pipelines/release_model.py --config pipelines/configs/release_qmof_v2.1.yaml \
		--run-dir results/release/qmof-pbe-cgcnn-balora-v2.1 --stop-after fit
endif
	$(PY) pipelines/release_model.py $(RELEASE_ARGS)
