"""Shared fixtures. MNIST comes from DCGAN_DATA_DIR (CI: ../shared/data, read-only) or, on a
machine with internet, is downloaded by torchvision into ./data on first use.

Child processes: every process a test starts is stopped and reaped on every path
(``background``, ``stop_group``), and its output goes to a file or is read to the end, never
left in an unread pipe. Ray: tests never start Ray on its default ports and never stop Ray
processes they did not start; ``ray_node`` starts one node with ``ray start --block`` on
ports chosen free at start, in a private temp dir, and stops exactly that node's process
group (docs/testing.md)."""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Under pytest-xdist (make test) two test processes share the cores: one thread each for
# torch here and in every process a test starts, or their thread pools fight over them.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

# A run small enough for tests: 256 images, 8 batches of 32 per epoch, on the CPU.
TINY = {"train_subset": 256, "batch_size": 32, "device": "cpu", "log_every": 2,
        "sample_every": 4, "checkpoint_every": 1, "epochs": 2, "eval_every": 1,
        "eval_samples": 200, "rescore_samples": 300}


def sets(values: dict) -> list[str]:
    out: list[str] = []
    for key, value in values.items():
        out += ["--set", f"{key}={value}"]
    return out


def pytest_collection_modifyitems(items) -> None:
    """Tests that join the suite's Ray head are marked ``ray``, and those that read the
    shared finished run ``slow`` (it trains): ``make test-fast`` leaves both out."""
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if "ray_head" in fixtures:
            item.add_marker(pytest.mark.ray)
        if "finished_run" in fixtures:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session", autouse=True)
def cache_dir(tmp_path_factory) -> Path:
    """The suite's own cache (FID reference statistics), shared by every run it starts
    (CLI subprocesses and Ray workers inherit the environment), never the user's."""
    path = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DCGAN_CACHE_DIR", str(path))
        yield path


@pytest.fixture(scope="session")
def data_dir() -> str:
    from dcgan.data import load_mnist

    path = os.environ.get("DCGAN_DATA_DIR") or str(ROOT / "data")
    load_mnist(path)  # fails here, once, with a clear message if MNIST is unavailable
    return path


# Commands that may start or join Ray run in a subprocess: a Ray driver must never live in
# the test process (it would outlast the test and see every later test's imports).
RAY_COMMANDS = ("train-distributed", "tune")


def run_cli(args: list[str], *, cwd: Path | None = None, env: dict | None = None,
            timeout: float = 300, subprocess_: bool = False) -> subprocess.CompletedProcess:
    """``dcgan ARGS`` as a user would run it: its exit status, stdout and stderr.

    In process (``dcgan.cli.main``) unless ``subprocess_`` or the command may start Ray: a
    subprocess adds ~3 s of imports per call and shows nothing more for most promises. Keep
    ``subprocess_=True`` where only a real process shows it (the entry point's exit status,
    signals, leaks, a clean environment)."""
    if subprocess_ or (args and args[0] in RAY_COMMANDS):
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        return subprocess.run([sys.executable, "-m", "dcgan", *args], capture_output=True,
                              text=True, timeout=timeout, env=full_env, cwd=cwd or ROOT)
    return run_in_process(args, cwd=cwd, env=env, timeout=timeout)


def run_in_process(args: list[str], *, cwd: Path | None = None, env: dict | None = None,
                   timeout: float = 300) -> subprocess.CompletedProcess:
    """``dcgan.cli.main(ARGS)`` here, with what a process would show: its output, its exit
    status (an uncaught exception prints its traceback and gives 1, as Python would). The
    environment and working directory are the call's and restored afterwards; ``timeout``
    is a hang guard that dumps every thread's stack and ends the suite."""
    import faulthandler
    import io
    import traceback

    from dcgan.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved_env = dict(os.environ)
    os.environ.update(env or {})
    faulthandler.dump_traceback_later(timeout + 60, exit=True)
    try:
        with contextlib.chdir(cwd or ROOT), contextlib.redirect_stdout(out), \
                contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exc:  # argparse's usage errors and --help
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
                if exc.code is not None and not isinstance(exc.code, int):
                    print(exc.code, file=sys.stderr)
            except BaseException:  # noqa: BLE001 - shown as the process would show it
                traceback.print_exc()
                code = 1
    finally:
        faulthandler.cancel_dump_traceback_later()
        os.environ.clear()
        os.environ.update(saved_env)
        # urllib's shared opener keeps the proxies of the environment it was built in: a
        # command run with http_proxy set must not send this process's later requests there.
        urllib.request.install_opener(None)
    return subprocess.CompletedProcess(["dcgan", *args], code, out.getvalue(), err.getvalue())


