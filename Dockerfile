# loraswap service image.
#
#   podman build -t loraswap:cuda .                                   # CUDA torch (default)
#   podman build -t loraswap:cpu --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .
#   podman build -t loraswap:baked --build-arg BAKE_MODEL=true .      # SmolLM2 inside the image
#
# Without BAKE_MODEL the base model is fetched at first start into a volume mounted at
# /opt/loraswap/models (k8s: an init container fills the model PVC; see docs/deploy.md).
# Secrets never go into the image: the admin token and store credentials come from the
# environment at run time.

# An NVIDIA CUDA runtime image with an Ubuntu that packages Python 3.11. Override it with any
# Debian/Ubuntu image that has apt and python3.11 (a Debian 12 base for CPU builds).
ARG BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04

FROM ${BASE_IMAGE} AS python
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*

FROM python AS build
# Empty: torch==2.13.0 from the configured index (PyPI's Linux wheel is the CUDA build).
# https://download.pytorch.org/whl/cpu: the CPU wheel, for CPU-only images.
ARG TORCH_INDEX_URL=""
ARG BAKE_MODEL=false
# A current pip: the distribution's builds sdists without isolation, and seqeval's then fails.
RUN python3.11 -m venv /opt/loraswap/venv \
    && /opt/loraswap/venv/bin/pip install pip==26.3
ENV PATH=/opt/loraswap/venv/bin:$PATH
WORKDIR /src
# torch first, in its own layer: it is the largest part and changes least.
RUN if [ -n "$TORCH_INDEX_URL" ]; then \
        pip install --index-url "$TORCH_INDEX_URL" torch==2.13.0; \
    else \
        pip install torch==2.13.0; \
    fi
COPY pyproject.toml README.md ./
COPY adapters ./adapters
COPY service ./service
COPY training ./training
COPY core ./core
COPY base_model ./base_model
COPY jobs ./jobs
COPY tenants ./tenants
COPY loraswap ./loraswap
RUN pip install . \
    && mkdir -p /opt/loraswap/models \
    && if [ "$BAKE_MODEL" = "true" ]; then \
        loraswap model fetch --dest /opt/loraswap/models/SmolLM2-135M-Instruct; \
    fi

FROM python AS runtime
LABEL org.opencontainers.image.title="loraswap" \
      org.opencontainers.image.description="Many tenants' LoRA adapters on one resident base model" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/loraswap /opt/loraswap
# A fixed non-root uid (Kubernetes runAsNonRoot checks a numeric user). Everything the
# service writes goes under /var/lib/loraswap (a volume), so the root can be read-only.
RUN groupadd --system --gid 10001 loraswap \
    && useradd --system --uid 10001 --gid loraswap --home-dir /var/lib/loraswap \
       --shell /usr/sbin/nologin loraswap \
    && mkdir -p /var/lib/loraswap \
    && chown loraswap:loraswap /var/lib/loraswap
ENV PATH=/opt/loraswap/venv/bin:$PATH \
    HOME=/var/lib/loraswap \
    XDG_CACHE_HOME=/var/lib/loraswap/cache \
    HF_HOME=/var/lib/loraswap/cache/huggingface \
    TRITON_CACHE_DIR=/var/lib/loraswap/cache/triton \
    TMPDIR=/tmp \
    LORASWAP_HOST=0.0.0.0 \
    LORASWAP_PORT=8000 \
    LORASWAP_METRICS_PORT=9090 \
    LORASWAP_LOG_FORMAT=json \
    LORASWAP_DRIFT_ENABLED=true \
    LORASWAP_BASE_MODEL=/opt/loraswap/models/SmolLM2-135M-Instruct \
    LORASWAP_STORE_URI=file:///var/lib/loraswap/store \
    LORASWAP_ADAPTER_CACHE_DIR=/var/lib/loraswap/adapter-cache
VOLUME ["/var/lib/loraswap"]
USER 10001:10001
WORKDIR /var/lib/loraswap
EXPOSE 8000 9090
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["loraswap"]
CMD ["serve"]
