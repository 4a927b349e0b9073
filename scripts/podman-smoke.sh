#!/usr/bin/env bash
# Builds the image with podman from a locally bootstrapped Debian base (no registry needed),
# runs it read-only on loopback, waits for /readyz, makes one prediction, stops it with
# SIGTERM and checks the exit status. Prints the duration and the image size
# (docs/deploy.md records them). Needs root, podman, runc and debootstrap, and
# /etc/containers/containers.conf with:
#   [containers]
#   default_ulimits = ["nofile=20000:20000"]
#   [engine]
#   runtime = "runc"
# Usage: scripts/podman-smoke.sh   (WORK=/var/tmp/loraswap-podman by default)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${WORK:-/var/tmp/loraswap-podman}
BASE=localhost/bookworm-python311:latest
IMAGE=localhost/loraswap:0.1.0-cpu
MODEL=${MODEL:-$HOME/.cache/loraswap/models}   # the folder that holds SmolLM2-135M-Instruct
WHEELS=${WHEELS:-/opt/wheels}                  # local wheels: torch 2.13.0+cpu
PORT=${PORT:-18000}
METRICS_PORT=${METRICS_PORT:-19090}
started=$(date +%s)
mkdir -p "$WORK"

if ! podman image exists "$BASE"; then
  if [ ! -x "$WORK/rootfs/usr/bin/apt-get" ]; then
    debootstrap --variant=minbase \
      bookworm "$WORK/rootfs" http://deb.debian.org/debian
  fi
  tar -C "$WORK/rootfs" -c . | podman import - "$BASE"
fi

# pip inside the build finds torch 2.13.0+cpu in the mounted wheel folder (a local version
# label ranks above PyPI's CUDA 2.13.0), its dependencies on PyPI.
# The host's CA bundle is mounted for the build only (this network intercepts TLS); build
# mounts are not part of the image.
printf '[global]\nfind-links = /opt/wheels\ncert = /etc/ssl/host-ca.crt\n' > "$WORK/pip.conf"
podman build --format docker --network host --pull=never \
  -v "$WHEELS:/opt/wheels:ro" -v "$WORK/pip.conf:/etc/pip.conf:ro" \
  -v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/host-ca.crt:ro \
  --build-arg BASE_IMAGE="$BASE" --build-arg TORCH_INDEX_URL=https://pypi.org/simple \
  -t "$IMAGE" "$ROOT"
built=$(date +%s)

# A world-readable copy of the model for the container's uid 10001 (the fetched
# model.safetensors is private to its owner).
if [ ! -f "$WORK/models/SmolLM2-135M-Instruct/model.safetensors" ]; then
  mkdir -p "$WORK/models"
  cp -r "$MODEL/SmolLM2-135M-Instruct" "$WORK/models/"
  chmod -R a+rX "$WORK/models"
fi

admin=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
key="smoke-$admin"
podman rm -f loraswap-smoke >/dev/null 2>&1 || true
# Limits below the host's: here runc may not set them equal to the host's hard limits.
podman run -d --name loraswap-smoke --read-only --network host \
  --ulimit nofile=4096:4096 --ulimit nproc=4096:4096 \
  -v "$WORK/models:/opt/loraswap/models:ro" \
  -e LORASWAP_HOST=127.0.0.1 -e LORASWAP_PORT="$PORT" -e LORASWAP_METRICS_PORT="$METRICS_PORT" \
  -e LORASWAP_DEVICE=cpu -e LORASWAP_QUANTIZATION=bf16 -e LORASWAP_THREADS=2 \
  -e LORASWAP_ADMIN_TOKEN="$admin" -e LORASWAP_API_KEYS="$key" \
  "$IMAGE" >/dev/null

for _ in $(seq 1 300); do
  if curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null; then break; fi
  sleep 1
done
curl -sf "http://127.0.0.1:$PORT/readyz"; echo
answer=$(curl -sf -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
  "http://127.0.0.1:$PORT/v1/predict" \
  -d '{"inputs":"What is the capital of France?","parameters":{"max_new_tokens":16}}')
echo "$answer"
echo "$answer" | grep -q Paris
curl -sf "http://127.0.0.1:$METRICS_PORT/metrics" | grep -q loraswap_num_requests_waiting

podman kill --signal TERM loraswap-smoke >/dev/null
status=$(podman wait loraswap-smoke)
podman logs loraswap-smoke 2>&1 | tail -3
podman rm loraswap-smoke >/dev/null
[ "$status" = "0" ] || { echo "exit status $status, expected 0"; exit 1; }

finished=$(date +%s)
size=$(podman image inspect "$IMAGE" --format '{{.Size}}')
echo "exit status 0; build $((built - started)) s, run + prediction + stop $((finished - built)) s," \
  "total $((finished - started)) s; image $((size / 1024 / 1024)) MiB"
