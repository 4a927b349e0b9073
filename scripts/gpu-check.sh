#!/usr/bin/env bash
# The GPU check (issue 21): one command, no network, on a machine that has Python with
# torch (+CUDA), transformers, peft, prometheus-client and httpx, and nothing else of ours.
# It installs the wheels it is given (scripts/gpu-wheels.sh builds that folder: fastapi,
# uvicorn, pydantic, bitsandbytes, pytest, ...) offline into a folder of its own, runs the
# `gpu` tests, then the engine bench on the device (loraswap/bench/gpu_check.py), and writes
# gpu-check.json, gpu-check.md, pytest-gpu.xml and the logs to OUT.
#
# Usage: scripts/gpu-check.sh OUT [--wheels DIR] [--device cuda|cpu] [--small]
#                              [--smollm2 DIR] [--skip-pytest] [-- extra bench options]
#   On the GPU machine:  scripts/gpu-check.sh /tmp/gpu-report --wheels ./wheels
#   On a CPU (CI):       scripts/gpu-check.sh OUT --device cpu --small
# Budget: <= 8 minutes on one H200 (pytest -m gpu ~1 min, two bases x bf16/nf4 x 3 adapter
# counts x 2 batch sizes; the Llama-3-8B-shaped base is built in bf16 on the GPU).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
OUT=${1:?usage: scripts/gpu-check.sh OUT [--wheels DIR] [--device D] [--small] [--smollm2 DIR]}
shift
WHEELS="" DEVICE="" SMALL="" SMOLLM2="" SKIP_PYTEST=""
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) WHEELS=$2; shift 2 ;;
    --device) DEVICE=$2; shift 2 ;;
    --small) SMALL=--small; shift ;;
    --smollm2) SMOLLM2=$2; shift 2 ;;
    --skip-pytest) SKIP_PYTEST=1; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "gpu-check: unknown option $1" >&2; exit 2 ;;
  esac
done
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
started=$(date +%s)

# Nothing reaches the network: the Hub's switches off, pip only from the folder given.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 USE_HUB_KERNELS=NO
export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1
SITE="$OUT/site-packages"
if [ -n "$WHEELS" ]; then
  echo "[gpu-check] installing $(ls "$WHEELS"/*.whl | wc -l) wheels from $WHEELS (offline)"
  "$PYTHON" -m pip install --quiet --no-index --find-links "$WHEELS" --no-deps \
    --target "$SITE" "$WHEELS"/*.whl > "$OUT/pip.log" 2>&1 || { cat "$OUT/pip.log"; exit 1; }
fi
export PYTHONPATH="$ROOT${WHEELS:+:$SITE}${PYTHONPATH:+:$PYTHONPATH}"
cd "$ROOT"

"$PYTHON" - <<'PY' | tee "$OUT/environment.txt"
import torch, transformers, peft
print(f"python {__import__('sys').version.split()[0]}, torch {torch.__version__} "
      f"(CUDA {torch.version.cuda}, available: {torch.cuda.is_available()}), "
      f"transformers {transformers.__version__}, peft {peft.__version__}")
if torch.cuda.is_available():
    print("GPU:", torch.cuda.get_device_name(0))
PY

pytest_exit=""
if [ -z "$SKIP_PYTEST" ]; then
  # tests/device only: its tests need nothing beyond the wheels (tests elsewhere that are
  # marked gpu sit under conftests that import the whole service: boto3, pyarrow, ...).
  files=(tests/device)
  echo "[gpu-check] pytest -m gpu ${files[*]}"
  set +e
  timeout 300 "$PYTHON" -m pytest -m gpu -q -p no:cacheprovider \
    --junitxml="$OUT/pytest-gpu.xml" "${files[@]}" > "$OUT/pytest-gpu.log" 2>&1
  pytest_exit=$?
  set -e
  tail -5 "$OUT/pytest-gpu.log"
fi

bench=(--out "$OUT")
[ -n "$DEVICE" ] && bench+=(--device "$DEVICE")
[ -n "$SMALL" ] && bench+=("$SMALL")
[ -n "$SMOLLM2" ] && bench+=(--smollm2 "$SMOLLM2")
[ -n "$pytest_exit" ] && bench+=(--pytest-exit "$pytest_exit" --pytest-junit "$OUT/pytest-gpu.xml")
timeout 420 "$PYTHON" -m loraswap.bench.gpu_check "${bench[@]}" "${EXTRA[@]}" 2>&1 | tee "$OUT/bench.log"
echo "[gpu-check] done in $(( $(date +%s) - started )) s: $OUT/gpu-check.md"
# pytest's status (5: nothing selected counts as passed) is the script's.
[ -z "$pytest_exit" ] || [ "$pytest_exit" = 0 ] || [ "$pytest_exit" = 5 ] || exit "$pytest_exit"
