"""``dcgan train-distributed``: the driver that starts (or joins) Ray and runs TorchTrainer.

Everything that can be wrong with the inputs (config, workers, batch split, address,
storage) is checked here, in seconds, before Ray starts anything.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from dcgan.checkpoint import load_state
from dcgan.config import TrainConfig
from dcgan.errors import ConfigError, RunDirError, first_line
from dcgan.layout import CONFIG_FILE, RAY_STATE_FILE, RAY_STORAGE_DIR
from dcgan.prepare import (
    MetricsAddress,
    check_target,
    holding,
    record_changes,
    remove_artifacts,
    request_config,
    saved_config,
)
from dcgan.trainer import check_locked_keys
from dcgan_cluster.preflight import (
    ClusterError,
    check_local_processes,
    check_ray_run,
    check_storage,
    decide_gpu,
    resolve_use_gpu,
)
from dcgan_cluster.worker import WorkerSpec


def train_distributed(run_dir: str | Path, workers: int, *, use_gpu: str = "auto",
                      address: str | None = None, storage: str | None = None,
                      name: str | None = None, config_path: str | None = None,
                      overrides: list[str] | None = None, cpus_per_worker: float | None = None,
                      gpus_per_worker: float = 1.0, metrics_host: str = "127.0.0.1",
                      metrics_port: int = 0, resume: bool = False,
                      overwrite: bool = False) -> dict:
    """``cpus_per_worker`` None: a local instance splits this machine's cores between the
    workers (torch then uses that many threads per worker); on a cluster, 1. An existing
    run is continued only with ``resume`` (its saved config, then --config and --set) and
    replaced only with ``overwrite``, as in ``dcgan train``."""
    started_at = time.time()
    metrics = MetricsAddress(metrics_host, metrics_port)
    run_dir = check_target(Path(run_dir).resolve(), metrics, request=(resume, overwrite))
    if workers < 1:
        raise ConfigError("--workers", f"must be >= 1 (got {workers})")
    name = name or run_dir.name
    storage = storage or str(run_dir / RAY_STORAGE_DIR)
    experiment = _local_experiment(storage, name)  # read only: nothing is created before Ray
    if not resume and not overwrite and experiment is not None and any(
            experiment.glob("checkpoint_*")):
        raise RunDirError(f"{storage} already holds checkpoints of run {name}; pass --resume "
                          "to continue it, --overwrite to replace it, or another --name")
    saved, state = None, None
    if resume:
        saved = saved_config(run_dir)
        if saved is None:
            raise RunDirError(f"nothing to resume: {run_dir} holds no {CONFIG_FILE}")
    cfg, changes = request_config(saved, config_path, overrides or [])
    if saved is not None:
        # Locked keys refused here, in a second, not on the workers. Against the saved
        # config.yaml: it holds the global batch (a state holds one worker's share).
        check_locked_keys(saved, cfg, str(run_dir / CONFIG_FILE))
        state = _latest_state(experiment)
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
    storage = check_storage(storage)
    plan = DistributedRun(cfg=cfg, run_dir=run_dir, workers=workers, gpu=gpu,
                          address=address, storage=storage, name=name,
                          cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus_per_worker,
                          started_at=started_at, metrics=metrics)

    def replace(path: Path) -> None:
        remove_artifacts(path)
        if experiment is not None and experiment.is_dir():  # the run's own Ray experiment
            shutil.rmtree(experiment)

    # The driver holds RUN_DIR for the whole run; rank 0 (maybe on another node) writes it.
    with holding(run_dir, "dcgan train-distributed", cfg, before=replace if overwrite else None):
        record_changes(run_dir, changes, state[1]["step"] if state is not None else None)
        return _run(plan)


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
    metrics: MetricsAddress


# How long the driver waits for a worker group the cluster cannot hold any more (a worker
# host left for good) before it stops the run with one line instead of waiting forever.
CAPACITY_WAIT_ENV = "DCGAN_CAPACITY_WAIT_S"
CAPACITY_WAIT_S = 120.0


class CapacityWatch:
    """While the run trains, checks every few seconds that the cluster's alive nodes still
    hold what the worker group needs. Ray Train would otherwise wait without end for the
    resources of a lost host; after ``DCGAN_CAPACITY_WAIT_S`` seconds short, this stops
    the run (``fired`` says why) by interrupting the driver's main thread."""

    def __init__(self, plan: DistributedRun, message, every_s: float = 2.0):
        self.need = {"CPU": plan.workers * plan.cpus_per_worker,
                     **({"GPU": plan.workers * plan.gpus_per_worker} if plan.gpu else {})}
        self.workers = plan.workers
        self.wait_s = float(os.environ.get(CAPACITY_WAIT_ENV) or CAPACITY_WAIT_S)
        self.every_s, self.message = every_s, message
        self.fired: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="capacity-watch",
                                        daemon=True)

    def __enter__(self) -> CapacityWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def short(self) -> str | None:
        import ray

        have = ray.cluster_resources()
        missing = {k: (have.get(k, 0.0), v) for k, v in self.need.items() if have.get(k, 0.0) < v}
        if not missing:
            return None
        return ", ".join(f"the cluster has {h:g} {k} for {self.workers} workers needing {n:g}"
                         for k, (h, n) in missing.items())

    def _watch(self) -> None:
        since = None
        while not self._stop.wait(self.every_s):
            try:
                why = self.short()
            except Exception:  # noqa: BLE001 - the GCS is unreachable: fit() reports that
                continue
            if why is None:
                since = None
                continue
            since = since or time.monotonic()
            if time.monotonic() - since >= self.wait_s:
                self.fired = f"{why} for {self.wait_s:g} s (a worker host left the cluster)"
                self._abort()
                return

    def _abort(self) -> None:
        """Ray Train's own SIGINT handler aborts the run gracefully (a real signal, not
        interrupt_main: it also ends a blocking wait in Ray's C++). A controller stuck
        waiting for the lost capacity may never answer it: then the driver says why in its
        one line and exits (its run lock is the kernel's and goes with it; every checkpoint
        is already complete in the storage)."""
        os.kill(os.getpid(), signal.SIGINT)
        if self._stop.wait(20):
            return
        print(f"error: {self.message(self.fired)}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(1)


def capacity_lost(why: str, storage: str, name: str) -> str:
    state = _latest_state(_local_experiment(storage, name))
    at = f" (latest checkpoint: step {state[1]['step']})" if state else ""
    return (f"worker capacity lost: {why}; the run stopped{at}; rerun the same command with "
            "--resume once the host is back (or with fewer --workers)")


def _run(plan: DistributedRun) -> dict:
    import ray

    from dcgan_cluster.metrics_hub import start_hub
    from dcgan_cluster.runtime import init_ray, torch_trainer

    cfg, name, storage = plan.cfg, plan.name, plan.storage
    t0 = time.perf_counter()
    # A local instance gets enough *logical* CPUs for every worker plus Ray Train's
    # controller, so that a 2-core machine cannot deadlock on resources.
    init_ray(plan.address, num_cpus=max(os.cpu_count() or 1,
                                        int(plan.workers * plan.cpus_per_worker) + 1))
    try:
        plan = dataclasses.replace(plan, gpu=decide_gpu(plan.gpu, cfg))
        hub = None
        if plan.metrics.port:
            hub, bound = start_hub(name, "distributed", cfg.to_dict(), plan.metrics.host,
                                   plan.metrics.port)
            print(f"Prometheus metrics of every worker on "
                  f"http://{plan.metrics.host}:{bound}/metrics")
        spec = WorkerSpec("train", cfg.to_dict(), threads=max(1, int(plan.cpus_per_worker)),
                          run_dir=str(plan.run_dir), started_at=plan.started_at,
                          metrics_hub=hub)
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
        ray.shutdown()
