"""`make image-test`: the image built, then run for real, without a Docker engine.

    .venv/bin/python cluster/image/image_test.py [--reduced] [--keep]

1. The image: `cluster/image/build.sh` (a debootstrap base first when no base image is
   available), then its configuration (entry point, user, env, volumes, ports).
2. From the image: `dcgan --help` (output checked) and a bad-input error (one line).
3. A short training run as uid 1000 writing to a mounted storage folder; its files checked on
   the host (owner 1000, mode 0644, readable).
4. (not with --reduced) A Ray head and 2 Ray workers started from the image with token
   authentication: the head and a worker with the compose file's own commands, the other
   worker the way KubeRay starts the manifest's worker group (ports swapped for free ones:
   other Ray clusters may run on this machine); compose's health check, KubeRay's default
   probes and its submitter's `ray job submit` run in the containers; `make
   train-distributed CLUSTER=...` submits a job from the host through the Jobs API; its
   metrics endpoint is checked while it trains and its artifacts on the host afterwards
   (`dcgan analyze`, `dcgan sample`).

Containers run with `buildah run --isolation chroot` (the host's network; `podman run` is not
allowed everywhere). Every process started here is stopped at the end, also on failure or
Ctrl-C: each container's processes are found by their root directory, not by name, so other
Ray clusters on the machine are left alone. Needs root (buildah, debootstrap) and MNIST in
DCGAN_DATA_DIR. Env: IMAGE (default dcgan:cpu), and build.sh's variables.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
COMPOSE = ROOT / "cluster" / "docker-compose.yml"
RAYJOB = ROOT / "cluster" / "kuberay" / "rayjob.yaml"
UID = 1000
T0 = time.monotonic()
# KubeRay's default probes (ray-operator: BaseWgetHealthCommand), with our ports.
KUBERAY_PROBE = "wget --tries 1 -T {timeout} -q -O- http://localhost:{port}/{path} | grep success"
RUN_CONFIG = {"train_subset": 640, "batch_size": 32, "epochs": 1, "log_every": 5,
              "sample_every": 5, "checkpoint_every": 1, "eval_every": 0, "device": "cpu"}


class Failure(Exception):
    """A check failed: one line."""


def log(message: str) -> None:
    print(f"[image-test {time.monotonic() - T0:5.0f} s] {message}", flush=True)


def check(ok: bool, message: str) -> None:
    if not ok:
        raise Failure(message)


def sets(values: dict) -> list[str]:
    return [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]


_ports: set[int] = set()


def free_port() -> int:
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in _ports:
            _ports.add(port)
            return port


def run(argv: list[str], timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)


def user_stderr(text: str) -> list[str]:
    """stderr lines of the command itself: without buildah's own exit-status lines."""
    return [line for line in text.splitlines() if line.strip() and not re.fullmatch(
        r"subprocess exited with status \d+|Error: exit status \d+", line.strip())]


def tail(proc: subprocess.CompletedProcess, n: int = 3000) -> str:
    return (proc.stdout + proc.stderr)[-n:]


def describe(pids: list[int]) -> str:
    names = []
    for pid in pids:
        with contextlib.suppress(OSError):
            names.append(f"{pid} {Path(f'/proc/{pid}/comm').read_text().strip()}")
    return ", ".join(names)