_RAY_PROBE = """
import sys
from {module} import main
code = 1
try:
    code = main(sys.argv[1:])
finally:
    print("ray imported:", "ray" in sys.modules, flush=True)
sys.exit(code)
"""


def run_before_ray(args: list[str], *, module: str = "dcgan.cli", env: dict | None = None,
                   timeout: float = 300) -> subprocess.CompletedProcess:
    """Like ``run_cli`` (``module``'s ``main`` with ARGS), and asserts that the command
    finished without ever importing Ray: the proof that bad input fails before Ray starts,
    whatever the machine's speed."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.run([sys.executable, "-c", _RAY_PROBE.format(module=module), *args],
                          capture_output=True, text=True, timeout=timeout, env=full_env,
                          cwd=ROOT)
    assert "ray imported: False" in proc.stdout, proc.stdout + proc.stderr
    return proc


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    """The error a failed command printed; asserts it is exactly one line and no traceback."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: "), proc.stderr
    return lines[0]


def tiny_train_args(out: Path, data_dir: str, **overrides) -> list[str]:
    return ["train", "--out", str(out), "--no-progress",
            *sets({**TINY, "data_dir": data_dir, **overrides})]


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, data_dir) -> SimpleNamespace:
    """One tiny completed run (2 epochs of 8 steps), shared by read-only tests; through the
    real entry point in its own process (what a user runs, end to end)."""
    out = tmp_path_factory.mktemp("e2e") / "run"
    proc = run_cli(tiny_train_args(out, data_dir), subprocess_=True)
    assert proc.returncode == 0, proc.stderr
    return SimpleNamespace(out=out, proc=proc)


# -- child processes ---------------------------------------------------------------------------

# How long a test waits for a child before calling it hung. A guard against hanging CI, not a
# performance check: nothing here asserts how fast anything runs (docs/benchmarks.md does).
HANG_GUARD_S = 900


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_group(proc: subprocess.Popen, grace: float = 60) -> None:
    """SIGTERM the process group that ``proc`` leads (started with ``start_new_session``),
    then SIGKILL what is left; ``proc`` is reaped either way."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # stragglers of the group, if any
    proc.wait()


@contextlib.contextmanager
def background(args: list[str], log: Path, env: dict | None = None,
               module: str = "dcgan") -> Iterator[subprocess.Popen]:
    """``python -m dcgan ARGS`` in its own process group, its output in ``log``; stopped
    (SIGTERM, then SIGKILL) and reaped whatever happens."""
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", module, *args], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT,
                                start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        try:
            yield proc
        finally:
            stop_group(proc)


def wait_for_text(log: Path, needle: str, proc: subprocess.Popen,
                  guard: float = HANG_GUARD_S) -> str:
    """Wait until ``needle`` appears in ``log`` (returns the log so far); fails if ``proc``
    ends first, or hangs past the guard."""
    deadline = time.monotonic() + guard
    while True:
        text = log.read_text()
        if needle in text:
            return text
        assert proc.poll() is None, f"exited ({proc.returncode}) before {needle!r}:\n{text[-3000:]}"
        assert time.monotonic() < deadline, f"hung waiting for {needle!r}:\n{text[-3000:]}"
        time.sleep(0.2)


def finish(proc: subprocess.Popen, log: Path, guard: float = HANG_GUARD_S) -> tuple[int, str]:
    """Wait for ``proc`` to end on its own: (exit status, its log)."""
    try:
        code = proc.wait(timeout=guard)
    except subprocess.TimeoutExpired:
        pytest.fail(f"hung:\n{log.read_text()[-3000:]}")
    return code, log.read_text()


# -- Ray, started and stopped by the tests themselves --------------------------------------------

# `ray start` flags whose defaults are fixed ports (GCS 6379, dashboard 8265, client 10001,
# dashboard agent 52365) or that we pin anyway, so that two Ray instances on one machine (a
# developer's, another test run's) never meet. The dashboard's and autoscaler's own metrics
# ports (44227, 44217 by default) are set through Ray's environment variables.
HEAD_PORT_FLAGS = ("port", "dashboard-port", "ray-client-server-port",
                   "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                   "metrics-export-port", "runtime-env-agent-port")
NODE_PORT_FLAGS = ("dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                   "metrics-export-port", "runtime-env-agent-port")
RAY_METRIC_PORT_VARS = ("DASHBOARD_METRIC_PORT", "AUTOSCALER_METRIC_PORT")


def ray_env(token: str | None = None) -> dict[str, str]:
    """The environment of a Ray node and of the clients a test points at it: token
    authentication with the test's own token, and no RAY_ADDRESS of the caller's."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token or secrets.token_hex(32))
    return env


