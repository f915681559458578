# rloss: `make study` runs the whole study, `make test` runs the tests.
# Both create the environment (.venv) first when it is missing.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PARAMS ?= params/default.yaml
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
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

study: $(STAMP)  ## run the notebooks in order with papermill and $(PARAMS)
	@mkdir -p results/notebooks
	@set -e; for nb in $(NOTEBOOKS); do \
	  echo "== $$nb (parameters: $(PARAMS))"; \
	  $(PY) -m papermill "$$nb" "results/notebooks/$$(basename $$nb)" -f $(PARAMS) \
	    -k python3 --cwd notebooks --no-request-save-on-cell-execute --autosave-cell-every 0 \
	    || { echo "study: $$nb failed; see the marked cell in results/notebooks/$$(basename $$nb)" >&2; exit 1; }; \
	done
	@echo "study: executed notebooks are in results/notebooks/"

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