class Containers:
    """Working containers from one image; every process in them is stopped by `close`."""

    def __init__(self, image: str, volumes: list[str], env: dict[str, str], logs: Path):
        self.image, self.volumes, self.env, self.logs = image, volumes, env, logs
        self.names: list[str] = []
        self.tmp: dict[str, Path] = {}  # each container's /tmp/ray, a host folder
        self.roots: dict[str, tuple[int, int]] = {}
        self.background: list[subprocess.Popen] = []  # `buildah run` of the Ray nodes
        self.helpers: list[subprocess.Popen] = []  # host processes (own process groups)

    def create(self, role: str) -> str:
        name = f"dcgan-image-test-{os.getpid()}-{role}"
        proc = run(["buildah", "from", "--pull=never", "--name", name, self.image], 120)
        check(proc.returncode == 0, f"buildah from {self.image}: {tail(proc, 300)}")
        self.names.append(name)
        # Each node's /tmp/ray in a host folder, like compose's `ray-tmp` volume on the head:
        # Ray's logs stay readable after a failure. (It also sidesteps a buildah 1.28 bug:
        # with exactly two bind mounts, both onto the image's VOLUMEs, neither is mounted.)
        self.tmp[name] = self.logs / f"{role}-tmp-ray"
        self.tmp[name].mkdir()
        os.chown(self.tmp[name], UID, UID)
        # The working container's own config (not the image's), as compose's `environment:`
        # sets it; not on `buildah run`'s command line, where `ps` would show the token.
        for key, value in self.env.items():
            config = run(["buildah", "config", "--env", f"{key}={value}", name], 60)
            check(config.returncode == 0, f"buildah config {name}: {tail(config, 300)}")
        mount = run(["buildah", "mount", name], 60)
        check(mount.returncode == 0, f"buildah mount {name}: {tail(mount, 300)}")
        # Each `buildah run` chroots into its own bind mount of the container's root: the
        # same directory (device and inode), another path.
        root = os.stat(mount.stdout.strip())
        self.roots[name] = (root.st_dev, root.st_ino)
        return name

    def _argv(self, name: str, argv: list[str], env: dict[str, str] | None) -> list[str]:
        flags = ["--isolation", "chroot"]
        for volume in [*self.volumes, f"{self.tmp[name]}:/tmp/ray"]:
            flags += ["--volume", volume]
        for key, value in (env or {}).items():
            flags += ["--env", f"{key}={value}"]
        return ["buildah", "run", *flags, name, "--", *argv]

    def run(self, name: str, argv: list[str], timeout: float = 600,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return run(self._argv(name, argv, env), timeout)

    def start(self, name: str, argv: list[str], label: str,
              env: dict[str, str] | None = None) -> tuple[subprocess.Popen, Path]:
        path = self.logs / f"{label}.log"
        with open(path, "w") as out:
            proc = subprocess.Popen(self._argv(name, argv, env), stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        self.background.append(proc)
        return proc, path

    def processes(self, name: str) -> list[int]:
        """Every process whose root directory is this container's (chroot isolation shares
        the host's PID namespace)."""
        root, found = self.roots.get(name), []
        if not root:
            return found
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError):
                    st = os.stat(f"/proc/{entry}/root")
                    if (st.st_dev, st.st_ino) == root:
                        found.append(int(entry))
        return found

    def close(self) -> None:
        """SIGTERM to every process in the containers (Ray nodes shut down; each `buildah
        run` then exits by itself and cleans up) and to the host-side helpers' process
        groups; SIGKILL to what is left after 10 s; then the containers are removed."""
        def inside() -> list[int]:
            return [pid for name in self.names for pid in self.processes(name)]

        def signal_all(sig: int, runs_too: bool) -> None:
            targets = inside() + ([p.pid for p in self.background if p.poll() is None]
                                  if runs_too else [])
            for pid in targets:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            for helper in self.helpers:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(helper.pid, sig)

        def wait(seconds: float) -> bool:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                if not inside() and all(p.poll() is not None
                                        for p in self.background + self.helpers):
                    return True
                time.sleep(0.5)
            return False

        signal_all(signal.SIGTERM, runs_too=False)
        if not wait(10):
            left = inside() + [p.pid for p in self.background + self.helpers
                               if p.poll() is None]
            log(f"still running 10 s after SIGTERM, now killed: {describe(left)}")
            signal_all(signal.SIGKILL, runs_too=True)
            wait(10)
        left = inside()
        for name in reversed(self.names):
            run(["buildah", "umount", name], 60)
            run(["buildah", "rm", name], 120)
        if left:
            print(f"warning: processes still running in the containers: {left}",
                  file=sys.stderr)


def build(args) -> float:
    start = time.monotonic()
    log(f"building {args.image} (cluster/image/build.sh)")
    env = {**os.environ, "IMAGE": args.image, "IMAGE_TOOL": "podman"}
    proc = subprocess.run([str(HERE / "build.sh")], env=env, cwd=ROOT, timeout=3600)
    check(proc.returncode == 0, f"the image build failed (exit {proc.returncode})")
    return time.monotonic() - start


def check_image_config(image: str) -> dict:
    proc = run(["buildah", "inspect", "--type", "image", image], 60)
    check(proc.returncode == 0, f"buildah inspect {image}: {tail(proc, 300)}")
    config = json.loads(proc.stdout)["OCIv1"]["config"]
    env = dict(item.split("=", 1) for item in config.get("Env", []))
    check(config.get("Entrypoint") == ["dcgan"], f"entry point {config.get('Entrypoint')}")
    check(config.get("User") == f"{UID}:{UID}", f"user {config.get('User')}")
    check(config.get("WorkingDir") == "/app", f"working dir {config.get('WorkingDir')}")
    check(env.get("DCGAN_DATA_DIR") == "/data", f"DCGAN_DATA_DIR {env.get('DCGAN_DATA_DIR')}")
    check({"/data", "/storage"} <= set(config.get("Volumes", {})), "volumes /data, /storage")
    ports = {p.split("/")[0] for p in config.get("ExposedPorts", {})}
    check({"6379", "8265", "10001", "8080", "9100"} <= ports, f"exposed ports {sorted(ports)}")
    return config


def check_cli(ctr: Containers, name: str) -> None:
    mounts = ctr.run(name, ["sh", "-c", "test -f /data/MNIST/raw/train-images-idx3-ubyte "
                            "&& test -w /storage && test -w /tmp/ray"], 60)
    check(mounts.returncode == 0, "in the container, MNIST is not in /data or /storage or "
          "/tmp/ray is not writable: the folders did not get mounted")
    proc = ctr.run(name, ["dcgan", "--help"], 120)
    check(proc.returncode == 0, f"dcgan --help failed: {tail(proc)}")
    check(proc.stdout.startswith("usage: dcgan"), f"dcgan --help printed: {proc.stdout[:300]}")
    for command in ("train", "train-distributed", "tune", "analyze", "sample", "evaluate"):
        check(re.search(rf"^\s+{command}\s", proc.stdout, re.M) is not None,
              f"dcgan --help lists no {command!r}")
    ident = ctr.run(name, ["id", "-u"], 60)
    check(ident.stdout.strip() == str(UID), f"the image runs as uid {ident.stdout.strip()}")
    bad = ctr.run(name, ["dcgan", "train", "--out", "/storage/bad", "--set", "epochs=-1"], 120)
    lines = user_stderr(bad.stderr)
    check(bad.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: ")
          and "Traceback" not in bad.stderr, f"bad input did not give one error line: "
          f"exit {bad.returncode}, {bad.stderr[-500:]!r}")
    log(f"dcgan --help: {len(proc.stdout.splitlines())} lines, every command listed; "
        f"bad input: {lines[0]!r}")


def check_run_files(run_dir: Path, names: tuple[str, ...]) -> list[Path]:
    check(run_dir.is_dir(), f"no run directory {run_dir} on the host")
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    present = {p.name for p in files}
    missing = [n for n in names if n not in present]
    check(not missing, f"{run_dir}: missing {missing}")
    wrong = [f"{p.relative_to(run_dir)} uid {p.stat().st_uid} mode {oct(p.stat().st_mode & 0o777)}"
             for p in files if p.stat().st_uid != UID or p.stat().st_mode & 0o777 != 0o644]
    check(not wrong, f"files not owned by {UID} with mode 0644: {wrong[:5]}")
    return files


def short_training_run(ctr: Containers, name: str, storage: Path) -> None:
    start = time.monotonic()
    proc = ctr.run(name, ["dcgan", "train", "--out", "/storage/runs/local", "--no-progress",
                          *sets(RUN_CONFIG)], 900)
    check(proc.returncode == 0, f"training in the container failed: {tail(proc)}")
    check("[Epoch 0] [Batch" in proc.stdout, "no [Epoch 0] [Batch ...] log line")
    run_dir = storage / "runs" / "local"
    files = check_run_files(run_dir, ("dcgan_generator_final.pth", "config.yaml",
                                      "dcgan_training_stats.parquet",
                                      "dcgan_final_samples.png", "dcgan_training_analysis.png"))
    config = (run_dir / "config.yaml").read_text()
    check("train_subset: 640" in config, "config.yaml does not hold the run's settings")
    log(f"short training run as uid {UID}: {time.monotonic() - start:.0f} s, {len(files)} files "
        f"in the mounted storage, all uid {UID} mode 0644")


def compose_commands(ports: dict[str, int]):
    """The compose file's ray-head command, its health check, and a function giving a
    ray-worker's command: free ports instead of the fixed ones, 127.0.0.1 for the service
    name, and the dashboard agent's port, which is otherwise Ray's fixed default (each compose
    container has a network of its own; here they share the host's)."""
    import yaml

    services = yaml.safe_load(COMPOSE.read_text())["services"]
    swap = {"--port": ports["gcs"], "--dashboard-port": ports["dashboard"],
            "--ray-client-server-port": ports["client"]}

    def adapt(argv: list[str], metrics_port: int) -> list[str]:
        out = []
        for arg in argv:
            # ${VAR:-default}: compose's interpolation with the defaults.
            arg = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", arg)
            key, _, value = arg.partition("=")
            if key in swap:
                arg = f"{key}={swap[key]}"
            elif key == "--metrics-export-port":
                arg = f"{key}={metrics_port}"
            elif key == "--dashboard-host":
                arg = f"{key}=127.0.0.1"
            elif key == "--address":
                check(value == "ray-head:6379", f"ray-worker joins {value}, not ray-head:6379")
                arg = f"{key}=127.0.0.1:{ports['gcs']}"
            out.append(arg)
        return out

    head, worker = services["ray-head"], services["ray-worker"]
    check(head["entrypoint"] == worker["entrypoint"] == ["ray"], "compose entry points")
    health = [a.replace("ray-head:6379", f"127.0.0.1:{ports['gcs']}")
              for a in head["healthcheck"]["test"][1:]]
    def worker_cmd(metrics_port: int, agent_port: int) -> list[str]:
        return ["ray", *adapt(worker["command"], metrics_port), *node_port_flags(agent_port)]

    head_cmd = ["ray", *adapt(head["command"], ports["metrics_head"]),
                *node_port_flags(ports["agent_head"])]
    return head_cmd, health, worker_cmd


def node_port_flags(agent_port: int) -> list[str]:
    """Beyond the files' flags: the dashboard agent's HTTP port, a fixed default (52365) that
    a second node on one network cannot share. (Ray picks the agents' other ports itself.)"""
    return [f"--dashboard-agent-listen-port={agent_port}", "--disable-usage-stats"]


def head_port_env() -> dict[str, str]:
    """A head's metrics ports that only environment variables move (fixed defaults 44227 and
    44217): another head on this machine would hold them."""
    return {var: str(free_port()) for var in ("DASHBOARD_METRIC_PORT", "AUTOSCALER_METRIC_PORT")}


def wait_for(what: str, ok, timeout: float, interval: float = 2.0):
    deadline = time.monotonic() + timeout
    while True:
        result = ok()
        if result:
            return result
        if time.monotonic() > deadline:
            raise Failure(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def kuberay_worker_command(gcs: int, metrics_port: int, agent_port: int) -> list[str]:
    """A worker started the way KubeRay starts the manifest's worker group: `bash -lc --
    "ulimit -n 65536; ray start --address=HEAD --block --KEY=VALUE..."` with the group's
    rayStartParams (GPUs swapped for CPUs; free ports)."""
    import yaml

    job = yaml.safe_load(RAYJOB.read_text())
    params = dict(job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["rayStartParams"])
    params.pop("num-gpus", None)
    params.update({"metrics-export-port": str(metrics_port), "num-cpus": "2"})
    flags = " ".join([*(f"--{key}={value}" for key, value in params.items()),
                      *node_port_flags(agent_port)])
    return ["bash", "-lc", "--", f"ulimit -n 65536; ray start --address=127.0.0.1:{gcs} "
            f"--block {flags}"]


def listening_pid(port: int, pids: list[int]) -> int | None:
    """Which of ``pids`` listens on TCP ``port`` (from /proc: no tools needed)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as fh:
            for line in list(fh)[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if link.startswith("socket:[") and link[8:-1] in inodes:
                        return pid
    return None


def ray_cluster_and_job(ctr: Containers, storage: Path, work: Path, token_file: Path) -> dict:
    import yaml

    ports = {k: free_port() for k in ("gcs", "dashboard", "client", "metrics_head",
                                      "agent_head", "job_metrics")}
    head_cmd, health, worker_cmd = compose_commands(ports)
    compose_env = yaml.safe_load(COMPOSE.read_text())["services"]["ray-head"]["environment"]
    check(compose_env.get("RAY_AUTH_MODE") == "token", "compose: RAY_AUTH_MODE is not token")
    check(compose_env.get("DCGAN_DATA_DIR") == "/data", "compose: DCGAN_DATA_DIR is not /data")

    start = time.monotonic()
    head = ctr.create("ray-head")
    head_proc, head_log = ctr.start(head, head_cmd, "ray-head", env=head_port_env())
    log(f"Ray head from the image, compose's command: {shlex.join(head_cmd)}")

    def healthy():
        if head_proc.poll() is not None:
            raise Failure(f"the Ray head exited: {head_log.read_text()[-2000:]}")
        return ctr.run(head, health, 60).returncode == 0

    wait_for("the head's compose health check (" + shlex.join(health) + ")", healthy, 180)
    log(f"compose's health check passes in the head: {shlex.join(health)}")

    builders = [lambda agent: worker_cmd(free_port(), agent),
                lambda agent: kuberay_worker_command(ports["gcs"], free_port(), agent)]
    how = ["compose's command", "as KubeRay starts it"]
    workers, agents, procs, logs = [], [], [], []
    for i, build in enumerate(builders):
        workers.append(ctr.create(f"ray-worker-{i + 1}"))
        agents.append(free_port())
        argv = build(agents[i])
        proc, path = ctr.start(workers[i], argv, f"ray-worker-{i + 1}")
        procs.append(proc)
        logs.append(path)
        log(f"Ray worker {i + 1} from the image, {how[i]}: {shlex.join(argv)}")
    retried: set[int] = set()

    def three_nodes():
        # A port chosen free can be taken before Ray binds it on a busy machine: a worker
        # that dies while starting gets one more try on new ports.
        for i, proc in enumerate(procs):
            if proc.poll() is not None:
                check(i not in retried, f"Ray worker {i + 1} failed to start twice "
                      f"(logs: {logs[i].parent})")
                retried.add(i)
                log(f"Ray worker {i + 1} exited while starting ({logs[i]}): once more, on "
                    "new ports")
                agents[i] = free_port()
                procs[i], logs[i] = ctr.start(workers[i], builders[i](agents[i]),
                                              f"ray-worker-{i + 1}-retry")
        status = ctr.run(head, ["ray", "status", f"--address=127.0.0.1:{ports['gcs']}"], 60)
        return len(re.findall(r"^\s*1 node_", status.stdout, re.M)) == 3 and status.stdout

    status = wait_for("3 alive Ray nodes", three_nodes, 180)
    cpus = re.search(r"([\d.]+)/([\d.]+) CPU", status)
    up = time.monotonic() - start
    log(f"Ray cluster up in {up:.0f} s: 3 nodes, {cpus.group(2) if cpus else '?'} CPUs, "
        "token authentication on")

    # A client with the wrong token is refused (the token is really required).
    anon = run([str(BIN / "python"), "-m", "dcgan_cluster.submit", "--address",
                f"http://127.0.0.1:{ports['dashboard']}", "--no-follow", "--", "true"], 120,
               env={**{k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")},
                    "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)},
               cwd=ROOT)
    refusal = (user_stderr(anon.stderr) or [""])[-1]
    check(anon.returncode != 0 and re.search(r"401|unauthori|auth|token", refusal, re.I),
          f"a client with a wrong token was not refused: {tail(anon, 500)}")
    log(f"a client with a wrong token is refused: {refusal[:160]}")

    # KubeRay's default probes (bash, wget and grep in the image), Ray's node metrics (the
    # "metrics" port), and the service-discovery file compose's Prometheus reads.
    probes = {
        head: [KUBERAY_PROBE.format(timeout=2, port=ports["agent_head"],
                                    path="api/local_raylet_healthz"),
               KUBERAY_PROBE.format(timeout=10, port=ports["dashboard"],
                                    path="api/gcs_healthz"),
               f"wget -q -O- http://localhost:{ports['metrics_head']}/metrics | grep -q ^ray_"],
        **{name: [KUBERAY_PROBE.format(timeout=2, port=agent, path="api/local_raylet_healthz")]
           for name, agent in zip(workers, agents, strict=True)}}
    for name, checks in probes.items():
        probe = ctr.run(name, ["bash", "-c", " && ".join(checks)], 60)
        check(probe.returncode == 0, f"KubeRay's probe fails in {name}: {tail(probe, 500)}")
    sd = ctr.run(head, ["cat", "/tmp/ray/prom_metrics_service_discovery.json"], 60)
    check(sd.returncode == 0, "no /tmp/ray/prom_metrics_service_discovery.json in the head "
          "(compose's Prometheus reads it)")
    targets = [t for group in json.loads(sd.stdout) for t in group.get("targets", [])]
    check(len(targets) >= 3, f"Ray's Prometheus service discovery lists {targets}")
    # Compose's Prometheus (uid 65534) and Grafana (uid 472) read these from the head's
    # /tmp/ray volume: they must exist and be readable by other users.
    shared = ["/tmp/ray/prom_metrics_service_discovery.json",
              "/tmp/ray/session_latest/metrics/grafana/dashboards"]
    listing = ctr.run(head, ["find", "-L", *shared, "(", "!", "-perm", "-o+r", "-o", "-type",
                             "d", "!", "-perm", "-o+x", ")", "-print"], 60)
    dashboards = ctr.run(head, ["sh", "-c", f"ls {shared[1]}/*.json | wc -l"], 60)
    check(listing.returncode == 0 and not listing.stdout.strip(),
          f"Ray's files for Prometheus/Grafana are not readable by others: {tail(listing)}")
    check(int(dashboards.stdout.strip() or 0) > 0, f"no Ray Grafana dashboards in {shared[1]}")
    log(f"KubeRay's default probes pass in the head and both workers; the head serves Ray's "
        f"metrics; Ray's Prometheus service discovery lists {len(targets)} targets and "
        f"{dashboards.stdout.strip()} Ray Grafana dashboards are there, readable by others")

    # KubeRay's submitter (K8sJobMode): `ray job submit` from the image with the manifest's
    # submitterPodTemplate env, the job's driver on the head.
    submitter = ctr.run(ctr.names[0], ["bash", "-ce", "--",
                                       f"ray job submit --address http://127.0.0.1:"
                                       f"{ports['dashboard']} -- dcgan --help"], 300)
    check(submitter.returncode == 0 and "usage: dcgan" in submitter.stdout
          and "succeeded" in submitter.stdout,
          f"ray job submit from the image failed: {tail(submitter, 1500)}")
    log("KubeRay's submitter command works from the image (ray job submit, token from env)")

    # The job, from the host, through the Jobs API, exactly as a user submits it.
    job_start = time.monotonic()
    train_args = ["--use-gpu", "false", "--metrics-port", str(ports["job_metrics"]),
                  "--metrics-host", "127.0.0.1", *sets({k: v for k, v in RUN_CONFIG.items()
                                                        if k != "device"})]
    make = ["make", "--no-print-directory", "train-distributed",
            f"CLUSTER=http://127.0.0.1:{ports['dashboard']}", "WORKERS=2",
            "DIST_RUN=runs/image-test", "RAY_AUTH_TOKEN=", f"TRAIN_ARGS={shlex.join(train_args)}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file))
    log("submitting from the host: " + shlex.join(make))
    job_log = work / "job.log"
    with open(job_log, "w") as out:
        job = subprocess.Popen(make, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                               stdin=subprocess.DEVNULL, start_new_session=True)
        ctr.helpers.append(job)
        # While it trains: the run's metrics endpoint answers, served from the head.
        metrics, served_by = "", None
        deadline = time.monotonic() + 1200
        while job.poll() is None and time.monotonic() < deadline:
            if not served_by:
                with contextlib.suppress(OSError):
                    url = f"http://127.0.0.1:{ports['job_metrics']}/metrics"
                    with urllib.request.urlopen(url, timeout=2) as resp:
                        text = resp.read().decode()
                    if "dcgan_loss_ratio{" in text:
                        metrics = text
                        served_by = listening_pid(ports["job_metrics"], ctr.processes(head))
            time.sleep(1)
        if job.poll() is None:
            raise Failure("the job did not finish within 20 minutes")
    output = job_log.read_text()
    check(job.returncode == 0, f"the job failed (exit {job.returncode}): {output[-3000:]}")
    check(re.search(r"Job \S+ succeeded", output) is not None, "no 'Job ... succeeded'")
    check("Training finished" in output, "the job's log did not stream to the host")
    check(bool(metrics), "the run's metrics endpoint never answered during the job")
    check(served_by is not None, "the run's metrics endpoint is not served from the head "
          "(compose's Prometheus scrapes ray-head:9100)")
    ranks = sorted(set(re.findall(r'rank="(\d+)"', metrics)))
    job_s = time.monotonic() - job_start
    log(f"job submitted from the host through the Jobs API succeeded in {job_s:.0f} s; its "
        f"metrics endpoint was served from the head (ranks {', '.join(ranks)})")
    return {"cluster_up_s": up, "job_s": job_s, "start_to_job_end_s": time.monotonic() - T0}


def check_artifacts_on_host(storage: Path, work: Path) -> None:
    run_dir = storage / "runs" / "image-test"
    check_run_files(run_dir, ("dcgan_generator_final.pth", "dcgan_discriminator_final.pth",
                              "dcgan_training_stats.parquet", "dcgan_final_samples.png",
                              "config.yaml"))
    checkpoints = list((storage / "ray" / "image-test").glob("checkpoint_*"))
    check(bool(checkpoints), f"no Ray Train checkpoint in {storage / 'ray' / 'image-test'}")

    dcgan = str(BIN / "dcgan")
    analyze = run([dcgan, "analyze", "--out", str(run_dir)], 300)
    check(analyze.returncode == 0, f"dcgan analyze failed: {tail(analyze)}")
    diag = json.loads((run_dir / "dcgan_diagnostics.json").read_text())
    # 640 images / 32 per batch = 20 global steps, split over 2 workers.
    check(diag.get("iterations", 0) >= 10 and diag.get("last_epoch") == 0,
          f"dcgan_diagnostics.json: {str(diag)[:300]}")
    for word in ("Loss ratio", "Real"):
        check(word.lower() in analyze.stdout.lower(), f"no {word!r} in the analyze report")
    check((run_dir / "dcgan_training_analysis.png").stat().st_size > 10_000,
          "the analysis figure is (nearly) empty")

    samples = work / "samples.png"
    sample = run([dcgan, "sample", "--generator", str(run_dir / "dcgan_generator_final.pth"),
                  "--image", str(samples), "--n", "64", "--nrow", "8"], 300)
    check(sample.returncode == 0, f"dcgan sample failed: {tail(sample)}")
    from PIL import Image, ImageStat

    with Image.open(samples) as img:
        size, spread = img.size, ImageStat.Stat(img.convert("L")).stddev[0]
    check(size == (242, 242), f"the 8x8 grid of 28-pixel samples is {size}, not 242x242")
    check(spread > 5, f"the sample grid is flat (pixel std {spread:.1f})")
    log(f"artifacts checked on the host: {diag['iterations']} iterations analysed, "
        f"{len(checkpoints)} Ray checkpoints, a {size[0]}x{size[1]} sample grid (std "
        f"{spread:.0f})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reduced", action="store_true",
                        help="base, build, dcgan --help and the short training run only")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--no-build", action="store_true", help="use the image as it is")
    args = parser.parse_args()
    args.image = os.environ.get("IMAGE", "dcgan:cpu")

    if os.geteuid() != 0:
        print("error: the image test needs root (buildah, debootstrap)", file=sys.stderr)
        return 1
    for tool in ("buildah", "podman"):
        if not shutil.which(tool):
            print(f"error: no {tool} (apt-get install podman buildah debootstrap)",
                  file=sys.stderr)
            return 1
    data = Path(os.environ.get("DCGAN_DATA_DIR") or ROOT / "data")
    if not (data / "MNIST" / "raw").is_dir():
        print(f"error: no MNIST in {data} (set DCGAN_DATA_DIR)", file=sys.stderr)
        return 1

    # SIGTERM/SIGHUP (a CI timeout, a closed terminal) clean up like Ctrl-C.
    def stop(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)

    work = Path(tempfile.mkdtemp(prefix="dcgan-image-test.", dir="/var/tmp"))
    storage = work / "storage"
    storage.mkdir()
    os.chown(storage, UID, UID)
    # The cluster's token: in the containers as compose and the manifests set it (env), for
    # the host's client in a file only root reads (RAY_AUTH_TOKEN_PATH).
    token = secrets.token_hex(32)
    token_file = work / "auth_token"
    token_file.touch(mode=0o600)
    token_file.write_text(token)
    ctr = Containers(args.image, volumes=[f"{data}:/data:ro", f"{storage}:/storage"],
                     env={"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}, logs=work)
    figures: dict = {}
    try:
        if not args.no_build:
            figures["build_s"] = build(args)
        config = check_image_config(args.image)
        size = int(run(["podman", "image", "inspect", "--format", "{{.Size}}", args.image],
                       60).stdout.strip() or 0)
        log(f"image {args.image}: {size / 1e9:.2f} GB, entry point {config['Entrypoint']}, "
            f"user {config['User']}")
        cli = ctr.create("cli")
        check_cli(ctr, cli)
        short_training_run(ctr, cli, storage)
        if not args.reduced:
            figures.update(ray_cluster_and_job(ctr, storage, work, token_file))
            check_artifacts_on_host(storage, work)
    except Failure as exc:
        log(f"FAILED: {exc}")
        first = (str(exc).strip().splitlines() or ["?"])[0]
        print(f"error: image test failed: {first} (details above; logs: {work})",
              file=sys.stderr)
        args.keep = True
        return 1
    except subprocess.TimeoutExpired as exc:
        log(f"FAILED: timed out after {exc.timeout:.0f} s: {shlex.join(map(str, exc.cmd))}")
        print(f"error: image test failed: a command timed out (logs: {work})", file=sys.stderr)
        args.keep = True
        return 1
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up
        log("stopping every process started from the image")
        stop_start = time.monotonic()
        ctr.close()
        log(f"stopped, containers removed ({time.monotonic() - stop_start:.0f} s)")
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    summary = {k: round(v) for k, v in figures.items()}
    log(f"PASSED ({'reduced' if args.reduced else 'full'}): {json.dumps(summary)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
