# Every target is a thin call of the `repro` command line (python -m repro).
# `make help` lists them.

PROFILE ?= smoke
# The Python that builds .venv: PYTHON_BIN=/path/to/python chooses it; otherwise python3.11, or python3
# when that is 3.11 (requirements.lock is resolved for Python 3.11).
PYTHON_BIN ?=
GET_PYTHON := on Debian 12 or Ubuntu: sudo apt-get install python3.11 python3.11-venv; otherwise use the Docker image (make docker-build)
VENV ?= .venv
PY := $(VENV)/bin/python
# `python -m repro` sets the variables of pinned CPU numerics itself (re-executing once, before torch
# initialises) for a profile that asks for them (runtime.pinned_cpu_numerics; repro/cpu_numerics.py).
REPRO := $(PY) -m repro

.DEFAULT_GOAL := help
.PHONY: help install demo reproduce rehearse bench-gpu corpus extract train cka probe paper check verify bench test test-fast models config clean docker-build data data-plan

help: ## list every target with one line each
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_%-]+:.*## / {printf "  make %-18s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(VENV)/.installed: requirements.lock pyproject.toml
	@is311() { "$$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' >/dev/null 2>&1; }; \
	version() { "$$1" -c 'import platform; print(platform.python_version())' 2>/dev/null || echo unknown; }; \
	py="$(PYTHON_BIN)"; \
	if [ -n "$$py" ]; then \
	  command -v "$$py" >/dev/null 2>&1 || { echo "error: PYTHON_BIN=$$py: no such program; name a Python 3.11, or $(GET_PYTHON)" >&2; exit 2; }; \
	  is311 "$$py" || { echo "error: PYTHON_BIN=$$py is Python $$(version "$$py"), and .venv needs Python 3.11; $(GET_PYTHON)" >&2; exit 2; }; \
	else \
	  for candidate in python3.11 python3; do \
	    if command -v $$candidate >/dev/null 2>&1 && is311 $$candidate; then py=$$candidate; break; fi; \
	  done; \
	  if [ -z "$$py" ]; then \
	    found=$$(command -v python3 >/dev/null 2>&1 && echo "python3 is $$(version python3)" || echo "no python3 either"); \
	    echo "error: .venv needs Python 3.11, and there is no python3.11 ($$found); $(GET_PYTHON); or set PYTHON_BIN=/path/to/python3.11" >&2; exit 2; \
	  fi; \
	fi; \
	"$$py" -c 'import ensurepip, venv' >/dev/null 2>&1 || { echo "error: $$py has no venv module (with ensurepip) to build .venv; on Debian/Ubuntu: sudo apt-get install python3.11-venv" >&2; exit 2; }; \
	echo "$$py -m venv $(VENV)"; \
	"$$py" -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip==26.3"
	$(PY) -m pip install --quiet --require-hashes -r requirements.lock
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

install: $(VENV)/.installed ## create .venv with the pinned dependencies (requirements.lock)

demo: $(VENV)/.installed ## run the whole pipeline on the synthetic corpus with tiny models (CPU, minutes)
	$(REPRO) run --profile smoke

DRY_RUN ?=
reproduce: $(VENV)/.installed ## run every stage of PROFILE (smoke|fast|full), skipping what is complete; DRY_RUN=1: the plan and its GPU-hours only
	$(REPRO) run --profile $(PROFILE)$(if $(DRY_RUN), --dry-run)

DEVICE ?=
rehearse: $(VENV)/.installed ## rehearse PROFILE=fast|full (default fast): every stage on local corpora in the real layouts, random-weight models at real sizes (minutes); DRY_RUN=1: the plan and its CPU-minutes only
	$(REPRO) rehearse --profile $(if $(filter smoke,$(PROFILE)),fast,$(PROFILE))$(if $(DEVICE), --device $(DEVICE))$(if $(DRY_RUN), --dry-run)

data: $(VENV)/.installed ## download, verify and extract the real corpora PROFILE needs (fast|full)
	$(REPRO) data fetch --profile $(PROFILE)

data-plan: $(VENV)/.installed ## list what `make data` would download and its size (downloads nothing)
	$(REPRO) data fetch --profile $(PROFILE) --dry-run

corpus: $(VENV)/.installed ## create the corpus of PROFILE
	$(REPRO) run --profile $(PROFILE) --stage corpus

RECIPE ?= dino
train: $(VENV)/.installed ## train a model of PROFILE with RECIPE=supervised|dino|hubert|wavlm (resumes)
	$(REPRO) train --recipe $(RECIPE) --profile $(PROFILE)

extract: $(VENV)/.installed ## extract layer features of every model of PROFILE
	$(REPRO) run --profile $(PROFILE) --stage features

cka: $(VENV)/.installed ## layer similarity: linear CKA of every model pair of PROFILE (results/PROFILE/cka/)
	$(REPRO) run --profile $(PROFILE) --stage cka

bench: $(VENV)/.installed ## benchmarks vs baselines + full-profile projection (artifacts/bench/*.json, docs/PERFORMANCE.md)
	$(REPRO) bench all

bench-gpu: $(VENV)/.installed ## GPU calibration (minutes on one GPU): artifacts/bench/gpu.json, then the projection and docs
	$(REPRO) bench gpu
	$(REPRO) bench projection
	$(REPRO) bench report

probe: $(VENV)/.installed ## train every probe of PROFILE (models x tasks x learning rates)
	$(REPRO) run --profile $(PROFILE) --stage probe

paper: $(VENV)/.installed ## every figure and table, claim checks, report and checksums of PROFILE
	$(REPRO) run --profile $(PROFILE) --stage paper

figure-%: $(VENV)/.installed ## redraw one figure from result files alone, e.g. make figure-3
	$(REPRO) paper render --profile $(PROFILE) --id figure-$*

table-%: $(VENV)/.installed ## rebuild one table from result files alone, e.g. make table-1
	$(REPRO) paper render --profile $(PROFILE) --id table-$*

check: $(VENV)/.installed ## claim checks and reference comparisons: PASS / FAIL / NOT-RUN
	$(REPRO) paper check --profile $(PROFILE)

BY_VALUE ?=
verify: $(VENV)/.installed ## compare every output with the recorded checksums (by value where bytes cannot match; BY_VALUE=1: always)
	$(REPRO) paper verify --profile $(PROFILE)$(if $(BY_VALUE), --by-value)

models: $(VENV)/.installed ## list the model registry
	$(REPRO) models list

config: $(VENV)/.installed ## show the settings the paper leaves open, with our values and reasons
	$(REPRO) config explain --profile $(PROFILE)

test: $(VENV)/.installed ## run the whole test suite (what CI runs), then its 15 slowest tests
	$(PY) -m pytest -q --durations=15

test-fast: $(VENV)/.installed ## the test suite without the longer tests (marked slow: end to end, several processes, emulation)
	$(PY) -m pytest -q -m "not slow"

clean: ## remove the work, results and figures of PROFILE
	rm -rf "$${REPRO_WORK:-work}/$(PROFILE)" "$${REPRO_RESULTS:-results}/$(PROFILE)"

# Docker: the host needs only docker, make and bash (scripts/docker.sh says in one line what is
# missing). docker-TARGET runs `make TARGET` inside the image with the data, cache, work,
# results and figures folders mounted.
docker-build: ## build the Docker image (Dockerfile) as repro:<version>
	scripts/docker.sh build

docker-%: ## run `make %` inside the image, e.g. make docker-reproduce PROFILE=fast
	scripts/docker.sh make $* PROFILE=$(PROFILE)$(if $(DRY_RUN), DRY_RUN=1)$(if $(DEVICE), DEVICE=$(DEVICE))