@dataclass
class RayNode:
    proc: subprocess.Popen
    ports: dict[str, int]
    env: dict[str, str]
    log: Path
    temp_dir: str
    extra: dict = field(default_factory=dict)

    @property
    def address(self) -> str:
        """The GCS address (``--address`` of train-distributed, tune, ray start)."""
        return f"127.0.0.1:{self.ports['port']}"

    @property
    def dashboard(self) -> str:
        """The dashboard / Jobs API URL (``python -m dcgan_cluster.submit --address``)."""
        return f"http://127.0.0.1:{self.ports['dashboard-port']}"


@contextlib.contextmanager
def ray_node(log: Path, env: dict[str, str], *, num_cpus: int, head_address: str | None = None,
             extra: tuple[str, ...] = ()) -> Iterator[RayNode]:
    """One Ray node (a head, or a node joining ``head_address``) as ``ray start --block`` in
    its own process group, every fixed-default port replaced by a free one, its files in a
    private temp dir (so it never writes /tmp/ray/ray_current_cluster, which a plain
    ``ray.init()`` of someone else would join). Stopped by its process group (its workers exit
    with its raylet), never by a machine-wide ``ray stop``."""
    head = head_address is None
    ports = {flag: free_port() for flag in (HEAD_PORT_FLAGS if head else NODE_PORT_FLAGS)}
    node_env = {**env, **{var: str(free_port()) for var in RAY_METRIC_PORT_VARS},
                "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}"}
    temp_dir = tempfile.mkdtemp(prefix="dcgan-ray-", dir="/tmp")  # short: socket paths
    cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--block",
           f"--num-cpus={num_cpus}", "--disable-usage-stats", f"--temp-dir={temp_dir}",
           *(["--head", "--include-dashboard=true", "--dashboard-host=127.0.0.1"] if head
             else [f"--address={head_address}"]),
           *(f"--{flag}={port}" for flag, port in ports.items()), *extra]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=node_env, start_new_session=True)
    try:
        wait_for_text(log, "Ray runtime started", proc, guard=300)
        yield RayNode(proc, ports, env, log, temp_dir)
    finally:
        # `ray start --block` takes half a minute over a graceful exit; its group (GCS,
        # raylet, dashboard, agents) gets 10 s, then SIGKILL. Workers exit with their raylet.
        stop_group(proc, grace=10)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory) -> Iterator[RayNode]:
    """One Ray head for the suite's train-distributed and tune runs, which join it with
    ``--address`` (started once: each run saves Ray's start-up). 4 logical CPUs: 2 workers
    and Ray Train's controller, or 2 concurrent trials, on this machine's cores."""
    log = tmp_path_factory.mktemp("ray-head") / "head.log"
    with ray_node(log, ray_env(), num_cpus=4) as node:
        yield node


def non_numbers(value, where: str = "") -> list[str]:
    """Where a JSON document holds a number as a string ("inf", "nan", "1.5") or a float JSON
    cannot hold: a results file keeps numbers as numbers and an unknown as null."""
    if isinstance(value, dict):
        return [w for k, v in value.items() for w in non_numbers(v, f"{where}.{k}")]
    if isinstance(value, list):
        return [w for i, v in enumerate(value) for w in non_numbers(v, f"{where}[{i}]")]
    if isinstance(value, float) and not math.isfinite(value):
        return [f"{where}={value}"]
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return []
        return [f"{where}={value!r}"]
    return []
