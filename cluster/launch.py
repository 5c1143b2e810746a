"""``dcgan train-distributed``: the driver that starts (or joins) Ray and runs TorchTrainer.

Everything that can be wrong with the inputs (config, workers, batch split, address,
storage) is checked here, in seconds, before Ray starts anything.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from dcgan.config import TrainConfig, load_config, save_config
from dcgan.errors import ConfigError
from dcgan.layout import CONFIG_FILE, RAY_STORAGE_DIR
from dcgan.monitoring import check_metrics_args
from dcgan.paths import check_writable_dir
from dcgan.runlock import check_unlocked, hold_run_dir
from dcgan_cluster.preflight import (
    ClusterError,
    check_local_processes,
    check_ray_run,
    check_storage,
    resolve_use_gpu,
)


def train_distributed(run_dir: str | Path, workers: int, *, use_gpu: str = "auto",
                      address: str | None = None, storage: str | None = None,
                      name: str | None = None, config_path: str | None = None,
                      overrides: list[str] | None = None, cpus_per_worker: float | None = None,
                      gpus_per_worker: float = 1.0, metrics_host: str = "127.0.0.1",
                      metrics_port: int = 0) -> dict:
    """``cpus_per_worker`` None: a local instance splits this machine's cores between the
    workers (torch then uses that many threads per worker); on a cluster, 1."""
    started_at = time.time()
    run_dir = check_writable_dir(Path(run_dir).resolve())
    check_unlocked(run_dir)
    if workers < 1:
        raise ConfigError("--workers", f"must be >= 1 (got {workers})")
    check_metrics_args(metrics_host, metrics_port)
    cfg: TrainConfig = load_config(config_path, overrides or [])
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise ConfigError("device", "distributed mode places workers itself: use auto, cpu or "
                                    "cuda (or --use-gpu)")
    gpu = resolve_use_gpu(use_gpu) if cfg.device == "auto" else cfg.device == "cuda"
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        check_local_processes(workers, "--workers")
    cfg = check_ray_run(cfg, workers, gpu, address)
    if cpus_per_worker is None:
        cpus_per_worker = 1.0 if address else float(max(1, (os.cpu_count() or 1) // workers))
    if cpus_per_worker <= 0:
        raise ConfigError("--cpus-per-worker", f"must be > 0 (got {cpus_per_worker})")
    name = name or run_dir.name
    storage = check_storage(storage or str(run_dir / RAY_STORAGE_DIR))
    # The driver holds RUN_DIR for the whole run; rank 0 (maybe on another node) writes it.
    with hold_run_dir(run_dir, "dcgan train-distributed"):
        save_config(cfg, run_dir / CONFIG_FILE)
        return _run(cfg, run_dir, workers, gpu, address, storage, name, cpus_per_worker,
                    gpus_per_worker, started_at, (metrics_host, metrics_port))


def _run(cfg: TrainConfig, run_dir: Path, workers: int, gpu: bool, address: str | None,
         storage: str, name: str, cpus_per_worker: float, gpus_per_worker: float,
         started_at: float, metrics: tuple[str, int]) -> dict:
    import ray

    from dcgan_cluster.metrics_hub import start_hub
    from dcgan_cluster.runtime import init_ray, torch_trainer

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
        trainer = torch_trainer(loop_config, workers=workers, gpu=gpu,
                                cpus_per_worker=cpus_per_worker,
                                gpus_per_worker=gpus_per_worker, name=name, storage=storage,
                                max_failures=cfg.max_failures)
        try:
            result = trainer.fit()
        except ray.train.TrainingFailedError as exc:
            first = (str(exc).strip().splitlines() or ["training failed"])[0]
            raise ClusterError(f"distributed training failed after {cfg.max_failures} "
                               f"restart(s) allowed: {first[:300]}") from None
        except (ray.exceptions.RayError, ConnectionError) as exc:
            # The cluster itself went away (head node down, GCS unreachable): the workers
            # are gone with it, the checkpoints in the storage are not.
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ClusterError(f"lost the Ray cluster during training ({first[:200]}); "
                               f"rerun with --name {name} --storage {storage} (on this "
                               "cluster once it is back, or on another) to resume from the "
                               "last checkpoint") from None
        seconds = time.perf_counter() - t0
        return {"metrics": result.metrics, "seconds": seconds, "storage": storage,
                "name": name, "checkpoint": result.checkpoint}
    finally:
        ray.shutdown()
