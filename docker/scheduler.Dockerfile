# syntax=docker/dockerfile:1
# The scheduler: the HTTP API, the dispatcher and the reconciler. Slim Python, no torch.
#   docker build -f docker/scheduler.Dockerfile -t renderfarm-scheduler .
ARG PYTHON_IMAGE=python:3.12-slim-bookworm

# ---- build: a virtual environment with the farm and the server extra (torch-free) -----------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY renderfarm ./renderfarm
COPY shared ./shared
COPY scheduler ./scheduler
# No worker/ here: the scheduler never imports it (architecture.md "Imports go one way").
RUN pip install ".[server]" && python -c "import scheduler.app, shared.db.migrate"

# ---- runtime: the environment only, run as an unprivileged user ------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    RENDERFARM_DATA_DIR=/var/lib/renderfarm
RUN groupadd --system --gid 10001 renderfarm \
    && useradd --system --uid 10001 --gid renderfarm --home-dir /var/lib/renderfarm --shell /usr/sbin/nologin renderfarm \
    && install -d -o renderfarm -g renderfarm /var/lib/renderfarm
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
WORKDIR /var/lib/renderfarm
EXPOSE 7860
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:7860/healthz', timeout=4)"]
# `renderfarm db upgrade` (the migration step) uses this image too.
CMD ["renderfarm", "scheduler", "--host", "0.0.0.0", "--port", "7860"]
