#!/usr/bin/env bash
# Builds the dcgan image from the Dockerfile with Docker where an engine answers, else with
# podman (no daemon; `--isolation chroot` by default, which works where containers cannot
# set their own limits). `make image` runs this.
#
#   cluster/image/build.sh                  # dcgan:cpu
#   VARIANT=cuda cluster/image/build.sh     # dcgan:cuda
#
# Env (all optional):
#   VARIANT          cpu (default) or cuda
#   IMAGE            the tag (default dcgan:$VARIANT)
#   PYTHON_IMAGE     the base image (default python:3.11-slim-bookworm when it is present or
#                    a registry answers; else dcgan-base:bookworm, built by base.sh with
#                    debootstrap when missing)
#   TORCH_INDEX_URL  where torch comes from: an index URL or "pypi" (default: PyTorch's CPU
#                    index for cpu, and PyPI when that index does not answer; PyPI for cuda)
#   HOST_PIP         1: give the build this host's pip sources (CA bundle, local wheel
#                    folders and indexes, mounted read-only, never copied into the image);
#                    0: never; auto (default): with podman, when the host's pip has any
#   IMAGE_TOOL       docker or podman (default: cluster/image/tool.sh decides)
#   ISOLATION        podman's build isolation (default chroot)
#   BUILD_FLAGS      more flags for the build command
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"

variant="${VARIANT:-cpu}"
case "$variant" in cpu|cuda) ;; *) echo "error: VARIANT must be cpu or cuda (got $variant)" >&2
    exit 2 ;; esac
image="${IMAGE:-dcgan:$variant}"
tool="${IMAGE_TOOL:-$("$here/tool.sh")}"
reachable() { curl -sS -o /dev/null --max-time "${2:-5}" "$1" 2> /dev/null; }

base="${PYTHON_IMAGE:-}"
if [ -z "$base" ]; then
    base=python:3.11-slim-bookworm
    if ! "$tool" image inspect "$base" > /dev/null 2>&1 \
            && ! reachable https://registry-1.docker.io/v2/; then
        base=dcgan-base:bookworm
        echo "No container registry answers: base image $base (debootstrap)"
        "$here/base.sh" "$base"
    fi
fi

torch_index="${TORCH_INDEX_URL:-}"
if [ -z "$torch_index" ] && [ "$variant" = cpu ]; then
    torch_index=https://download.pytorch.org/whl/cpu
    if ! reachable "$torch_index/torch/" 10; then
        torch_index=pypi
        echo "PyTorch's CPU index does not answer: torch from PyPI (CUDA build, several GB)"
    fi
fi

args=(--build-arg "PYTHON_IMAGE=$base" --build-arg "VARIANT=$variant" -t "$image")
[ -n "$torch_index" ] && args+=(--build-arg "TORCH_INDEX_URL=$torch_index")

host_pip="${HOST_PIP:-auto}"
pipdir=""
cleanup() { [ -n "$pipdir" ] && rm -rf "$pipdir"; return 0; }
trap cleanup EXIT
if [ "$host_pip" != 0 ]; then
    if [ "$tool" = docker ]; then
        [ "$host_pip" = 1 ] && { echo "error: HOST_PIP=1 needs podman (docker build" \
            "cannot mount folders)" >&2; exit 2; }
    else
        pipdir="$(mktemp -d /tmp/dcgan-host-pip.XXXXXX)"
        python="$(command -v python3)"
        [ -x "$root/.venv/bin/python" ] && python="$root/.venv/bin/python"
        mapfile -t mounts < <("$python" "$here/host_pip.py" "$pipdir")
        if [ -f "$pipdir/pip.conf" ]; then
            chmod -R a+rX "$pipdir"
            args+=(--volume "$pipdir:/run/host-pip:ro"
                   --build-arg PIP_CONFIG_FILE=/run/host-pip/pip.conf)
            for m in "${mounts[@]}"; do args+=(--volume "$m:$m:ro"); done
            echo "pip in the build uses this host's sources: ${mounts[*]:-(CA bundle only)}"
        fi
    fi
fi

if [ "$tool" = docker ]; then
    export DOCKER_BUILDKIT=1
else
    args+=(--isolation "${ISOLATION:-chroot}" --layers)
fi
# shellcheck disable=SC2086 # BUILD_FLAGS: flags as words
echo "+ $tool build ${args[*]} ${BUILD_FLAGS:-} ."
start=$(date +%s)
"$tool" build "${args[@]}" ${BUILD_FLAGS:-} .
size="$("$tool" image inspect --format '{{.Size}}' "$image")"
echo "Built $image in $(( $(date +%s) - start )) s: $(( size / 1000000 )) MB"
