#!/usr/bin/env bash
# The tools the test suite runs besides Python packages, installed from the project's own
# pins on a fresh machine (`make test` and `.ci/run` run this first; run it by hand before
# a bare `pytest`):
#
#   checkov           PyPI, pinned below, in its own virtual environment under .venv-tools/
#                     (its pins would downgrade boto3, packaging and networkx in .venv)
#   promtool, prometheus, prometheus-alertmanager
#                     Debian packages prometheus and prometheus-alertmanager, with apt-get
#                     when running as root (CI does)
#
# kubectl, hadolint, kubernetes-validate and weed (SeaweedFS) are PyPI wheels in the dev
# extras of pyproject.toml. Without root the Debian tools that are missing are listed here,
# loudly, and the tests that need them skip saying so; `.ci/run` fails on such a skip.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
CHECKOV_VERSION=3.3.30
CHECKOV_VENV=.venv-tools/checkov-$CHECKOV_VERSION
DEBIAN_PACKAGES=(prometheus prometheus-alertmanager)
DEBIAN_BINARIES=(promtool prometheus prometheus-alertmanager)

if [ "${1:-}" = "--checkov-path" ]; then
    echo "$CHECKOV_VENV/bin/checkov"
    exit 0
fi

if [ ! -x "$CHECKOV_VENV/bin/checkov" ]; then
    echo "test-tools: installing checkov $CHECKOV_VERSION into $CHECKOV_VENV" >&2
    "$PYTHON" -m venv "$CHECKOV_VENV"
    "$CHECKOV_VENV/bin/pip" install --quiet "checkov==$CHECKOV_VERSION"
fi
if [ "${1:-}" = "--checkov-only" ]; then
    exit 0
fi

missing=()
for binary in "${DEBIAN_BINARIES[@]}"; do
    command -v "$binary" >/dev/null || missing+=("$binary")
done
if [ ${#missing[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "test-tools: apt-get install ${DEBIAN_PACKAGES[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "${DEBIAN_PACKAGES[@]}" >/dev/null
    missing=()
    for binary in "${DEBIAN_BINARIES[@]}"; do
        command -v "$binary" >/dev/null || missing+=("$binary")
    done
fi
if [ ${#missing[@]} -gt 0 ]; then
    {
        echo "########################################################################"
        echo "test-tools: MISSING ${missing[*]} (Debian: ${DEBIAN_PACKAGES[*]})."
        echo "Not root or no apt-get: the monitoring and end-to-end tests will SKIP."
        echo "Install them with: sudo apt-get install ${DEBIAN_PACKAGES[*]}"
        echo "########################################################################"
    } >&2
fi
