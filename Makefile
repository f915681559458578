# rloss: `make study` runs the whole study, `make test` runs the tests.
# Both create the environment (.venv) first when it is missing.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PARAMS ?= params/default.yaml
STAMP  := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help setup test study env build cuda-check bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

setup: $(STAMP)  ## create .venv and install rloss (editable) with its dev dependencies

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)  ## run the test suite, notebooks included (nbval)
	$(PY) -m pytest

study: $(STAMP)  ## run the notebooks in order (papermill, $(PARAMS)); RERUN=1 retrains finished runs
	$(PY) -m rloss study --params $(PARAMS) $(if $(RERUN),--rerun)

env: $(STAMP)  ## check the environment and build the lattice extension
	$(PY) -m rloss env

build: $(STAMP)  ## build the lattice extension now (it also builds on first use)
	$(PY) -m rloss build

cuda-check: $(STAMP)  ## compile the CUDA sources with nvcc (no GPU needed)
	$(PY) -m rloss build --nvcc-check

bench: $(STAMP)  ## DenseCRF loss speed per kernel (see benchmarks/README.md)
	$(PY) -m rloss bench crf

clean:  ## remove the environment and generated results
	rm -rf $(VENV) results
