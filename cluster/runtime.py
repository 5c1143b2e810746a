"""Ray itself, for every Ray command: starting or joining an instance, and the one
``TorchTrainer`` that ``dcgan train-distributed`` runs and that a search trial with several
workers runs inside Tune."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from dcgan.checkpoint import KEEP_LATEST
from dcgan_cluster.worker import WorkerSpec


def print_once_per_line() -> None:
    """Call before building a TorchTrainer. Ray Train 2.60 patches ``print`` in its workers
    to log through a handler on stderr and also tees it to stdout, so every line of the
    worker loop reached the driver twice. An operator's own setting wins."""
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")


def init_ray(address: str | None, num_cpus: int | None = None) -> None:
    """Join the cluster at ``address``, or start a fresh local instance with ``num_cpus``
    logical CPUs. Local instances run the dashboard: it serves the State API that Ray
    Train's placement-group cleaner polls (without it, a warning every second); Ray picks a
    free port if 8265 is taken."""
    import ray

    from dcgan_cluster.network import SETUP_HOOK

    # DDP across hosts: every worker pins Gloo to its node's interface (Ray takes a setup
    # hook only in the job's runtime env; a submitted job's own env vars are merged in).
    runtime_env = {"worker_process_setup_hook": SETUP_HOOK}
    if address:
        ray.init(address=address, log_to_driver=True, runtime_env=runtime_env)
    else:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=True,
                 log_to_driver=True, runtime_env=runtime_env)


def torch_trainer(spec: WorkerSpec, *, workers: int, gpu: bool,
                  cpus_per_worker: float, gpus_per_worker: float = 1.0, name: str,
                  storage: str, max_failures: int, callbacks: Sequence[Any] = ()):
    """Ray Train over ``dcgan_cluster.worker.train_loop_per_worker``: DDP over gloo (CPUs) or
    NCCL (GPUs); after a worker fails, the group restarts from the newest checkpoint (at
    most ``max_failures`` times); rerunning with the same ``name`` and ``storage`` resumes."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from dcgan_cluster.worker import train_loop_per_worker

    print_once_per_line()
    per_worker = {"CPU": cpus_per_worker, **({"GPU": gpus_per_worker} if gpu else {})}
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=spec.as_loop_config(),
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpu,
                                     resources_per_worker=per_worker),
        run_config=RunConfig(name=name, storage_path=storage, callbacks=list(callbacks),
                             failure_config=FailureConfig(max_failures=max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=KEEP_LATEST)))
