# Set-up and entry points. Every target creates .venv when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mofbalora-installed
PROFILE ?= cpu
BENCHMARK_ARGS ?=
ABLATION_ARGS ?=
EXTRAS ?= dev,notebooks

.PHONY: install test bandgap-benchmark balora-ablation al-benchmark release-model bench data notebooks docs clean-cache

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

# Two pytest workers, one module each at a time (module fixtures stay shared), one torch thread each;
# the slowest modules first (tests/conftest.py: SLOW_MODULES_FIRST), not reordered by xdist; the 20
# slowest tests and fixtures listed at the end, to keep the suite within its time.
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=20 tests

bandgap-benchmark: $(STAMP)
	$(PY) -m pipelines.bandgap_benchmark --profile $(PROFILE) $(BENCHMARK_ARGS)

bench: $(STAMP)
	$(PY) -m benchmarks.run

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
	$(PY) -m pipelines.balora_ablation --profile $(PROFILE) $(ABLATION_ARGS)

# The simulated DFT campaign (issue 46; ~1.5 h on 2 cores, resumable): docs/studies/active_learning.md
AL_ARGS ?=
al-benchmark: $(STAMP)
	$(PY) -m pipelines.active_learning --profile $(PROFILE) $(AL_ARGS)

# The shipped model: all of QMOF, resumable (rerun to continue); see pipelines/release_model.py.
# By default v2's fit first (release_qmof.yaml), then its warm restarts: v2.1 (release_qmof_v2.1.yaml)
# and v2.2 (release_qmof_v2.2.yaml), whose fit the shipped v2.4 has, then its noise head,
# calibration, test scores and package. From the shipped package alone:
# python -m pipelines.release_model --from-package mofbalora/pretrained/qmof-pbe-cgcnn-balora
RELEASE_ARGS ?=
release-model: $(STAMP)
ifeq ($(strip $(RELEASE_ARGS)),)
	$(PY) -m pipelines.release_model --config pipelines/configs/release_qmof.yaml \
		--run-dir results/release/qmof-pbe-cgcnn-balora --stop-after fit
	$(PY) -m pipelines.release_model --config pipelines/configs/release_qmof_v2.1.yaml \
		--run-dir results/release/qmof-pbe-cgcnn-balora-v2.1 --stop-after fit
endif
	$(PY) -m pipelines.release_model $(RELEASE_ARGS)
