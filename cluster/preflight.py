"""The checks every Ray command runs on the driver, in seconds, before Ray starts anything:
``dcgan train-distributed`` (``dcgan_cluster.launch``) and ``dcgan tune`` (``dcgan_tune``).
Nothing here imports Ray at import time (``cluster_gpus`` does, once Ray is up)."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path
from urllib.parse import urlparse

from dcgan.config import TrainConfig, Tristate
from dcgan.data import check_mnist
from dcgan.errors import ConfigError, DCGANError, shown

CONNECT_TIMEOUT_S = 5.0
# A local Ray instance runs every worker (a full process with torch) on this machine.
LOCAL_PROCESSES_PER_CORE = 4


class ClusterError(DCGANError):
    """Ray could not be reached or the run failed on the cluster."""


def resolve_use_gpu(flag: str) -> bool | None:
    """--use-gpu: True or False; None for auto, decided by ``cluster_gpus`` once Ray is up
    (the driver may run on a CPU-only head of a cluster whose workers have GPUs)."""
    if flag not in Tristate.CHOICES:
        raise ConfigError("--use-gpu",
                          f"must be one of {', '.join(Tristate.CHOICES)} (got {shown(flag)})")
    return None if flag == "auto" else flag == "true"


def cluster_gpus() -> float:
    """The GPUs the connected Ray cluster reports (all its nodes, not this machine's)."""
    import ray

    return float(ray.cluster_resources().get("GPU", 0))


def decide_gpu(use_gpu: bool | None, cfg: TrainConfig, what: str = "workers",
               write=print) -> bool:
    """``use_gpu``, or for auto (None) whether the cluster has GPUs; says which it chose, and
    refuses fp16 without them. Call once Ray is connected."""
    if use_gpu is None:
        gpus = cluster_gpus()
        use_gpu = gpus >= 1
        write(f"--use-gpu auto: the Ray cluster reports {gpus:g} GPU(s): "
              f"{'GPU' if use_gpu else 'CPU'} {what}")
    if cfg.precision == "fp16" and not use_gpu:
        raise ConfigError("precision", f"fp16 needs GPU {what} (use bf16 or fp32 on CPUs)")
    return use_gpu


# The client preface of HTTP/2 and an empty SETTINGS frame (RFC 9113, 3.4 and 6.5).
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
_H2_SETTINGS = 0x04


def check_address(address: str) -> None:
    """Fail fast, in seconds, on an address that is not a Ray cluster, instead of letting
    ray.init retry for minutes: nothing listens there, or something that does not speak
    gRPC (Ray's GCS and client server do) answers, such as the dashboard's HTTP port."""
    if address in ("auto", "local"):
        return
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    try:
        host, port = parsed.hostname, parsed.port or (10001 if parsed.scheme == "ray" else 6379)
    except ValueError:  # a port that is not a number, or out of range
        host = port = None
    if not host:
        raise ClusterError(f"--address {address} is not HOST:PORT (or ray://HOST:PORT)")
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S) as conn:
            conn.settimeout(CONNECT_TIMEOUT_S)
            conn.sendall(_H2_PREFACE)
            reply = conn.recv(9)
    except OSError as exc:
        raise ClusterError(f"cannot reach the Ray cluster at {address} ({exc.strerror or exc}); "
                           "check --address / RAY_ADDRESS, or omit both for a local "
                           "instance") from None
    if len(reply) < 4 or reply[3] != _H2_SETTINGS:
        http = reply.startswith(b"HTTP/") or reply.lstrip().startswith(b"<")  # status or page
        what = "an HTTP server" if http else "something else"
        raise ClusterError(f"{address} answers, but as {what}, not as a Ray cluster (GCS port, "
                           "6379 by default; 8265 is the dashboard, for CLUSTER= job "
                           "submission only); check --address / RAY_ADDRESS")


def check_local_processes(processes: int, flag: str) -> None:
    """Without --address every training process lands on this machine: refuse counts that
    would swamp it (a typo's extra zero) instead of starting hundreds of processes."""
    most = LOCAL_PROCESSES_PER_CORE * (os.cpu_count() or 1)
    if processes > most:
        raise ConfigError(flag, f"{processes} training processes on a local Ray instance "
                                f"(this machine: {os.cpu_count()} cores) is more than {most}; "
                                "give --address to run on a cluster")


def check_storage(storage: str) -> str:
    """A writable local directory (made absolute) or a URI that Ray resolves (s3://, gs://)."""
    if "://" in storage:
        return storage
    path = Path(storage).expanduser().resolve()
    probe = path / f".dcgan-write-probe-{uuid.uuid4().hex}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise ClusterError(f"storage {path} is not writable ({exc.strerror or exc})") from None
    return str(path)


def check_ray_run(cfg: TrainConfig, workers: int, gpu: bool | None, address: str | None,
                  what: str = "workers") -> TrainConfig:
    """What Ray workers (``what``: workers, or a search's trials) would only trip over later:
    the global batch split over ``workers``, fp16 without GPUs, MNIST missing, an unreachable
    address. Returns ``cfg`` with an absolute ``data_dir``: Ray workers do not run in this
    directory."""
    cfg = cfg.replace(data_dir=str(Path(cfg.data_dir).expanduser().resolve()))
    if cfg.batch_size % workers:
        raise ConfigError("batch_size", f"the global batch {cfg.batch_size} does not divide "
                                        f"evenly over {workers} workers")
    if cfg.precision == "fp16" and gpu is False:  # auto (None): decided once Ray is up
        raise ConfigError("precision", f"fp16 needs GPU {what} (use bf16 or fp32 on CPUs)")
    check_mnist(cfg.data_dir, subset=cfg.train_subset)
    if address:
        check_address(address)
    return cfg
