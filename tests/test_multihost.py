"""Distributed training across real network hosts (``dcgan_cluster.hosts``): a head and two
worker hosts, each a network namespace with its own address on a private bridge, Ray on
each with ``--node-ip-address`` and token auth, the job submitted from a client host, DDP's
Gloo traffic crossing the cables, metrics scraped by a Prometheus on a fourth host; then
network faults, each checked on disk afterwards. Traffic goes only to the addresses these
tests assign inside the namespaces they create (and remove: the fixture checks that
nothing is left).

Needs root and iproute2 (``ip netns``); skipped otherwise, failed under CI=true. The tests
marked ``multihost`` are the fault set of ``make test-multihost`` (docs/reliability.md has
its figures); the rest run in every ``make test``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from dcgan import layout

from .conftest import ROOT

pytestmark = pytest.mark.slow

GUARD_S = 600  # a hang guard per wait, not a speed check
SMALL = {"train_subset": 640, "batch_size": 32, "log_every": 5, "sample_every": 0,
         "eval_every": 0, "checkpoint_every": 0, "checkpoint_every_steps": 10,
         "device": "cpu"}


def _need_netns() -> None:
    why = None
    if os.geteuid() != 0:
        why = "needs root for ip netns"
    elif shutil.which("ip") is None:
        why = "needs iproute2's ip"
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)


@pytest.fixture(scope="module")
def hosts(data_dir):
    """The test hosts for this module; removed afterwards, and checked removed: no
    namespace of theirs, no process of theirs."""
    _need_netns()
    from dcgan_cluster.hosts import namespaces, running

    state = Path(tempfile.mkdtemp(prefix="dcgh-", dir="/tmp"))  # short: Ray's sockets
    tag = os.getpid() % 200
    links_before = _links()
    prefix = f"dcgt{tag}"
    try:
        with running(state, workers=2, prefix=prefix, subnet=f"10.99.{tag}.0/24") as h:
            yield h
        assert namespaces(prefix) == []
        assert _links() == links_before  # the machine's own namespace never got a link
        left = subprocess.run(["pgrep", "-f", str(state)], capture_output=True, text=True)
        assert left.stdout.strip() == "", f"processes left: {left.stdout}"
    finally:
        shutil.rmtree(state, ignore_errors=True)


def _links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    return {line.split(":")[1].strip() for line in out.splitlines() if ":" in line}


def submit_args(hosts, out: Path, *extra: str, **overrides) -> list[str]:
    values = {**SMALL, "data_dir": os.environ.get("DCGAN_DATA_DIR", ""), **overrides}
    sets = [a for k, v in values.items() if v != "" for a in ("--set", f"{k}={v}")]
    return [sys.executable, "-m", "dcgan_cluster.submit", "--address", hosts.dashboard,
            "--lost-after", "10", *extra, "--", "dcgan", "train-distributed", "--out",
            str(out), "--workers", "2", "--use-gpu", "false", "--storage",
            str(hosts.storage), *sets]


def submit(hosts, args: list[str], timeout: float = GUARD_S) -> subprocess.CompletedProcess:
    return hosts.run("client", args, timeout=timeout, cwd=ROOT)


def wait_for(log: Path, needle: str, proc: subprocess.Popen | None = None,
             guard: float = GUARD_S) -> float:
    """Wait until ``needle`` is in ``log``; returns when (monotonic)."""
    deadline = time.monotonic() + guard
    while needle not in log.read_text(errors="replace"):
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"ended ({proc.returncode}) before {needle!r}:\n"
                        f"{log.read_text()[-3000:]}")
        assert time.monotonic() < deadline, f"no {needle!r}:\n{log.read_text()[-3000:]}"
        time.sleep(0.5)
    return time.monotonic()


def wait_nodes(hosts, count: int) -> None:
    hosts.wait_for_nodes(count, timeout=GUARD_S)


def bring_back(hosts, name: str) -> None:
    """The host's cable back, and its Ray node restarted if the head declared it dead (a
    raylet the GCS marked dead exits; a host's service manager would restart it)."""
    hosts.restore(name)
    if hosts.alive_nodes() < 3:
        hosts.stop_ray(name)
        hosts.start_ray(name, cpus=1)
    wait_nodes(hosts, 3)


