#!/usr/bin/env bash
# Builds the folder of wheels scripts/gpu-check.sh installs on the GPU machine: what the
# check needs beyond that machine's torch, transformers, peft, prometheus-client and httpx,
# at the exact versions installed here (pip download, no dependencies resolved: the list is
# complete), for the GPU machine's Python and platform. Fails if the wheels and the
# repository (git archive of HEAD) together exceed 64 MiB, the most that travels.
#
# Usage: scripts/gpu-wheels.sh DIR [--python-version 3.11] [--platform manylinux_2_28_x86_64]
#   then, there: scripts/gpu-check.sh OUT --wheels DIR
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
DIR=${1:?usage: scripts/gpu-wheels.sh DIR [--python-version X.Y] [--platform TAG]}
shift
PYVER=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
PLATFORM=manylinux_2_28_x86_64
while [ $# -gt 0 ]; do
  case "$1" in
    --python-version) PYVER=$2; shift 2 ;;
    --platform) PLATFORM=$2; shift 2 ;;
    *) echo "gpu-wheels: unknown option $1" >&2; exit 2 ;;
  esac
done
LIMIT=$((64 * 1024 * 1024))
# The service's web stack and settings, 4-bit kernels, and the test runner with the plugins
# pyproject's pytest options name. (anyio, h11, idna, sniffio, typing-extensions, packaging,
# pyyaml come with httpx, torch and transformers on that machine.)
PACKAGES=(fastapi starlette annotated-doc uvicorn pydantic pydantic-core pydantic-settings
          python-dotenv annotated-types typing-inspection click opentelemetry-api
          importlib-metadata zipp bitsandbytes
          pytest pluggy iniconfig pygments pytest-asyncio pytest-timeout)

mkdir -p "$DIR"
pins=()
for name in "${PACKAGES[@]}"; do
  version=$("$PYTHON" -c 'import importlib.metadata as m, sys
try: print(m.version(sys.argv[1]))
except m.PackageNotFoundError: pass' "$name")
  if [ -z "$version" ]; then echo "[gpu-wheels] $name is not installed here: skipped"; continue; fi
  pins+=("$name==$version")
done
echo "[gpu-wheels] ${pins[*]}"
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --dest "$DIR" \
  --python-version "$PYVER" --platform "$PLATFORM" --platform manylinux2014_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux_2_24_x86_64 --platform any "${pins[@]}"

wheels=$(du -cb "$DIR"/*.whl | tail -1 | cut -f1)
repo=$(git -C "$ROOT" archive --format=tar.gz HEAD | wc -c)
total=$((wheels + repo))
printf '[gpu-wheels] wheels %.1f MiB + repository %.1f MiB = %.1f MiB (limit 64 MiB)\n' \
  "$(echo "$wheels / 1048576" | bc -l)" "$(echo "$repo / 1048576" | bc -l)" \
  "$(echo "$total / 1048576" | bc -l)"
[ "$total" -le "$LIMIT" ] || { echo "[gpu-wheels] over 64 MiB" >&2; exit 1; }
