#!/usr/bin/env bash
# Installs what `make image-test` needs where it is missing: Debian's podman, buildah and
# debootstrap packages (root; apt). Used by .ci/run.
set -euo pipefail
missing=()
for tool in podman buildah debootstrap; do
    command -v "$tool" > /dev/null || missing+=("$tool")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get > /dev/null || [ "$(id -u)" -ne 0 ]; then
    echo "error: ${missing[*]} missing: install them as root (Debian: apt-get install" \
         "podman buildah debootstrap)" >&2
    exit 1
fi
echo "Installing ${missing[*]} (Debian packages)..."
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    podman buildah debootstrap > /dev/null
podman --version
