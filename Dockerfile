# Minimal image for now: a CUDA development base (nvcc for the CUDA lattice),
# the project installed with the pinned environment, JupyterLab by default.
# The complete image (extension compiled at build time, non-root user, mounts)
# comes with the study issue.
FROM nvidia/cuda:13.0.1-devel-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev make git \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /workspace/rloss
COPY . .
RUN make setup

EXPOSE 8888
CMD [".venv/bin/jupyter", "lab", "--ip=0.0.0.0", "--no-browser", "--notebook-dir=/workspace/rloss/notebooks"]
