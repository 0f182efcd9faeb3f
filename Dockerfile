# syntax=docker/dockerfile:1
#
# VoxGate serving image: `voxgate serve` on ONNX Runtime with the CUDA execution provider.
#
#   docker build -t voxgate .                                   # GPU image, bundled models/default
#   docker build -t voxgate --build-arg PRETRAINED=titanet_large .   # also export TitaNet-L (needs network)
#   docker build -t voxgate:cpu --build-arg RUNTIME_IMAGE=ubuntu:24.04 \
#       --build-arg ORT_EXTRA=cpu --build-arg ORT_PACKAGE=onnxruntime==1.31.1 .   # CPU-only image
#
# With podman, build in Docker's format (`podman build --format docker`, or BUILDAH_FORMAT=docker): its
# default OCI format has no HEALTHCHECK. scripts/compose-smoke.sh builds the CPU image and runs it for real.
#
# CUDA / cuDNN: the wheel metadata of onnxruntime-gpu on PyPI says which CUDA it was built for
# (its `cuda` and `cudnn` extras): 1.19 - 1.26 want CUDA 12.x + cuDNN 9 (nvidia-*-cu12, nvidia-cudnn-cu12~=9.0);
# 1.27 and later want CUDA 13.x + cuDNN 9 (nvidia-*-cu13 / nvidia-cuda-runtime~=13.0, nvidia-cudnn-cu13~=9.0).
# ONNX Runtime's docs: a build for CUDA 12.x (13.x) runs on any 12.x (13.x) minor version, and cuDNN 8 and 9
# builds are not interchangeable. We pin onnxruntime-gpu 1.31.1 (newest on PyPI, within pyproject's range), so the
# runtime base is CUDA 13.0 with cuDNN 9, which needs an NVIDIA driver >= 580 on the host. For hosts with an
# older driver (>= 525), build the CUDA 12 pair instead:
#   --build-arg RUNTIME_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 --build-arg ORT_PACKAGE=onnxruntime-gpu==1.26.0
# (tests/test_deploy.py checks that the two defaults below agree with each other.)
#
# Every stage is Ubuntu 24.04 (Python 3.12), so the virtual environment built in `builder` runs unchanged
# in the runtime stage. The runtime image holds only the serving dependencies: no torch, no compiler.

ARG RUNTIME_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04
ARG BUILD_IMAGE=ubuntu:24.04
# Empty: serve the bundled models/default. A NeMo name (titanet_large, titanet_small, ecapa_tdnn,
# speakerverification_speakernet): download and export it at build time and serve that instead.
ARG PRETRAINED=""

# --- builder: the serving virtual environment --------------------------------------------------------
FROM ${BUILD_IMAGE} AS builder
ARG ORT_EXTRA=gpu
ARG ORT_PACKAGE=onnxruntime-gpu==1.31.1
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml ./
# The dependencies first, read from pyproject.toml, in a layer of their own: a change to app/ or the README
# then reinstalls only the package. The extra and the pinned ONNX Runtime build in one resolve, so pip cannot
# pick another version.
RUN python3 -c "import os, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies'][os.environ['ORT_EXTRA']]))" > /tmp/requirements.txt \
    && /opt/venv/bin/pip install -r /tmp/requirements.txt "${ORT_PACKAGE}"
COPY README.md ./
COPY app/ app/
# The same requirements again: all installed above, so pip adds the package alone.
RUN /opt/venv/bin/pip install ".[${ORT_EXTRA}]" "${ORT_PACKAGE}" \
    && /opt/venv/bin/python -I -c "import app.cli, onnxruntime; print('onnxruntime', onnxruntime.__version__)"

# --- optional: export a pretrained NeMo model (needs network at build time) ---------------------------
# Selected by `FROM models${PRETRAINED:+-pretrained}` below; BuildKit skips it when PRETRAINED is empty.
FROM ${BUILD_IMAGE} AS models-pretrained
ARG PRETRAINED
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/export
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app/ app/
# torch from the CPU wheel index first: PyPI's Linux torch is a CUDA build of several GB.
RUN /opt/export/bin/pip install --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0" \
    && /opt/export/bin/pip install ".[export,cpu]"
RUN /opt/export/bin/voxgate export --pretrained "${PRETRAINED}" --out "/models/${PRETRAINED}"

# --- no pretrained export: an empty model folder ------------------------------------------------------
FROM builder AS models
RUN mkdir -p /models

# hadolint ignore=DL3006
FROM models${PRETRAINED:+-pretrained} AS exported-models

# --- runtime -----------------------------------------------------------------------------------------
FROM ${RUNTIME_IMAGE} AS runtime
ARG PRETRAINED
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 voxgate \
    && useradd --system --uid 10001 --gid voxgate --home-dir /app --shell /usr/sbin/nologin voxgate \
    && mkdir -p /app /var/lib/voxgate \
    && chown voxgate:voxgate /var/lib/voxgate
COPY --from=builder /opt/venv /opt/venv
COPY models/default/ /app/models/default/
COPY --from=exported-models /models/ /app/models/
# The model is found through VOXGATE_MODEL_DIR: the package is installed into the venv, not run from a
# checkout. Mount your own graph over /app/models (or elsewhere) and point VOXGATE_MODEL_DIR at it.
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VOXGATE_MODEL_DIR=/app/models/${PRETRAINED:-default} \
    VOXGATE_DATA_DIR=/var/lib/voxgate \
    VOXGATE_TENSORRT_CACHE_DIR=/var/lib/voxgate/trt-cache \
    VOXGATE_PORT=8000
WORKDIR /app
USER 10001:10001
EXPOSE 8000
# No curl in the image: the health probe is a Python one-liner against /healthz (liveness only).
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('VOXGATE_PORT', '8000') + '/healthz', timeout=4)"]
ENTRYPOINT ["voxgate", "serve", "--host", "0.0.0.0"]