def check_run_on_disk(out: Path, steps: int) -> dict:
    """Stats rows continuous and unduplicated, the final files there."""
    stats = pq.read_table(out / layout.STATS_FILE).to_pydict()
    assert stats["step"] == list(range(steps)), "stats rows not continuous"
    for name in (layout.GENERATOR_FINAL, layout.DISCRIMINATOR_FINAL, layout.FINAL_SAMPLES):
        assert (out / name).stat().st_size > 0, name
    torch.load(out / layout.GENERATOR_FINAL, weights_only=True)
    return json.loads((out / layout.WORKERS_FILE).read_text())


def kept_states(hosts, name: str) -> list[int]:
    from dcgan.checkpoint import load_state

    return sorted(load_state(p)["step"]
                  for p in (hosts.storage / name).glob(f"checkpoint_*/{layout.RAY_STATE_FILE}"))


# -- in every `make test` ------------------------------------------------------------------

def test_training_across_hosts(hosts, tmp_path):
    """Two workers on two hosts: the workers' addresses in the run's record, Gloo on their
    cables (bytes counted there), both ranks' metrics at one endpoint scraped by Prometheus
    on its own host, the run directory complete and resumable on the shared storage."""
    from dcgan_cluster.monitor import write_config

    from .test_monitoring import need

    out = hosts.state / "runs" / "across"
    out.parent.mkdir(exist_ok=True)
    before = {w.name: hosts.bytes_on(w.name) for w in hosts.workers()}
    port = 9400
    config = write_config(hosts.state / "prometheus", [f"{hosts.head.address}:{port}"],
                          str(hosts.state / "no-ray-sd.json"), scrape_interval="1s")
    prometheus = hosts.popen("prometheus", [need("prometheus"), f"--config.file={config}",
                                            f"--storage.tsdb.path={hosts.state / 'tsdb'}",
                                            "--web.listen-address=0.0.0.0:9090"],
                             hosts.state / "prometheus.log")
    log = tmp_path / "submit.log"
    try:
        job = hosts.popen("client", [*submit_args(hosts, out, epochs=4), "--metrics-port",
                                     str(port), "--metrics-host", "0.0.0.0"], log, cwd=ROOT)
        try:
            wait_for(log, "Batch 10/20", job)
            query = (f"import json, urllib.request; print(urllib.request.urlopen("
                     f"'http://{hosts.hosts['prometheus'].address}:9090/api/v1/query?query="
                     f"count%20by%20(rank)%20(dcgan_d_loss)', timeout=5).read().decode())")
            ranks: set[str] = set()
            deadline = time.monotonic() + 120
            while ranks != {"0", "1"} and time.monotonic() < deadline:
                proc = hosts.run("client", [sys.executable, "-c", query])
                if proc.returncode == 0:
                    result = json.loads(proc.stdout)["data"]["result"]
                    ranks = {r["metric"].get("rank") for r in result}
                time.sleep(1)
            assert ranks == {"0", "1"}, "Prometheus on its own host did not see both ranks"
            assert job.wait(timeout=GUARD_S) == 0, log.read_text()[-3000:]
        finally:
            job.kill()
            job.wait()
    finally:
        prometheus.terminate()
        prometheus.wait(timeout=30)
    assert "succeeded" in log.read_text()
    record = check_run_on_disk(out, 80)
    (group,) = record["groups"]
    assert sorted(w["node_ip"] for w in group["workers"]) == sorted(
        w.address for w in hosts.workers())
    assert {w["gloo_interface"] for w in group["workers"]} == {"eth0"}
    for worker in hosts.workers():  # DDP's all-reduces crossed each worker's cable
        after = hosts.bytes_on(worker.name)
        assert after["tx"] - before[worker.name]["tx"] > 5_000_000, worker.name
        assert after["rx"] - before[worker.name]["rx"] > 5_000_000, worker.name
    # Resumable like a local run: two more epochs from its last checkpoint.
    proc = submit(hosts, [*submit_args(hosts, out, epochs=6), "--resume"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    record = check_run_on_disk(out, 120)
    assert [g["from_step"] for g in record["groups"]] == [0, 80]


def test_a_node_advertising_an_unreachable_address_is_refused(hosts):
    node = [sys.executable, "-m", "dcgan_cluster.node"]
    wrong = hosts.subnet.replace("0/24", "77")
    proc = hosts.run("worker1", [*node, "--node-ip-address", wrong, "--",
                                 f"--address={hosts.gcs_address}", "--block"], timeout=60)
    assert proc.returncode == 1
    (line,) = proc.stderr.strip().splitlines()
    assert f"--node-ip-address {wrong} is not an address of this host" in line
    assert hosts.hosts["worker1"].address in line
    hosts.cut("worker1")  # its own address, but no route to the head
    try:
        proc = hosts.run("worker1", [*node, "--node-ip-address", hosts.hosts["worker1"].address,
                                     "--", f"--address={hosts.gcs_address}", "--block"],
                         timeout=60)
    finally:
        hosts.restore("worker1")
    assert proc.returncode == 1
    (line,) = proc.stderr.strip().splitlines()
    assert f"the head {hosts.gcs_address} does not answer from" in line
    wait_nodes(hosts, 3)  # the cut was short: worker1's node lives on


# -- make test-multihost: the network faults -----------------------------------------------

@pytest.mark.multihost
def test_worker_cable_cut_then_restored(hosts, tmp_path):
    """worker2 drops off the network mid-run for long enough to be declared dead, then comes
    back: the group restarts from the latest checkpoint and the run completes, every step
    once in the stats. The time from the cut to training again is printed."""
    out = hosts.state / "runs" / "cut"
    out.parent.mkdir(exist_ok=True)
    log = tmp_path / "submit.log"
    job = hosts.popen("client", submit_args(hosts, out, epochs=8), log, cwd=ROOT)
    try:
        wait_for(log, "Checkpoint successfully created", job)
        cut_at = time.monotonic()
        hosts.cut("worker2")
        wait_nodes(hosts, 2)  # the head's health checks give up on it
        dead_after = time.monotonic() - cut_at
        bring_back(hosts, "worker2")
        restored = wait_for(log, "Restored from the checkpoint", job)
        assert job.wait(timeout=GUARD_S) == 0, log.read_text()[-3000:]
    finally:
        job.kill()
        job.wait()
    print(f"\nworker2 declared dead {dead_after:.0f} s after its cable was cut; training "
          f"again {restored - cut_at:.0f} s after the cut")
    record = check_run_on_disk(out, 160)
    assert len(record["groups"]) == 2 and record["groups"][1]["from_step"] >= 10
    assert kept_states(hosts, "cut")[-1] == 160


@pytest.mark.multihost
def test_worker_lost_for_good_stops_in_one_line(hosts, tmp_path):
    """worker2 never comes back: the driver stops the run with one line once the cluster
    has been short of the group's CPUs for DCGAN_CAPACITY_WAIT_S, and the run resumes
    later from its checkpoint."""
    out = hosts.state / "runs" / "lost"
    out.parent.mkdir(exist_ok=True)
    log = tmp_path / "submit.log"
    args = submit_args(hosts, out, "--env", "DCGAN_CAPACITY_WAIT_S=20", epochs=8)
    job = hosts.popen("client", args, log, cwd=ROOT)
    try:
        wait_for(log, "Checkpoint successfully created", job)
        hosts.cut("worker2")
        code = job.wait(timeout=GUARD_S)
    finally:
        job.kill()
        job.wait()
        bring_back(hosts, "worker2")
    text = log.read_text()
    assert code == 1, text[-3000:]
    last = text.strip().splitlines()[-1]
    assert last.startswith("error: job ") and "worker capacity lost: the cluster has 1 CPU " \
        "for 2 workers needing 2" in last, last
    assert "rerun the same command with --resume" in last
    proc = submit(hosts, [*submit_args(hosts, out, epochs=8), "--resume"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    check_run_on_disk(out, 160)


@pytest.mark.multihost
def test_client_cut_from_the_head(hosts, tmp_path):
    """The submitting client loses the head: it stops following in one line (no hang), the
    job runs on to the end on the cluster."""
    out = hosts.state / "runs" / "client"
    out.parent.mkdir(exist_ok=True)
    log = tmp_path / "submit.log"
    job = hosts.popen("client", submit_args(hosts, out, epochs=6), log, cwd=ROOT)
    try:
        wait_for(log, "Batch 5/20", job)
        hosts.cut("client")
        cut_at = time.monotonic()
        code = job.wait(timeout=120)
        gone_after = time.monotonic() - cut_at
    finally:
        job.kill()
        job.wait()
        hosts.restore("client")
    text = log.read_text()
    assert code == 1 and "Traceback" not in text, text[-3000:]
    last = text.strip().splitlines()[-1]
    assert last.startswith("error: lost contact with the Ray head at "), last
    assert "keeps running there" in last and "--resume" in last
    assert gone_after < 60
    deadline = time.monotonic() + GUARD_S
    while not (out / layout.GENERATOR_FINAL).exists():
        assert time.monotonic() < deadline, "the job did not finish on the cluster"
        time.sleep(2)
    time.sleep(5)  # the driver's last writes after the final weights
    check_run_on_disk(out, 120)
