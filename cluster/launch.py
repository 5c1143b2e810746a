"""``dcgan train-distributed``: the driver that starts (or joins) Ray and runs TorchTrainer.

Everything that can be wrong with the inputs (config, workers, batch split, address,
storage) is checked here, in seconds, before Ray starts anything.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dcgan.checkpoint import load_state
from dcgan.config import TrainConfig
from dcgan.errors import ConfigError, RunDirError, first_line
from dcgan.layout import CONFIG_FILE, RAY_STATE_FILE, RAY_STORAGE_DIR
from dcgan.prepare import Previous, open_run, remove_artifacts, saved_config
from dcgan.sinks import RunInfo, Sink, open_sinks
from dcgan.trainer import check_locked_keys
from dcgan_cluster.driver_actor import on_driver_node
from dcgan_cluster.preflight import (
    ClusterError,
    check_local_processes,
    check_ray_run,
    check_storage,
    decide_gpu,
    resolve_use_gpu,
)
from dcgan_cluster.watchdog import CapacityWatch
from dcgan_cluster.worker import WorkerSpec


def train_distributed(run_dir: str | Path, workers: int, *, use_gpu: str = "auto",
                      address: str | None = None, storage: str | None = None,
                      name: str | None = None, config_path: str | None = None,
                      overrides: list[str] | None = None, cpus_per_worker: float | None = None,
                      gpus_per_worker: float = 1.0, sinks: Sequence[Sink] = (),
                      resume: bool = False,
                      overwrite: bool = False) -> dict:
    """``cpus_per_worker`` None: a local instance splits this machine's cores between the
    workers (torch then uses that many threads per worker); on a cluster, 1. An existing
    run is continued only with ``resume`` (its saved config, then --config and --set) and
    replaced only with ``overwrite``, as in ``dcgan train``."""
    started_at = time.time()
    run_dir = Path(run_dir).resolve()
    name = name or run_dir.name
    storage = storage or str(run_dir / RAY_STORAGE_DIR)
    experiment = _local_experiment(storage, name)  # read only: nothing is created before Ray

    def previous(run_dir: Path) -> Previous:
        saved = saved_config(run_dir)
        if saved is None:
            raise RunDirError(f"nothing to resume: {run_dir} holds no {CONFIG_FILE}")
        state = _latest_state(experiment)
        # Its config.yaml, not the state's config: it holds the global batch (a state holds
        # one worker's share).
        return Previous(saved, state[1]["step"] if state is not None else None)

    def check(cfg: TrainConfig, before: Previous | None) -> DistributedRun:
        if workers < 1:
            raise ConfigError("--workers", f"must be >= 1 (got {workers})")
        if not resume and not overwrite and experiment is not None and any(
                experiment.glob("checkpoint_*")):
            raise RunDirError(f"{storage} already holds checkpoints of run {name}; pass "
                              "--resume to continue it, --overwrite to replace it, or another "
                              "--name")
        if before is not None:  # locked keys refused here, in a second, not on the workers
            check_locked_keys(before.config, cfg, str(run_dir / CONFIG_FILE))
        if cfg.device not in ("auto", "cpu", "cuda"):
            raise ConfigError("device", "distributed mode places workers itself: use auto, "
                                        "cpu or cuda (or --use-gpu)")
        gpu = resolve_use_gpu(use_gpu) if cfg.device == "auto" else cfg.device == "cuda"
        where = address or os.environ.get("RAY_ADDRESS")
        if not where:
            check_local_processes(workers, "--workers")
        cfg = check_ray_run(cfg, workers, gpu, where)
        cpus = cpus_per_worker
        if cpus is None:
            cpus = 1.0 if where else float(max(1, (os.cpu_count() or 1) // workers))
        if cpus <= 0:
            raise ConfigError("--cpus-per-worker", f"must be > 0 (got {cpus})")
        return DistributedRun(cfg=cfg, run_dir=run_dir, workers=workers, gpu=gpu,
                              address=where, storage=check_storage(storage), name=name,
                              cpus_per_worker=cpus, gpus_per_worker=gpus_per_worker,
                              started_at=started_at, sinks=tuple(sinks))

    def replace(path: Path) -> None:
        remove_artifacts(path)
        if experiment is not None and experiment.is_dir():  # the run's own Ray experiment
            shutil.rmtree(experiment)

    # The driver holds RUN_DIR for the whole run; rank 0 (maybe on another node) writes it.
    with open_run(run_dir, "dcgan train-distributed", resume=resume, overwrite=overwrite,
                  previous=previous, check=check, config_path=config_path,
                  overrides=overrides, sinks=sinks, replace=replace) as run:
        return _run(run.ready)


def _local_experiment(storage: str, name: str) -> Path | None:
    """Ray Train's folder of this run in the storage, when the storage is a local path."""
    return None if "://" in storage else Path(storage) / name


