# syntax=docker/dockerfile:1
# A GPU worker: one solo-pool Celery process on one GPU, on a CUDA runtime base with the CUDA build of torch.
#   docker build -f docker/worker.Dockerfile -t renderfarm-worker .
# Models: mount a folder at /models (RENDERFARM_MODELS_DIR), or bake one in with a derived image (docs/cluster.md).
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

# ---- build: Python, torch (CUDA build, pinned like the Makefile's) and the worker extra --------------------------
FROM ${CUDA_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first, from the CUDA index, in its own layer (gigabytes; it changes rarely).
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY renderfarm ./renderfarm
COPY shared ./shared
COPY scheduler ./scheduler
COPY worker ./worker
RUN pip install ".[worker]" && python -c "import worker.service, worker.metrics"

# ---- runtime: the same CUDA base with Python, the environment, and an unprivileged user --------------------------
FROM ${CUDA_IMAGE} AS runtime
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 renderfarm \
    && useradd --system --uid 10001 --gid renderfarm --home-dir /var/lib/renderfarm --shell /usr/sbin/nologin renderfarm \
    && install -d -o renderfarm -g renderfarm /var/lib/renderfarm /models /var/cache/huggingface /run/renderfarm-gpus
COPY --from=build /opt/venv /opt/venv
COPY --chmod=0755 docker/gpu_slot.py /usr/local/bin/renderfarm-gpu-slot
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HOME=/var/cache/huggingface \
    RENDERFARM_DATA_DIR=/var/lib/renderfarm \
    RENDERFARM_MODELS_DIR=/models \
    RENDERFARM_METRICS_PORT=9400
USER 10001:10001
WORKDIR /var/lib/renderfarm
EXPOSE 9400
# /healthz of worker/metrics.py: 503 when a render is stuck or the worker ran out of GPU memory repeatedly.
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('RENDERFARM_METRICS_PORT', '9400'), timeout=4)"
# Picks one free GPU of those the container sees (one per replica under `docker compose --scale`), then runs the
# worker on it. Queues: add `--queues rf.<family>.interactive,...` to the command.
ENTRYPOINT ["renderfarm-gpu-slot", "--"]
CMD ["python", "-m", "worker.service", "--device", "cuda"]
