# rloss on a GPU: `make build` builds this image, `make run` starts JupyterLab in
# it on all GPUs with ./data and ./results mounted. The steps are the README's:
# `make setup` (the pinned environment), then the lattice extension compiled for
# the common GPU architectures (no GPU is needed to build).
FROM nvidia/cuda:13.0.1-devel-ubuntu24.04

# CUDA 13 supports Turing (7.5) and newer. The list stays in the environment so
# the first use at run time finds the extension built here instead of rebuilding it.
ARG CUDA_ARCH="7.5;8.0;8.6;8.9;9.0;10.0;12.0"
# The user's id: files written to the mounted folders belong to the host user.
ARG UID=1000

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    CUDA_HOME=/usr/local/cuda \
    TORCH_CUDA_ARCH_LIST=${CUDA_ARCH} \
    RLOSS_FORCE_CUDA=1

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev make g++ git \
 && rm -rf /var/lib/apt/lists/*

# Ubuntu's image has a user with id 1000 already; the project's user takes its place.
RUN if id -u ubuntu >/dev/null 2>&1; then userdel -r ubuntu; fi \
 && useradd --create-home --uid "${UID}" --shell /bin/bash rloss \
 && mkdir -p /workspace/rloss \
 && chown rloss:rloss /workspace/rloss

USER ${UID}
WORKDIR /workspace/rloss

# The pinned environment first, so a change to the code alone reuses this layer.
COPY --chown=rloss:rloss pyproject.toml constraints.txt Makefile README.md ./
COPY --chown=rloss:rloss rloss/__init__.py rloss/__init__.py
RUN make setup

COPY --chown=rloss:rloss . .
RUN make build-ext \
 && mkdir -p data results

ENV PATH=/workspace/rloss/.venv/bin:${PATH}
EXPOSE 8888
VOLUME ["/workspace/rloss/data", "/workspace/rloss/results"]
CMD ["jupyter", "lab", "--ip=0.0.0.0", "--port=8888", "--no-browser", "--notebook-dir=/workspace/rloss/notebooks"]
