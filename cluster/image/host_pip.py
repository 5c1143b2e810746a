"""Write a pip config that lets an image build use this host's pip sources.

    python3 cluster/image/host_pip.py OUT_DIR

Reads the host's pip configuration (``pip config list``: files and PIP_* variables) and
writes OUT_DIR/pip.conf for use inside a build where OUT_DIR is mounted at /run/host-pip:
the CA bundle (copied to OUT_DIR/ca.crt: registries behind a TLS-inspecting proxy need it),
the remote index, and local wheel folders and file:// indexes, which the build mounts at
the same paths (for a ROOT/simple index: ROOT). Local indexes come first so that a wheel on
disk wins over the same wheel on the remote index. Prints one line per folder to mount;
prints nothing and writes nothing when the host's pip has nothing a build needs.

Only stdlib: runs with any python3.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

MOUNT = "/run/host-pip"


def pip_config() -> dict[str, str]:
    proc = subprocess.run([sys.executable, "-m", "pip", "config", "list"],
                          capture_output=True, text=True)
    values: dict[str, str] = {}
    # Lines look like `global.cert='/etc/ssl/...'` or `:env:.find-links='/opt/wheels'`;
    # later sources override earlier ones, environment variables win.
    env: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        key, _, raw = line.partition("=")
        if not raw:
            continue
        section, _, name = key.rpartition(".")
        value = " ".join(shlex.split(raw))
        if section == ":env:":
            env[name] = value
        elif section in ("global", "install", "download", "wheel"):
            values.setdefault(name, value)
    values.update(env)
    return values


def local_path(location: str) -> Path | None:
    if location.startswith("file://"):
        return Path(urlparse(location).path)
    if "://" not in location:
        return Path(location)
    return None


def main(out_dir: str) -> int:
    config = pip_config()
    remote_index = config.get("index-url", "https://pypi.org/simple")
    local_indexes, remote_extra, find_links, mounts = [], [], [], set()
    for url in config.get("extra-index-url", "").split():
        path = local_path(url)
        if path is None:
            remote_extra.append(url)
        elif path.is_dir():
            local_indexes.append(f"file://{path}")
            # A local index's pages link to files beside it (ROOT/simple -> ../../files).
            mounts.add(path.parent if path.name == "simple" else path)
    for location in config.get("find-links", "").split():
        path = local_path(location)
        if path is None:
            find_links.append(location)
        elif path.is_dir():
            find_links.append(str(path))
            mounts.add(path)
    cert = config.get("cert")
    cert_path = Path(cert) if cert and Path(cert).is_file() else None
    if not (local_indexes or find_links or cert_path or "index-url" in config):
        return 0

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = ["[global]"]
    if cert_path:
        shutil.copyfile(cert_path, out / "ca.crt")
        lines.append(f"cert = {MOUNT}/ca.crt")
    indexes = [*local_indexes, remote_index, *remote_extra]
    lines.append(f"index-url = {indexes[0]}")
    if indexes[1:]:
        lines.append(f"extra-index-url = {' '.join(indexes[1:])}")
    if find_links:
        lines.append(f"find-links = {' '.join(find_links)}")
    (out / "pip.conf").write_text("\n".join(lines) + "\n")
    for path in sorted(mounts):
        print(path)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: host_pip.py OUT_DIR", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1]))
