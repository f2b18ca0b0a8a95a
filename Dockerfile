# syntax=docker/dockerfile:1
#
# model-cache preloader image: `preload` (init container / Job),
# `preload agent` (DaemonSet) and `preload wait` (vLLM init container).
#
# Two stages: the builder makes a virtualenv (dependencies first, then the
# project, so editing agent/ does not reinstall dependencies); the runtime
# stage is the same slim Python base plus that virtualenv, nothing else (no
# compilers, no pip). It runs as numeric user 10001 and works with a
# read-only root filesystem as long as /tmp is writable (emptyDir / --tmpfs).
#
# Offline builds: put wheels for the base image's Python into
# docker/wheelhouse/ (scripts/build-image.sh does this) and pip installs with
# --no-index from there. With docker/wheelhouse/ empty, pip uses the index.
#
# Base image: python:3.12.7-slim-bookworm pinned by digest. Override it with
# --build-arg BASE_IMAGE=... (any Debian-like image with python3 + venv; the
# build does not assume a Python minor version).
ARG BASE_IMAGE=python:3.12.7-slim-bookworm@sha256:032c52613401895aa3d418a4c563d2d05f993bc3ecc065c8f4e2280978acd249

# --------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1

RUN python3 -m venv /opt/venv
WORKDIR /src

# 1. Dependencies only: this layer is rebuilt when pyproject.toml or the
#    wheelhouse changes, not when the code changes.
COPY docker/wheelhouse/ /wheelhouse/
COPY pyproject.toml ./
RUN set -eu; \
    if ls /wheelhouse/*.whl >/dev/null 2>&1; then \
        export PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheelhouse; \
    fi; \
    python3 -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
        > /tmp/requirements.txt; \
    /opt/venv/bin/pip install -r /tmp/requirements.txt

# 2. The project itself (no dependency resolution: step 1 did it). agent/devhub/ (the
#    loopback test hub and demo model) is not in the build context: .dockerignore drops it.
COPY pyproject.toml README.md* ./
COPY agent/ ./agent/
RUN set -eu; \
    if ls /wheelhouse/*.whl >/dev/null 2>&1; then \
        export PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheelhouse; \
    fi; \
    /opt/venv/bin/pip install --no-deps . ; \
    /opt/venv/bin/pip check; \
    /opt/venv/bin/pip uninstall -y -q pip setuptools wheel 2>/dev/null || true

# Byte-compile everything now: the runtime root filesystem is read-only and
# PYTHONDONTWRITEBYTECODE keeps Python from trying later.
RUN /opt/venv/bin/python -m compileall -q -j 0 /opt/venv/lib \
    && test -x /opt/venv/bin/preload

# --------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime

LABEL org.opencontainers.image.title="model-cache-preloader" \
      org.opencontainers.image.description="Per-node model-cache preloader for vLLM on Kubernetes" \
      org.opencontainers.image.licenses="Apache-2.0"

# HOME, TMPDIR and caches point at /tmp: the only writable path besides the
# model cache when the root filesystem is read-only.
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    HF_HUB_DISABLE_TELEMETRY=1

COPY --from=builder /opt/venv /opt/venv

# Numeric user and group: Kubernetes' runAsNonRoot cannot verify a name.
USER 10001:10001
WORKDIR /tmp
EXPOSE 8080

ENTRYPOINT ["preload"]
CMD ["--help"]
