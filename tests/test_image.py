"""The image's build and test scripts, checked without building: what `make image` and
`make image-test` run (the build itself and the containers: `make image-test`, in CI)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import tomllib

import pytest

from .conftest import ROOT

IMAGE_DIR = ROOT / "cluster" / "image"
DOCKERFILE = (ROOT / "Dockerfile").read_text()
RAY_DEFAULT_PORTS = {"6379", "8265", "10001", "52365", "8080"}


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"image_{name}", IMAGE_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_image_holds_every_package_the_project_installs():
    """A package folder mapped in pyproject.toml but not copied would build a wheel without
    it (or fail the build): the COPY list must follow pyproject.toml."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    folders = set(pyproject["tool"]["setuptools"]["package-dir"].values())
    copied = set(re.findall(r"^COPY (\S+) \./\1$", DOCKERFILE, re.M))
    assert folders <= copied, f"not copied into the build stage: {folders - copied}"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert not folders & set(ignored)
    assert "cluster/image" in ignored  # the build scripts are not part of the image


def test_build_arguments_and_defaults():
    for arg in ("PYTHON_IMAGE=python:3.11-slim-bookworm", "VARIANT=cpu", 'TORCH_INDEX_URL=""',
                "PIP_CONFIG_FILE"):
        assert re.search(rf"^ARG {re.escape(arg)}$", DOCKERFILE, re.M), arg
    # PyTorch's CPU index stays the default for CPU images; PyPI only when asked for.
    assert 'cpu) index="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}"' in DOCKERFILE
    assert 'cuda) index="${TORCH_INDEX_URL:-pypi}"' in DOCKERFILE
    # The build's pip config and CA bundle are mounted, never copied into a layer.
    runtime = DOCKERFILE[DOCKERFILE.index("AS runtime"):]
    assert "PIP_CONFIG_FILE" not in runtime
    assert not re.search(r"^(COPY|ADD) .*(pip\.conf|\.crt|\.pem|host-pip)", DOCKERFILE, re.M)
    # KubeRay's probes need wget; its `bash -lc` needs the venv on a login shell's PATH.
    assert "wget" in runtime and "/etc/profile.d/" in runtime


def test_host_pip_config_puts_local_sources_first(tmp_path, monkeypatch):
    host_pip = load("host_pip")
    wheels, index_root, cert = tmp_path / "wheels", tmp_path / "pypi", tmp_path / "ca.pem"
    wheels.mkdir()
    (index_root / "simple").mkdir(parents=True)
    cert.write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setattr(host_pip, "pip_config", lambda: {
        "find-links": f"{wheels} https://example.org/links",
        "extra-index-url": f"file://{index_root}/simple https://mirror.example/simple",
        "cert": str(cert)})
    out = tmp_path / "out"
    assert host_pip.main(str(out)) == 0
    conf = (out / "pip.conf").read_text()
    assert f"index-url = file://{index_root}/simple\n" in conf
    assert ("extra-index-url = https://pypi.org/simple https://mirror.example/simple\n"
            in conf)
    assert f"find-links = {wheels} https://example.org/links\n" in conf
    assert "cert = /run/host-pip/ca.crt\n" in conf
    assert (out / "ca.crt").read_text() == cert.read_text()


def test_host_pip_config_writes_nothing_without_host_sources(tmp_path, monkeypatch):
    host_pip = load("host_pip")
    monkeypatch.setattr(host_pip, "pip_config", lambda: {})
    assert host_pip.main(str(tmp_path / "out")) == 0
    assert not (tmp_path / "out").exists()


def test_build_script_rejects_a_bad_variant():
    proc = subprocess.run([str(IMAGE_DIR / "build.sh")], env={"VARIANT": "tpu", "PATH": "/bin"},
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: VARIANT must be cpu or cuda (got tpu)"


@pytest.mark.parametrize("script", sorted(p.name for p in IMAGE_DIR.glob("*.sh")))
def test_shell_scripts_parse(script):
    proc = subprocess.run(["bash", "-n", str(IMAGE_DIR / script)], capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


def test_image_test_runs_compose_and_kuberay_commands_on_free_ports():
    image_test = load("image_test")
    ports = {"gcs": 41001, "dashboard": 41002, "client": 41003, "metrics_head": 41004,
             "agent_head": 41005}
    head, health, worker = image_test.compose_commands(ports)
    kuberay = image_test.kuberay_worker_command(41001, 41006, 41007)
    assert head[:3] == ["ray", "start", "--head"]
    assert "--num-cpus=0" in head and "--port=41001" in head
    assert health == ["ray", "health-check", "--address", "127.0.0.1:41001"]
    assert "--address=127.0.0.1:41001" in worker(41008, 41009)
    assert kuberay[:3] == ["bash", "-lc", "--"] and "--address=127.0.0.1:41001" in kuberay[3]
    for argv in (head, worker(41008, 41009), kuberay[3].split()):
        values = {a.split("=", 1)[1] for a in argv if a.startswith("--") and "=" in a}
        assert not values & RAY_DEFAULT_PORTS, argv
        assert not any(v.endswith(":6379") for v in values), argv


def test_make_targets():
    image = subprocess.run(["make", "-n", "image", "VARIANT=cuda"], capture_output=True,
                           text=True, timeout=60, cwd=ROOT)
    assert image.returncode == 0, image.stderr
    assert "VARIANT='cuda' IMAGE='dcgan:cuda'" in image.stdout
    assert "cluster/image/build.sh" in image.stdout
    test = subprocess.run(["make", "-n", "image-test", "IMAGE_TEST_ARGS=--reduced"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert test.returncode == 0, test.stderr
    assert "cluster/image/image_test.py" in test.stdout and "--reduced" in test.stdout


def test_image_test_refuses_to_run_without_root_with_one_line():
    if os.geteuid() == 0:
        pytest.skip("runs as root here")
    proc = subprocess.run([sys.executable, str(IMAGE_DIR / "image_test.py")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("error: ")
