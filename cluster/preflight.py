"""The checks every Ray command runs on the driver, in seconds, before Ray starts anything:
``dcgan train-distributed`` (``dcgan_cluster.launch``) and ``dcgan tune`` (``dcgan_tune``).
Nothing here imports Ray."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path
from urllib.parse import urlparse

from dcgan.config import TrainConfig
from dcgan.data import check_mnist
from dcgan.errors import ConfigError, DCGANError

CONNECT_TIMEOUT_S = 5.0


class ClusterError(DCGANError):
    """Ray could not be reached or the run failed on the cluster."""


def resolve_use_gpu(flag: str) -> bool:
    if flag not in ("auto", "true", "false"):
        raise ConfigError("--use-gpu", f"must be auto, true or false (got {flag!r})")
    if flag == "auto":
        import torch

        return torch.cuda.is_available()
    return flag == "true"


def check_address(address: str) -> None:
    """Fail fast on an unreachable cluster instead of letting ray.init retry for minutes."""
    if address in ("auto", "local"):
        return
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    host, port = parsed.hostname, parsed.port or (10001 if parsed.scheme == "ray" else 6379)
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise ClusterError(f"cannot reach the Ray cluster at {address} ({exc.strerror or exc}); "
                           "check --address / RAY_ADDRESS, or omit both for a local "
                           "instance") from None


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


def check_ray_run(cfg: TrainConfig, workers: int, gpu: bool, address: str | None,
                  what: str = "workers") -> TrainConfig:
    """What Ray workers (``what``: workers, or a search's trials) would only trip over later:
    the global batch split over ``workers``, fp16 without GPUs, MNIST missing, an unreachable
    address. Returns ``cfg`` with an absolute ``data_dir``: Ray workers do not run in this
    directory."""
    cfg = cfg.replace(data_dir=str(Path(cfg.data_dir).expanduser().resolve()))
    if cfg.batch_size % workers:
        raise ConfigError("batch_size", f"the global batch {cfg.batch_size} does not divide "
                                        f"evenly over {workers} workers")
    if cfg.precision == "fp16" and not gpu:
        raise ConfigError("precision", f"fp16 needs GPU {what} (use bf16 or fp32 on CPUs)")
    check_mnist(cfg.data_dir, subset=cfg.train_subset)
    if address:
        check_address(address)
    return cfg
