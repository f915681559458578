# rloss: `make study` runs the whole study, `make test` runs the tests.
# Both create the environment (.venv) first when it is missing; `make test` also
# provisions the headless Chromium of the browser tests once (`make browser`).
# Every other target is a thin call of `python -m rloss ...`; `make help` lists them.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PARAMS ?= params/default.yaml
STAMP  := $(VENV)/.installed
BROWSER_STAMP := $(VENV)/.browser

# make study|reproduce [PARALLEL_RUNS=auto|N]: runs trained at once; changes the time, never a number.
PARALLEL_RUNS ?=
# make reproduce [RECORDED=...]: the recorded study the README quotes, compared run by run with a fresh one.
RECORDED ?= benchmarks/results/study-default-2026-12-04-1822
# make inference IMAGE_PATH=... [CHECKPOINT=...] [OUTPUT=...] [INTERPOLATION=auto|bicubic|bilinear|nearest]
CHECKPOINT    ?= results/small_pce_crf_seed0/checkpoint.pt
INTERPOLATION ?= auto
# make browser-check [RESULTS=results] [SCREENSHOT=$(RESULTS)/result_browser.png]
RESULTS       ?= results
SCREENSHOT    ?= $(RESULTS)/result_browser.png
# The *-wandb targets log online (after `make setup-wandb`); WANDB_MODE=offline keeps the logs local.
WANDB_MODE    ?= online
# make gpu-check [GPU_CHECK_OUT=results/gpu_check]: needs no .venv (a bare GPU machine has torch already).
GPU_CHECK_OUT ?= results/gpu_check
GPU_CHECK_PY  := $(if $(wildcard $(PY)),$(PY),$(PYTHON))
# Docker (make build / make run).
IMAGE     ?= rloss:latest
CUDA_ARCH ?= 7.5;8.0;8.6;8.9;9.0;10.0;12.0
PORT      ?= 8888
# The image's user takes your uid, so files in the mounted folders stay yours; root gets 1000
# (the image's user is never root).
DOCKER_UID ?= $(shell u=$$(id -u); [ "$$u" = 0 ] && echo 1000 || echo $$u)
# JupyterLab refuses to run as root without --allow-root (containers, cloud notebooks often are root).
LAB_ROOT := $(shell [ "$$(id -u)" = 0 ] && echo --allow-root)

WANDB_SET = --set $(1).wandb=true --set $(1).wandb_mode=$(WANDB_MODE)

.DEFAULT_GOAL := help
.PHONY: help setup test study reproduce test-env train-small train-standard train-small-wandb train-standard-wandb \
        setup-wandb inference lab draw browser browser-check build run build-ext cuda-check gpu-check bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-22s %s\n", $$1, $$2}'

setup: $(STAMP)  ## create .venv and install rloss (editable) with its dev dependencies

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

test: $(STAMP) $(BROWSER_STAMP)  ## run the test suite, notebooks included (nbval)
	$(PY) -m pytest

# Once: the browser tests skip (or, under CI=true, fail) without one; `make browser` tries again.
$(BROWSER_STAMP): $(STAMP)
	$(PY) tools/browser_check.py setup
	touch $(BROWSER_STAMP)

browser: $(STAMP)  ## headless Chromium for the browser tests: Debian's package (root or sudo), else Playwright's download
	$(PY) tools/browser_check.py setup
	touch $(BROWSER_STAMP)

study: $(STAMP)  ## run the notebooks in order (papermill, $(PARAMS)); RERUN=1 retrains finished runs
	$(PY) -m rloss study --params $(PARAMS) $(if $(RERUN),--rerun) $(if $(PARALLEL_RUNS),--parallel-runs $(PARALLEL_RUNS))

reproduce: $(STAMP)  ## the study again in a fresh results/reproduce-*/, compared run by run with $(RECORDED)
	$(PY) -m rloss reproduce --recorded $(RECORDED) --params $(PARAMS) $(if $(PARALLEL_RUNS),--parallel-runs $(PARALLEL_RUNS))

test-env: $(STAMP)  ## check the environment: versions, devices, the lattice extension
	$(PY) -m rloss env

