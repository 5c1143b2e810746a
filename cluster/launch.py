"""``dcgan train-distributed``: the driver that starts (or joins) Ray and runs TorchTrainer.

Everything that can be wrong with the inputs (config, workers, batch split, address,
storage) is checked here, in seconds, before Ray starts anything.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse

from dcgan.config import TrainConfig, load_config, save_config
from dcgan.data import check_mnist
from dcgan.errors import ConfigError, DCGANError, RunDirError
from dcgan.metrics import check_metrics_args

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


def init_ray(address: str | None, num_cpus: int | None = None) -> None:
    """Join the cluster at ``address``, or start a fresh local instance with ``num_cpus``
    logical CPUs. Local instances run the dashboard: it serves the State API that Ray
    Train's placement-group cleaner polls (without it, a warning every second); Ray picks a
    free port if 8265 is taken."""
    import ray

    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=True,
                 log_to_driver=True)


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


def train_distributed(run_dir: str | Path, workers: int, *, use_gpu: str = "auto",
                      address: str | None = None, storage: str | None = None,
                      name: str | None = None, config_path: str | None = None,
                      overrides: list[str] | None = None, cpus_per_worker: float | None = None,
                      gpus_per_worker: float = 1.0, metrics_host: str = "127.0.0.1",
                      metrics_port: int = 0) -> dict:
    """``cpus_per_worker`` None: a local instance splits this machine's cores between the
    workers (torch then uses that many threads per worker); on a cluster, 1."""
    started_at = time.time()
    run_dir = Path(run_dir).resolve()
    if workers < 1:
        raise ConfigError("--workers", f"must be >= 1 (got {workers})")
    check_metrics_args(metrics_host, metrics_port)
    cfg: TrainConfig = load_config(config_path, overrides or [])
    # Ray workers do not run in this directory: make a relative data_dir absolute.
    cfg = cfg.replace(data_dir=str(Path(cfg.data_dir).expanduser().resolve()))
    if cfg.batch_size % workers:
        raise ConfigError("batch_size", f"the global batch {cfg.batch_size} does not divide "
                                        f"evenly over {workers} workers")
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise ConfigError("device", "distributed mode places workers itself: use auto, cpu or "
                                    "cuda (or --use-gpu)")
    gpu = resolve_use_gpu(use_gpu) if cfg.device == "auto" else cfg.device == "cuda"
    if cfg.precision == "fp16" and not gpu:
        raise ConfigError("precision", "fp16 needs GPU workers (use bf16 or fp32 on CPUs)")
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        check_address(address)
    if cpus_per_worker is None:
        cpus_per_worker = 1.0 if address else float(max(1, (os.cpu_count() or 1) // workers))
    if cpus_per_worker <= 0:
        raise ConfigError("--cpus-per-worker", f"must be > 0 (got {cpus_per_worker})")
    name = name or run_dir.name
    storage = check_storage(storage or str(run_dir / "ray"))
    check_mnist(cfg.data_dir, subset=cfg.train_subset)  # clear data errors before Ray starts
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"--out {run_dir} exists and is not a directory")
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    return _run(cfg, run_dir, workers, gpu, address, storage, name, cpus_per_worker,
                gpus_per_worker, started_at, (metrics_host, metrics_port))


def _run(cfg: TrainConfig, run_dir: Path, workers: int, gpu: bool, address: str | None,
         storage: str, name: str, cpus_per_worker: float, gpus_per_worker: float,
         started_at: float, metrics: tuple[str, int]) -> dict:
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from cluster.metrics_hub import start_hub
    from cluster.worker import print_once_per_line, train_loop_per_worker

    print_once_per_line()
    t0 = time.perf_counter()
    # A local instance gets enough *logical* CPUs for every worker plus Ray Train's
    # controller, so that a 2-core machine cannot deadlock on resources.
    init_ray(address, num_cpus=max(os.cpu_count() or 1, int(workers * cpus_per_worker) + 1))
    try:
        loop_config = {"config": cfg.to_dict(), "run_dir": str(run_dir),
                       "started_at": started_at, "threads": max(1, int(cpus_per_worker))}
        host, port = metrics
        if port:
            loop_config["metrics_hub"], bound = start_hub(name, "distributed", cfg.to_dict(),
                                                          host, port)
            print(f"Prometheus metrics of every worker on http://{host}:{bound}/metrics")
        per_worker = {"CPU": cpus_per_worker, **({"GPU": gpus_per_worker} if gpu else {})}
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config=loop_config,
            torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpu,
                                         resources_per_worker=per_worker),
            run_config=RunConfig(name=name, storage_path=storage,
                                 failure_config=FailureConfig(max_failures=cfg.max_failures),
                                 checkpoint_config=CheckpointConfig(num_to_keep=2)))
        try:
            result = trainer.fit()
        except ray.train.TrainingFailedError as exc:
            first = (str(exc).strip().splitlines() or ["training failed"])[0]
            raise ClusterError(f"distributed training failed after {cfg.max_failures} "
                               f"restart(s) allowed: {first[:300]}") from None
        seconds = time.perf_counter() - t0
        return {"metrics": result.metrics, "seconds": seconds, "storage": storage,
                "name": name, "checkpoint": result.checkpoint}
    finally:
        ray.shutdown()
