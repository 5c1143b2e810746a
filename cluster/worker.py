"""What runs inside each Ray Train worker: the run assembly of every mode
(``dcgan.assembly``), placed at this worker's rank with DDP wrapping, a data shard,
rank-averaged statistics, Ray checkpoints, and rank-0-only side effects.

Every worker gets one ``WorkerSpec`` (Ray Train's loop config holds it under ``"spec"``),
which says what kind of run this is: ``mode="train"`` (``dcgan train-distributed``: rank 0
writes ``run_dir``) or ``mode="trial"`` (a search trial with several workers: rank 0 scores
every ``quality_every_steps`` and sends ``report``'s metrics, nobody writes files).
``report`` is any picklable callable of the trainer; this module does not know who sends it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import nn

from dcgan.assembly import Placement, assemble
from dcgan.config import TrainConfig
from dcgan.io import atomic_write_text
from dcgan.layout import TIMING_FILE, WORKERS_FILE
from dcgan.trainer import Callback, Trainer
from dcgan_cluster.ray_store import RayStore


@dataclass(frozen=True)
class WorkerSpec:
    """What every worker of one Ray Train run is told. Picklable: Ray ships it to each."""

    mode: Literal["train", "trial"]
    config: dict[str, Any]  # the global TrainConfig as a dict (workers split the batch)
    threads: int = 1  # torch threads per worker: the CPUs Ray reserved for it
    run_dir: str | None = None  # mode "train": the directory rank 0 writes
    started_at: float | None = None  # mode "train": when the command started (start-up time)
    feeds: tuple = ()  # the sinks' feeds (dcgan.sinks): Prometheus's hub, if metrics are on
    trial: str = ""  # mode "trial": the Tune trial id (a metrics label)
    quality_every_steps: int = 0  # mode "trial": evaluate at report steps
    report: Any = None  # mode "trial": a picklable callable(trainer) -> metrics

    def __post_init__(self) -> None:
        if self.mode == "train" and self.run_dir is None:
            raise ValueError("a distributed training run needs its run_dir")
        if self.mode == "trial" and (self.report is None or self.run_dir is not None):
            raise ValueError("a search trial reports its metrics and writes no run_dir")

    def as_loop_config(self) -> dict[str, Any]:
        return {"spec": self}


def use_sync_batchnorm(cfg: TrainConfig, device: torch.device) -> bool:
    # PyTorch's SyncBatchNorm only works on GPU modules.
    return device.type == "cuda" and cfg.sync_batchnorm != "false"


def make_wrapper(device: torch.device, sync_bn: bool):
    """DDP for one network. ``forward_sync_buffers=False`` (PyTorch 2.14's name for
    ``broadcast_buffers=False``, which now warns): D runs two forwards (real, fake) before
    its backward, which a buffer broadcast in forward turns into an in-place error
    (pytorch/pytorch#175024). Buffers are synced once at construction, when every rank holds
    the same initial weights anyway; after that BatchNorm statistics stay per rank, or are
    synchronised across ranks by SyncBatchNorm on GPUs."""
    from ray.train.torch import prepare_model

    def wrap(module: nn.Module) -> nn.Module:
        if sync_bn:
            module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
        return prepare_model(module, move_to_device=False,
                             parallel_strategy_kwargs={"forward_sync_buffers": False})

    return wrap


def mean_over_ranks(values: torch.Tensor) -> torch.Tensor:
    values = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values / dist.get_world_size()


class StartupTimer(Callback):
    """Logs (and writes to ``TIMING_FILE``) how long after the command started the first
    training step finished: Ray start, worker placement, process group, data loading."""

    def __init__(self, run_dir: Path, started_at: float | None):
        self.run_dir, self.started_at, self.done = run_dir, started_at, False

    def on_step_end(self, trainer: Trainer) -> None:
        if self.done or self.started_at is None:
            return
        self.done = True
        seconds = time.time() - self.started_at
        print(f"First training step done {seconds:.1f}s after the command started")
        atomic_write_text(self.run_dir / TIMING_FILE,
                          json.dumps({"start_to_first_step_s": seconds}) + "\n")


def worker_group() -> list[dict[str, Any]]:
    """Where every rank of this worker group runs (a collective: every rank calls it)."""
    import os
    import socket

    from dcgan_cluster.network import node_ip

    me = {"rank": dist.get_rank(), "node_ip": node_ip(), "hostname": socket.gethostname(),
          "pid": os.getpid(), "gloo_interface": os.environ.get("GLOO_SOCKET_IFNAME")}
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, me)
    return everyone


def record_worker_group(run_dir: Path, step: int, workers: list[dict[str, Any]]) -> None:
    """Append this group (the first, or one restarted after a failure) to ``WORKERS_FILE``:
    the run's record of which hosts trained it from which step."""
    path = run_dir / WORKERS_FILE
    try:
        groups = json.loads(path.read_text())["groups"] if step > 0 else []
    except (OSError, ValueError, KeyError, TypeError):
        groups = []
    groups.append({"from_step": step, "started": time.time(), "workers": workers})
    atomic_write_text(path, json.dumps({"groups": groups}, indent=2) + "\n")


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    spec: WorkerSpec = config["spec"]
    torch.set_num_threads(spec.threads)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    global_cfg = TrainConfig(**spec.config)
    cfg = global_cfg.replace(batch_size=global_cfg.batch_size // world)
    sync_bn = use_sync_batchnorm(cfg, device)
    placement = Placement(rank, world, make_wrapper(device, sync_bn), mean_over_ranks)
    run_dir = Path(spec.run_dir) if spec.mode == "train" else None
    timer = ([StartupTimer(run_dir, spec.started_at)]
             if placement.leads and run_dir is not None else [])
    store = RayStore("train", attach=placement.leads)
    restore = store.latest()
    trainer = assemble(
        cfg, device, store, placement=placement, run_dir=run_dir,
        quality_every_steps=spec.quality_every_steps, report=spec.report,
        resume_hint="Rerun the same command with --resume to continue.",
        feeds=spec.feeds, trial=spec.trial, callbacks=timer, restore=restore)
    workers = worker_group() if world > 1 else None
    if placement.leads:
        if restore is not None:
            print(f"Restored from the checkpoint at step {trainer.step}")
        hosts = (", ".join(f"rank {w['rank']} on {w['node_ip']}" for w in workers)
                 if workers else "")
        print(f"Worker group: {world} worker(s) on {device.type}, batch {cfg.batch_size} per "
              f"worker ({global_cfg.batch_size} global), SyncBatchNorm "
              f"{'on' if sync_bn else 'off (CPU workers: per-rank BatchNorm statistics)'}"
              + (f"; {hosts}" if hosts else ""))
        if run_dir is not None and workers:
            record_worker_group(run_dir, trainer.step, workers)
    trainer.fit()