def _latest_state(experiment: Path | None) -> tuple[str, dict] | None:
    """The newest full state Ray Train kept for the run (local storage only)."""
    if experiment is None:
        return None
    found = sorted(experiment.glob(f"checkpoint_*/{RAY_STATE_FILE}"))
    if not found:
        return None
    return str(found[-1]), load_state(found[-1])


@dataclass(frozen=True)
class DistributedRun:
    """A checked ``dcgan train-distributed`` request."""

    cfg: TrainConfig
    run_dir: Path
    workers: int
    gpu: bool | None  # None: --use-gpu auto, decided from the cluster once Ray is up
    address: str | None
    storage: str
    name: str
    cpus_per_worker: float
    gpus_per_worker: float
    started_at: float
    sinks: tuple[Sink, ...]


def capacity_lost(why: str, storage: str, name: str) -> str:
    state = _latest_state(_local_experiment(storage, name))
    at = f" (latest checkpoint: step {state[1]['step']})" if state else ""
    return (f"worker capacity lost: {why}; the run stopped{at}; rerun the same command with "
            "--resume once the host is back (or with fewer --workers)")


def _run(plan: DistributedRun) -> dict:
    import ray

    from dcgan_cluster.runtime import init_ray, torch_trainer

    cfg, name, storage = plan.cfg, plan.name, plan.storage
    t0 = time.perf_counter()
    # A local instance gets enough *logical* CPUs for every worker plus Ray Train's
    # controller, so that a 2-core machine cannot deadlock on resources.
    init_ray(plan.address, num_cpus=max(os.cpu_count() or 1,
                                        int(plan.workers * plan.cpus_per_worker) + 1))
    stack = contextlib.ExitStack()  # the sinks opened for the run
    try:
        plan = dataclasses.replace(plan, gpu=decide_gpu(plan.gpu, cfg))
        feeds = open_sinks(plan.sinks, RunInfo(name, "distributed", cfg.to_dict(),
                                               host=on_driver_node), stack)
        spec = WorkerSpec("train", cfg.to_dict(), threads=max(1, int(plan.cpus_per_worker)),
                          run_dir=str(plan.run_dir), started_at=plan.started_at, feeds=feeds)
        trainer = torch_trainer(spec, workers=plan.workers, gpu=plan.gpu,
                                cpus_per_worker=plan.cpus_per_worker,
                                gpus_per_worker=plan.gpus_per_worker, name=name,
                                storage=storage, max_failures=cfg.max_failures)
        watch = CapacityWatch(plan, lambda why: capacity_lost(why, storage, name))
        try:
            with watch:
                try:
                    result = trainer.fit()
                except (KeyboardInterrupt, SystemExit):
                    if not watch.fired:
                        raise
        except ray.train.TrainingFailedError as exc:
            if not watch.fired:
                raise ClusterError(f"distributed training failed after {cfg.max_failures} "
                                   f"restart(s) allowed: "
                                   f"{first_line(exc, 'training failed', 300)}; rerun with "
                                   f"--resume to continue from the last checkpoint") from None
        except (ray.exceptions.RayError, ConnectionError) as exc:
            if not watch.fired:
                # The cluster itself went away (head node down, GCS unreachable): the
                # workers are gone with it, the checkpoints in the storage are not.
                raise ClusterError(f"lost the Ray cluster during training ({first_line(exc)}); "
                                   f"rerun with --resume --name {name} --storage {storage} (on "
                                   "this cluster once it is back, or on another) to resume from "
                                   "the last checkpoint") from None
        if watch.fired:  # however Ray Train ended the aborted run
            raise ClusterError(capacity_lost(watch.fired, storage, name)) from None
        seconds = time.perf_counter() - t0
        return {"metrics": result.metrics, "seconds": seconds, "storage": storage,
                "name": name, "checkpoint": result.checkpoint}
    finally:
        stack.close()
        ray.shutdown()
