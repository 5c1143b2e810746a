"""Faults and hostile input, each done for real, each with the promise it checks
(docs/reliability.md is the table): a full disk (``RLIMIT_FSIZE`` on the training process),
``kill -9`` in the middle of a checkpoint write, two writers of one run directory, corrupt
files in a run being resumed, paths that cannot be written, sizes with extra zeros,
addresses that are not a Ray cluster, a metrics port taken after its check, a scrape while
the endpoint shuts down. Every test checks the state on disk afterwards, not only the exit
status."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from dcgan import layout
from dcgan.checkpoint import list_states, load_state
from dcgan.layout import EVAL_FILE, LOCK_FILE, STATS_FILE

from .conftest import ROOT, free_port, one_line_error, ray_env, ray_node, run_cli, sets

pytestmark = pytest.mark.slow

# 8 steps per epoch; the first epoch ends with a full-state checkpoint at step 8.
BASE = {"train_subset": 256, "batch_size": 32, "device": "cpu", "log_every": 2,
        "sample_every": 0, "eval_every": 0, "checkpoint_every": 1, "epochs": 1}


def train_args(out: Path, data_dir: str, *extra: str, **overrides) -> list[str]:
    return ["train", "--out", str(out), "--no-progress", *extra,
            *sets({**BASE, "data_dir": data_dir, **overrides})]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_limited(args: list[str], max_bytes: int) -> subprocess.CompletedProcess:
    """A dcgan command whose process cannot write a file larger than ``max_bytes``: every
    write past it fails with EFBIG, as on a full disk (Python ignores SIGXFSZ)."""
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))

    return subprocess.run([sys.executable, "-m", "dcgan", *args], capture_output=True,
                          text=True, timeout=300, cwd=ROOT, preexec_fn=limit,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


@contextlib.contextmanager
def background(args: list[str], log: Path):
    """A dcgan command in its own process group, killed and reaped whatever happens."""
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "dcgan", *args], stdout=out,
                                stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            yield proc
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_for(condition, timeout: float, what: str, proc=None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process ended (status {proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def stats_steps(run: Path) -> list[int]:
    return pq.read_table(run / STATS_FILE).column("step").to_pylist()


@pytest.fixture(scope="module")
def first_epoch(tmp_path_factory, data_dir) -> Path:
    """A run stopped after its first epoch: checkpoint at step 8, stats of 8 rows."""
    out = tmp_path_factory.mktemp("faults") / "run"
    proc = run_cli(train_args(out, data_dir))
    assert proc.returncode == 0, proc.stderr
    return out


def copy_run(src: Path, dst: Path) -> Path:
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)
    return dst


# -- a full disk ---------------------------------------------------------------------------

@pytest.mark.parametrize(("what", "limit", "overrides"), [
    # 43 MB full states; the resumed run's first one (step 12) cannot be written.
    ("checkpoint", 20_000_000, {"checkpoint_every": 0, "checkpoint_every_steps": 4}),
    # 3.2 kB stats after 8 steps; the rewrite at the end of epoch 1 cannot be written.
    ("stats", 2_000, {"checkpoint_every": 0}),
    # ~50 kB sample grids; the first one (step 8) cannot be written.
    ("sample grid", 20_000, {"sample_every": 4, "checkpoint_every": 0}),
])
def test_disk_full_keeps_what_was_there_and_resume_continues(first_epoch, tmp_path, data_dir,
                                                             what, limit, overrides):
    run = copy_run(first_epoch, tmp_path / "run")
    state, before = list_states(run)[0], digest(list_states(run)[0])
    stats_before = digest(run / STATS_FILE)

    proc = run_limited(train_args(run, data_dir, "--resume", epochs=2, **overrides), limit)

    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr
    error = one_line_error(proc)
    assert "File too large" in error and "intact" in error, error
    assert list_states(run) == [state] and digest(state) == before  # the last one is intact
    assert load_state(state)["step"] == 8
    assert digest(run / STATS_FILE) == stats_before  # the previous stats, whole
    assert not list(run.rglob("*.tmp")), "a temporary file was left behind"
    # With room again, --resume continues from step 8 and ends with every row once.
    again = run_cli(train_args(run, data_dir, "--resume", epochs=2, **overrides))
    assert again.returncode == 0, again.stderr
    assert stats_steps(run) == list(range(16))


# -- kill -9 in the middle of a checkpoint write ------------------------------------------

def test_kill_9_during_a_checkpoint_write_resumes_without_gap_or_duplicate(tmp_path,
                                                                           data_dir):
    """A full state every step (43 MB each): the process spends most of its time writing
    them, and is killed while a temporary checkpoint file is open."""
    run = tmp_path / "run"
    args = train_args(run, data_dir, epochs=3, checkpoint_every=0, checkpoint_every_steps=1)
    tmp_state = run / "checkpoints"

    def writing_after_a_complete_one() -> bool:
        return (len(list_states(run)) >= 2
                and any(tmp_state.glob(".state_step_*.tmp")))

    with background(args, tmp_path / "run.log") as proc:
        wait_for(writing_after_a_complete_one, 240, "a checkpoint write in progress", proc)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = load_state(list_states(run)[0])["step"]
    assert 2 <= killed_at < 24
    # The stale lock of the killed process is taken over; the leftover temp file removed.
    again = run_cli(train_args(run, data_dir, "--resume", epochs=3, checkpoint_every=0,
                               checkpoint_every_steps=1))
    assert again.returncode == 0, again.stderr
    assert f"resuming at step {killed_at}" in again.stdout
    assert stats_steps(run) == list(range(24))  # no gap, no duplicate
    assert not list(tmp_state.glob(".state_step_*.tmp"))
    note = json.loads((run / LOCK_FILE).read_text())
    assert note["pid"] != proc.pid and note["command"] == "dcgan train"


# -- two writers ----------------------------------------------------------------------------

def test_a_second_writer_is_refused_and_readers_are_not(tmp_path, data_dir):
    run = tmp_path / "run"
    args = train_args(run, data_dir, epochs=50)
    with background(args, tmp_path / "run.log") as proc:
        wait_for(lambda: (run / STATS_FILE).exists(), 240, "the first epoch's stats", proc)
        for second in (train_args(run, data_dir, "--resume"),
                       ["train-distributed", "--out", str(run), "--workers", "1",
                        "--use-gpu", "false", "--set", f"data_dir={data_dir}"],
                       ["tune", "--out", str(run), "--set", f"data_dir={data_dir}"]):
            refused = run_cli(second, timeout=60)
            assert refused.returncode == 2, refused.stderr
            error = one_line_error(refused)
            assert f"is in use by dcgan train (pid {proc.pid} on host" in error, error
        # Readers take no lock.
        analyzed = run_cli(["analyze", "--out", str(run)])
        assert analyzed.returncode == 0, analyzed.stderr
        assert proc.poll() is None  # the writer was never disturbed
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=120) == 143
    assert not (run / "ray").exists()  # the refused train-distributed started nothing
    assert stats_steps(run) == list(range(len(stats_steps(run))))


# -- corrupt files in a run being resumed ---------------------------------------------------

@pytest.mark.parametrize(("name", "damage"), [
    (STATS_FILE, "truncate"), (EVAL_FILE, "garbage"), (layout.CONFIG_FILE, "garbage"),
])
def test_corrupt_side_files_are_rebuilt_from_the_checkpoint(first_epoch, tmp_path, data_dir,
                                                            name, damage):
    """Documented recovery: the full state holds the config, every stats row and every
    evaluation up to its step, so a resume rewrites these files whole; nothing is lost
    that the checkpoint did not already hold."""
    run = copy_run(first_epoch, tmp_path / "run")
    target = run / name
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[:20] if target.exists() else b"PAR1")
    else:
        target.write_bytes(b"\x00garbage: [not, valid\n" * 10)
    again = run_cli(train_args(run, data_dir, "--resume", epochs=2, eval_every=1,
                               eval_samples=200, rescore_samples=300))
    assert again.returncode == 0, again.stderr
    assert stats_steps(run) == list(range(16))
    evals = pq.read_table(run / EVAL_FILE).to_pylist()  # G and its moving average
    assert [(r["step"], r["generator"]) for r in evals] == [(16, "raw"), (16, "ema")]
    assert "data_dir:" in (run / layout.CONFIG_FILE).read_text()


def test_corrupt_search_settings_are_a_one_line_error(tmp_path, data_dir):
    out = tmp_path / "search"
    (out / "ray" / "search").mkdir(parents=True)
    (out / "search_settings.json").write_text('{"trials": 4, "sched')
    proc = run_cli(["tune", "--out", str(out), "--resume", "--set", f"data_dir={data_dir}"])
    assert proc.returncode == 2
    assert "search_settings.json is unreadable or corrupt" in one_line_error(proc)
    assert (out / "search_settings.json").read_text() == '{"trials": 4, "sched'


# -- paths, sizes and addresses -------------------------------------------------------------

@pytest.fixture
def not_a_dir(tmp_path) -> Path:
    path = tmp_path / "file"
    path.write_text("a file, not a folder")
    return path


@pytest.mark.parametrize("command", ["train", "train-distributed", "tune"])
@pytest.mark.parametrize(("where", "needle"), [
    ("under-a-file", "is not a directory"),
    ("virtual", "cannot write in /proc"),
])
def test_an_out_path_that_cannot_be_created(command, where, needle, not_a_dir, data_dir):
    out = not_a_dir / "run" if where == "under-a-file" else Path("/proc/dcgan-run")
    args = {"train": ["train", "--out", str(out)],
            "train-distributed": ["train-distributed", "--out", str(out), "--workers", "1"],
            "tune": ["tune", "--out", str(out)]}[command]
    proc = run_cli([*args, "--set", f"data_dir={data_dir}"], timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert needle in one_line_error(proc)
    assert not_a_dir.read_text() == "a file, not a folder"


@pytest.mark.parametrize(("args", "needle"), [
    (["sample", "--n", "64000000"], "--n: must be at most 10,000"),
    (["interpolate", "--steps", "100000"], "--steps: must be at most 100"),
    (["evaluate", "--n", "10000000"], "--n: must be at most 100,000"),
    (["sample", "--image", "/proc/grid.png"], "cannot write in /proc"),
    (["sample", "--save-tensor", "/proc/x.pt"], "cannot write in /proc"),
    (["interpolate", "--gif", "/proc/walk.gif"], "cannot write in /proc"),
    (["evaluate", "--json", "/proc/q.json"], "cannot write in /proc"),
])
def test_sizes_and_output_files_of_the_generator_tools(args, needle, tmp_path):
    generator = tmp_path / "g.pth"  # never read: every check comes first
    if args[0] == "evaluate":
        base = ["evaluate", "--generator", str(generator)]
    else:
        base = [args[0], "--generator", str(generator), "--image", str(tmp_path / "o.png")]
    proc = run_cli([*base, *args[1:]], timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert needle in one_line_error(proc)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("args", "needle"), [
    (["train", "--set", "eval_samples=20000000"], "eval_samples: must be <= 100000"),
    (["train", "--set", "latent_dim=1000000"], "latent_dim: must be <= 4096"),
    (["train-distributed", "--workers", "500"], "500 training processes on a local Ray"),
    (["tune", "--max-concurrent", "40", "--workers-per-trial", "10"],
     "400 training processes on a local Ray"),
])
def test_counts_with_extra_zeros_fail_at_once(args, needle, tmp_path, data_dir):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, "-m", "dcgan", *args, "--out", str(tmp_path / "r"),
                           "--set", f"data_dir={data_dir}"], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, env=env)
    assert proc.returncode == 2, proc.stderr
    assert needle in one_line_error(proc)
    assert not (tmp_path / "r").exists()


@contextlib.contextmanager
def listener(kind: str):
    """Something that is not a Ray GCS on a loopback port: an HTTP server (the dashboard's
    8265 typed for 6379), or a port that accepts and never answers."""
    if kind == "http":
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                                 http.server.BaseHTTPRequestHandler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield server.server_address[1]
        finally:
            server.shutdown()
            server.server_close()
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen(8)
            yield s.getsockname()[1]


@pytest.mark.parametrize(("kind", "needle"), [
    ("http", "answers, but as an HTTP server, not as a Ray cluster"),
    ("silent", "cannot reach the Ray cluster"),
])
@pytest.mark.parametrize("command", ["train-distributed", "tune"])
def test_an_address_that_is_not_a_ray_cluster(kind, needle, command, tmp_path, data_dir):
    with listener(kind) as port:
        workers = ["--workers", "1"] if command == "train-distributed" else []
        args = [command, "--out", str(tmp_path / "r"), *workers, "--address",
                f"127.0.0.1:{port}", "--set", f"data_dir={data_dir}"]
        proc = run_cli(args, timeout=60)
    assert proc.returncode == 1, proc.stderr
    error = one_line_error(proc)  # one line: none of Ray's minutes of retries
    assert needle in error, error
    if kind == "silent":  # bounded by the check's own timeout, not by Ray's retries
        assert "timed out" in error, error
    assert not (tmp_path / "r" / "ray").exists()


# -- the metrics endpoint -------------------------------------------------------------------

def test_metrics_port_taken_between_the_check_and_the_bind(tmp_path, data_dir, monkeypatch):
    """The port is free when checked, taken when bound: a one-line error, and the run
    directory untouched."""
    import dcgan.monitoring
    import dcgan.run
    from dcgan.errors import DCGANError
    from dcgan.metrics_sink import MetricsSink

    port = free_port()
    # Every driver's preparation (dcgan.prepare) checks the port first: passed here.
    monkeypatch.setattr(dcgan.monitoring, "check_metrics_args", lambda host, p: None)
    taker = socket.socket()
    taker.bind(("127.0.0.1", port))
    taker.listen(1)
    try:
        with pytest.raises(DCGANError, match="already in use; pick another --metrics-port"):
            dcgan.run.train_local(tmp_path / "run", overrides=sets({**BASE, "data_dir":
                                                                     data_dir})[1::2],
                                  progress=False,
                                  sinks=[MetricsSink("127.0.0.1", port)])
    finally:
        taker.close()
    assert not (tmp_path / "run").exists()


def test_scrapes_while_the_endpoint_shuts_down(tmp_path, data_dir):
    """Scraping as fast as possible across the end of a run: every answer is a complete
    exposition, every failure a refused connection, and the run still exits 0."""
    from prometheus_client.parser import text_string_to_metric_families

    port = free_port()
    args = train_args(tmp_path / "run", data_dir, "--metrics-port", str(port), epochs=1)
    complete = refused = 0
    with background(args, tmp_path / "run.log") as proc:
        while proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                            timeout=10) as reply:
                    text = reply.read().decode()
            except (urllib.error.URLError, ConnectionError) as exc:
                refused += 1
                reason = getattr(exc, "reason", exc)
                assert isinstance(reason, ConnectionError | OSError), exc
                time.sleep(0.01)
                continue
            names = {f.name for f in text_string_to_metric_families(text)}
            assert "dcgan_training_active" in names, text[:500]
            complete += 1
        assert proc.wait() == 0, (tmp_path / "run.log").read_text()[-2000:]
    assert complete > 0 and refused > 0
    assert stats_steps(tmp_path / "run") == list(range(8))


# -- the Ray head killed during train-distributed -------------------------------------------

def ray_registered_checkpoint(experiment: Path) -> bool:
    """Ray Train resumes from the checkpoints its snapshot lists (a checkpoint folder alone,
    written a moment before the snapshot, is not yet one)."""
    try:
        snapshot = json.loads((experiment / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(snapshot.get("latest_checkpoint_result"))


def test_ray_head_killed_during_train_distributed(tmp_path, data_dir):
    """The driver ends with a clear error naming how to resume; rerunning with the same
    --name and --storage on a new Ray instance resumes from the last checkpoint."""
    env = {**ray_env(), "PYTHONUNBUFFERED": "1"}
    run, storage = tmp_path / "run", tmp_path / "storage"
    small = {"train_subset": 640, "batch_size": 32, "log_every": 5, "sample_every": 0,
             "eval_every": 0, "checkpoint_every": 1, "data_dir": data_dir}
    common = ["train-distributed", "--out", str(run), "--workers", "2", "--use-gpu", "false",
              "--storage", str(storage), "--name", "run"]
    with ray_node(tmp_path / "head.log", env, num_cpus=3) as head:
        with open(tmp_path / "driver.log", "w") as log:
            driver = subprocess.Popen(
                [sys.executable, "-m", "dcgan", *common, "--address", head.address,
                 *sets({**small, "epochs": 50})],
                stdout=subprocess.DEVNULL, stderr=log, cwd=ROOT, env=env,
                start_new_session=True)
            try:
                wait_for(lambda: ray_registered_checkpoint(storage / "run"), 300,
                         "the first Ray checkpoint", driver)
                os.killpg(head.proc.pid, signal.SIGKILL)  # the head and all it started
                status = driver.wait(timeout=180)
            finally:
                if driver.poll() is None:
                    os.killpg(driver.pid, signal.SIGKILL)
                driver.wait()
    stderr = (tmp_path / "driver.log").read_text()
    last = stderr.strip().splitlines()[-1]
    assert status == 1, stderr[-3000:]
    assert last.startswith("error: lost the Ray cluster during training"), stderr[-3000:]
    assert "--name run" in last and "Traceback" not in stderr.split("error: lost")[-1]
    saved = sorted((storage / "run").glob("checkpoint_*"))
    assert saved

    # A new Ray instance, the same name and storage: it resumes.
    with ray_node(tmp_path / "head-2.log", env, num_cpus=3) as head:
        again = run_cli([*common, "--address", head.address, "--resume",
                         *sets({**small, "epochs": 2})], timeout=400, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    restored = [line for line in (again.stdout + again.stderr).splitlines()
                if "Restored from the checkpoint at step" in line]
    assert restored, again.stdout[-3000:]
    step = int(restored[0].rsplit(" ", 1)[1])
    assert step >= 20 and step % 20 == 0  # an epoch-end checkpoint of the first run
    assert stats_steps(run) == list(range(40))
