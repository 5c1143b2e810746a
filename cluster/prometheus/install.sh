#!/usr/bin/env bash
# Installs Debian's prometheus package (prometheus + promtool) where it is missing and apt
# can be used (root, or passwordless sudo). Used by `make monitor` and .ci/run.
set -euo pipefail
if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    echo "prometheus is missing and this is not a Debian/Ubuntu machine: download it from" \
         "https://prometheus.io/download/ and put prometheus and promtool on PATH" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "prometheus is missing and installing it needs root: run" \
             "'sudo apt-get install prometheus'" >&2
        exit 1
    fi
fi
echo "Installing Debian's prometheus package (prometheus, promtool)..."
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
# The package enables a system service on :9090; we only want the binaries.
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
prometheus --version | head -1
