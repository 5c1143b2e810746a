#!/usr/bin/env bash
# Prints the image tool to use: docker when a Docker engine answers, else podman.
# IMAGE_TOOL overrides. Exits 1 with a one-line error when neither works.
set -euo pipefail
if [ -n "${IMAGE_TOOL:-}" ]; then
    echo "$IMAGE_TOOL"
elif command -v docker > /dev/null && timeout 10 docker info > /dev/null 2>&1; then
    echo docker
elif command -v podman > /dev/null; then
    echo podman
else
    echo "error: no Docker engine answers and podman is not installed" \
         "(apt-get install podman buildah)" >&2
    exit 1
fi
