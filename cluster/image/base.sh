#!/usr/bin/env bash
# A Debian bookworm base image with Python 3.11, for hosts that cannot pull
# python:3.11-slim-bookworm (no registry): debootstrap a minimal root from the Debian mirror
# apt already uses, then import it as an image. Does nothing when the image exists.
#
#   cluster/image/base.sh [IMAGE]        # default dcgan-base:bookworm
#
# Env: IMAGE_TOOL (podman or docker; default: what cluster/image/tool.sh picks),
#      DEBIAN_MIRROR (default: the first deb.debian.org-style URI of the host's apt sources).
# Needs root (debootstrap) and Debian's debootstrap package.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
image="${1:-dcgan-base:bookworm}"
tool="${IMAGE_TOOL:-$("$here/tool.sh")}"

if "$tool" image inspect "$image" > /dev/null 2>&1; then
    echo "base image $image: present"
    exit 0
fi
command -v debootstrap > /dev/null || {
    echo "error: no base image $image and no debootstrap (apt-get install debootstrap)" >&2
    exit 1
}
[ "$(id -u)" = 0 ] || { echo "error: debootstrap needs root" >&2; exit 1; }

mirror="${DEBIAN_MIRROR:-}"
if [ -z "$mirror" ]; then
    # deb822 sources (URIs: ...) or one-line sources (deb URI suite ...), main archive only.
    mirror="$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null \
              | awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}')"
    [ -n "$mirror" ] || mirror="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
              2>/dev/null | awk '$1 == "deb" && $2 !~ /security/ {print $2; exit}')"
    mirror="${mirror:-http://deb.debian.org/debian}"
fi

root="$(mktemp -d /var/tmp/dcgan-base.XXXXXX)"
trap 'rm -rf "$root"' EXIT
echo "debootstrap bookworm from $mirror (about a minute)"
debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates \
    bookworm "$root" "$mirror" > "$root.log" 2>&1 || {
    tail -n 20 "$root.log" >&2
    echo "error: debootstrap failed (log: $root.log)" >&2
    exit 1
}
rm -f "$root.log"
# What a container base does not need: package caches and lists, docs, man pages.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
       "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/*
tar --numeric-owner -C "$root" -c . | "$tool" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    - "$image" > /dev/null
echo "base image $image: built ($("$tool" image inspect --format '{{.Size}}' "$image") bytes)"