train-small: $(STAMP)  ## data prep + the 40 px training study (notebooks 01, 02)
	$(PY) -m rloss study --params $(PARAMS) --only 01 02 $(if $(RERUN),--rerun)

train-standard: $(STAMP)  ## data prep + the standard-resolution training study (notebooks 01, 03)
	$(PY) -m rloss study --params $(PARAMS) --only 01 03 $(if $(RERUN),--rerun)

train-small-wandb: $(STAMP)  ## train-small, logging to Weights & Biases
	$(PY) -m rloss study --params $(PARAMS) --only 01 02 $(call WANDB_SET,02_train_40px) $(if $(RERUN),--rerun)

train-standard-wandb: $(STAMP)  ## train-standard, logging to Weights & Biases
	$(PY) -m rloss study --params $(PARAMS) --only 01 03 $(call WANDB_SET,03_train_513px) $(if $(RERUN),--rerun)

setup-wandb: $(STAMP)  ## store your W&B API key in ~/.netrc (asked for, never echoed)
	$(PY) -m rloss wandb-login

inference: $(STAMP)  ## label maps for IMAGE_PATH (image or folder); bicubic below 128 px
	@test -n "$(IMAGE_PATH)" || { echo "usage: make inference IMAGE_PATH=/path/to/image.jpg [CHECKPOINT=$(CHECKPOINT)] [OUTPUT=dir]" >&2; exit 2; }
	$(PY) -m rloss infer --checkpoint "$(CHECKPOINT)" --input "$(IMAGE_PATH)" --interpolation $(INTERPOLATION) \
		$(if $(OUTPUT),--output "$(OUTPUT)")

# make draw ROOT=data/mine [IMAGES=folder] [CLASSES="background cat dog"]: scribbles drawn in the browser (Voilà).
draw: $(STAMP)  ## draw scribbles on your images in the browser, saved as you draw (ROOT=, IMAGES=, CLASSES=)
	@test -n "$(ROOT)" || { echo 'make draw: give the data set folder, e.g. make draw ROOT=data/mine IMAGES=photos CLASSES="background cat dog"' >&2; exit 2; }
	$(PY) -m rloss data draw --root "$(ROOT)" $(if $(IMAGES),--images "$(IMAGES)") $(if $(CLASSES),--classes $(CLASSES))

lab: $(STAMP)  ## JupyterLab on the notebooks (http://localhost:$(PORT)); as root too
	$(PY) -m jupyter lab --notebook-dir=notebooks --port=$(PORT) --no-browser --KernelManager.transport_encryption=auto $(LAB_ROOT)

browser-check: $(STAMP)  ## notebook 05's result browser in headless Chromium (Voilà); screenshot to $(SCREENSHOT)
	$(PY) tools/browser_check.py check --results "$(RESULTS)" --out "$(SCREENSHOT)"

build:  ## build the Docker image $(IMAGE) (CUDA, extension compiled for CUDA_ARCH)
	docker build --build-arg CUDA_ARCH="$(CUDA_ARCH)" --build-arg UID=$(DOCKER_UID) -t $(IMAGE) .

run:  ## JupyterLab in the Docker image on all GPUs, with data/ and results/ mounted
	mkdir -p data results
	docker run --rm -it --gpus all --shm-size=8g -p $(PORT):8888 \
		-v "$(CURDIR)/data:/workspace/rloss/data" -v "$(CURDIR)/results:/workspace/rloss/results" $(IMAGE)

build-ext: $(STAMP)  ## build the lattice extension now (it also builds on first use)
	$(PY) -m rloss build

cuda-check: $(STAMP)  ## compile the CUDA sources with nvcc (no GPU needed)
	$(PY) -m rloss build --nvcc-check

gpu-check:  ## prove the GPU path in <= 8 min (no .venv needed): $(GPU_CHECK_OUT)/gpu_check.json
	PYTHONPATH=.$${PYTHONPATH:+:$$PYTHONPATH} $(GPU_CHECK_PY) -m rloss gpu-check --out "$(GPU_CHECK_OUT)"

bench: $(STAMP)  ## DenseCRF loss speed per kernel (see benchmarks/README.md)
	$(PY) -m rloss bench crf

clean:  ## remove the environment and generated results
	rm -rf $(VENV) results
