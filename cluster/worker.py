"""What runs inside each Ray Train worker: the same ``Trainer`` as local mode, with DDP
wrapping, a data shard, rank-averaged statistics and rank-0-only side effects injected."""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from cluster.metrics_hub import hub_pusher
from dcgan.callbacks import Checkpointer
from dcgan.checkpoint import load_state, save_torch, with_header
from dcgan.config import TrainConfig
from dcgan.data import load_mnist
from dcgan.io import atomic_write_text
from dcgan.metrics import MetricsCallback
from dcgan.run import file_writing_callbacks
from dcgan.trainer import Callback, Trainer

STATE_FILE = "state.pt"
TIMING_FILE = "dcgan_timing.json"


def print_once_per_line() -> None:
    """Call before building a TorchTrainer. Ray Train 2.60 patches ``print`` in its workers
    to log through a handler on stderr and also tees it to stdout, so every line of the
    worker loop reached the driver twice. An operator's own setting wins."""
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")


def use_sync_batchnorm(cfg: TrainConfig, device: torch.device) -> bool:
    # PyTorch's SyncBatchNorm only works on GPU modules.
    return device.type == "cuda" and cfg.sync_batchnorm != "false"


def make_wrapper(device: torch.device, sync_bn: bool):
    """DDP for one network. ``forward_sync_buffers=False`` (PyTorch 2.14's name for
    ``broadcast_buffers=False``, which now warns): D runs two forwards (real, fake) before
    its backward, which a buffer broadcast in forward turns into an in-place error
    (DESIGN.md section 3). Buffers are synced once at construction, when every rank holds
    the same initial weights anyway; after that BatchNorm statistics stay per rank, or are
    synchronised across ranks by SyncBatchNorm on GPUs."""
    from ray.train.torch import prepare_model

    def wrap(module: nn.Module) -> nn.Module:
        if sync_bn:
            module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
        return prepare_model(module, move_to_device=False,
                             parallel_strategy_kwargs={"forward_sync_buffers": False})

    return wrap


def _mean_over_ranks(metrics: torch.Tensor) -> torch.Tensor:
    metrics = metrics.clone()
    dist.all_reduce(metrics, op=dist.ReduceOp.SUM)
    return metrics / dist.get_world_size()


class RayCheckpointer(Checkpointer):
    """Reports full states to Ray Train (a barrier: every rank calls it the same number of
    times). Rank 0 puts the state in the checkpoint; Ray keeps it under the run's storage.
    ``metrics`` (rank 0, in a search) adds the trial's metrics to the report."""

    def __init__(self, run_dir: Path, write=print, writes_files: bool = True,
                 metrics: Callable[[Trainer], dict] | None = None):
        super().__init__(run_dir, write, writes_files)
        self.metrics = metrics

    def persist(self, trainer: Trainer, state: dict) -> Path | None:
        import ray.train

        metrics = {"step": trainer.step, "epoch": trainer.step / trainer.batches_per_epoch}
        if self.metrics is not None:
            metrics.update(self.metrics(trainer))
        if not self.writes_files:
            ray.train.report(metrics, checkpoint=None)
            return None
        with tempfile.TemporaryDirectory() as tmp:
            save_torch(with_header(state), Path(tmp) / STATE_FILE)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        return Path(f"ray checkpoint at step {trainer.step}")


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


def _trial_callbacks(cfg: TrainConfig, device: torch.device, search: dict,
                     is_writer: bool, trial_dir: Path) -> list[Callback]:
    """A Tune trial's worker: rank 0 evaluates at report steps and attaches the metrics
    and the state; ``TuneReportCallback`` forwards rank 0's report to Tune."""
    from dcgan.quality import build_meter
    from tune.trial import StepQuality, report_metrics

    if not is_writer:
        return [RayCheckpointer(trial_dir, print, writes_files=False)]
    trial_dir.mkdir(parents=True, exist_ok=True)  # the stats file goes here
    meter = build_meter(cfg.data_dir, device)
    return [StepQuality(meter, search["every"]),
            RayCheckpointer(trial_dir, print, writes_files=True,
                            metrics=report_metrics(search["metric"], search["min_classes"]))]


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    torch.set_num_threads(config.get("threads", 1))  # the CPUs Ray reserved for this worker
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    global_cfg = TrainConfig(**config["config"])
    cfg = global_cfg.replace(batch_size=global_cfg.batch_size // world)
    run_dir = Path(config["run_dir"])
    is_writer = rank == 0
    sync_bn = use_sync_batchnorm(cfg, device)

    images, _ = load_mnist(cfg.data_dir, subset=cfg.train_subset)
    search = config.get("tune")  # a Tune trial: report its metrics, write no run files
    if search:
        callbacks = _trial_callbacks(cfg, device, search, is_writer, run_dir)
    else:
        # Every rank reports checkpoints (a barrier); rank 0 alone writes RUN_DIR.
        checkpointer = RayCheckpointer(run_dir, print, writes_files=is_writer)
        callbacks = ([StartupTimer(run_dir, config.get("started_at")),
                      *file_writing_callbacks(run_dir, cfg, device, print, checkpointer)]
                     if is_writer else [checkpointer])
    if config.get("metrics_hub") is not None:  # every rank reports its own series
        callbacks.append(MetricsCallback(hub_pusher(config["metrics_hub"]),
                                         trial=search["trial"] if search else ""))

    trainer = Trainer(cfg, images, device, callbacks=callbacks, rank=rank,
                      world_size=world, wrap_model=make_wrapper(device, sync_bn),
                      reduce_metrics=_mean_over_ranks)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = load_state(Path(directory) / STATE_FILE)
        # Only rank 0's RNG states are saved; the others reseed from (seed, rank, step).
        trainer.load_state_dict(state, source="ray checkpoint", restore_rng=is_writer)
        if is_writer:
            print(f"Restored from the checkpoint at step {trainer.step}")
    if is_writer:
        print(f"Worker group: {world} worker(s) on {device.type}, batch {cfg.batch_size} per "
              f"worker ({global_cfg.batch_size} global), SyncBatchNorm "
              f"{'on' if sync_bn else 'off (CPU workers: per-rank BatchNorm statistics)'}")
    trainer.fit()
