# Every target is a thin call of the `repro` command line (python -m repro).
# `make help` lists them.

PROFILE ?= smoke
PYTHON_BIN ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
REPRO := $(PY) -m repro

.DEFAULT_GOAL := help
.PHONY: help install demo reproduce corpus extract cka bench test test-fast models config clean

help: ## list every target with one line each
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_%-]+:.*## / {printf "  make %-18s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(VENV)/.installed: requirements.lock pyproject.toml
	$(PYTHON_BIN) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip==26.3"
	$(PY) -m pip install --quiet --require-hashes -r requirements.lock
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

install: $(VENV)/.installed ## create .venv with the pinned dependencies (requirements.lock)

demo: $(VENV)/.installed ## run the whole pipeline on the synthetic corpus with tiny models (CPU, minutes)
	$(REPRO) run --profile smoke

reproduce: $(VENV)/.installed ## run every stage of PROFILE (smoke|fast|full), skipping what is complete
	$(REPRO) run --profile $(PROFILE)

corpus: $(VENV)/.installed ## create the corpus of PROFILE
	$(REPRO) run --profile $(PROFILE) --stage corpus

extract: $(VENV)/.installed ## extract layer features of every model of PROFILE
	$(REPRO) run --profile $(PROFILE) --stage features

cka: $(VENV)/.installed ## layer similarity: linear CKA of every model pair of PROFILE (results/PROFILE/cka/)
	$(REPRO) run --profile $(PROFILE) --stage cka

bench: $(VENV)/.installed ## measure the numerical cores against baselines (artifacts/bench/*.json)
	$(REPRO) bench all

models: $(VENV)/.installed ## list the model registry
	$(REPRO) models list

config: $(VENV)/.installed ## show the settings the paper leaves open, with our values and reasons
	$(REPRO) config explain --profile $(PROFILE)

test: $(VENV)/.installed ## run the test suite
	$(PY) -m pytest -q

clean: ## remove the work, results and figures of PROFILE
	rm -rf work/$(PROFILE) results/$(PROFILE)
