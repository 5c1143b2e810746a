"""One trial of a search: the same ``Trainer`` as every other mode, reporting to Tune.

``workers == 1``: the trial process trains itself. ``workers > 1``: it runs a TorchTrainer
(the Ray Train worker loop of ``dcgan train-distributed``) with ``TuneReportCallback``,
Ray's current Train-in-Tune pattern. Either way every ``report_every`` steps and at the end
the trial evaluates its generator, then reports ``trial_metrics`` (balance_score from the
diagnostics, losses, accuracies, FID, classes covered) with a full-state checkpoint.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from dcgan.callbacks import Checkpointer, record_quality
from dcgan.checkpoint import load_state, save_torch, with_header
from dcgan.config import TrainConfig
from dcgan.trainer import Callback, Trainer
from tune.objective import trial_metrics

STATE_FILE = "state.pt"


def trial_config(base: dict[str, Any], params: dict[str, Any], report_every: int) -> TrainConfig:
    """The base config with a trial's hyperparameters; evaluation and checkpoints happen at
    report steps only."""
    return TrainConfig(**base).replace(**params, checkpoint_every=0, eval_every=0,
                                       checkpoint_every_steps=report_every)


def report_metrics(metric: str, min_classes: int) -> Callable[[Trainer], dict[str, Any]]:
    def metrics(trainer: Trainer) -> dict[str, Any]:
        return {"step": trainer.step, "epoch": trainer.step / trainer.batches_per_epoch,
                **trial_metrics(trainer.stats.columns, trainer.stats.evals, metric,
                                min_classes)}
    return metrics


class StepQuality(Callback):
    """Evaluates sample quality at report steps (before the checkpointer reports)."""

    def __init__(self, meter, every: int):
        self.meter, self.every = meter, every

    def on_step_end(self, trainer: Trainer) -> None:
        if trainer.step % self.every == 0 or trainer.step >= trainer.total_steps:
            trainer.flush()
            record_quality(trainer, self.meter)


class TuneCheckpointer(Checkpointer):
    """Reports each full state with the trial's metrics to Tune (``tune.report``)."""

    def __init__(self, metrics: Callable[[Trainer], dict[str, Any]]):
        super().__init__(Path("."), writes_files=False)
        self.metrics = metrics

    def persist(self, trainer: Trainer, state: dict) -> Path | None:
        from ray import tune

        with tempfile.TemporaryDirectory() as tmp:
            save_torch(with_header(state), Path(tmp) / STATE_FILE)
            tune.report(self.metrics(trainer), checkpoint=tune.Checkpoint.from_directory(tmp))
        return None


def run_trial(params: dict[str, Any], *, base: dict[str, Any], workers: int, metric: str,
              min_classes: int, report_every: int, threads: int, use_gpu: bool, storage: str,
              hub: Any = None) -> None:
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    cfg = trial_config(base, params, report_every)
    if hub is not None:
        hub.set_config.remote(trial_id, cfg.to_dict())
    report = {"metric": metric, "min_classes": min_classes, "every": report_every,
              "trial": trial_id}
    if workers == 1:
        _train_here(cfg, report, threads, hub)
    else:
        _train_with_workers(cfg, report, threads, use_gpu, workers, storage, hub)


def _train_here(cfg: TrainConfig, report: dict[str, Any], threads: int, hub: Any) -> None:
    from ray import tune

    from cluster.metrics_hub import hub_pusher
    from dcgan.data import load_mnist
    from dcgan.device import resolve_device
    from dcgan.metrics import MetricsCallback
    from dcgan.quality import build_meter

    torch.set_num_threads(threads)
    device = resolve_device(cfg)
    images, _ = load_mnist(cfg.data_dir, subset=cfg.train_subset)
    callbacks: list[Callback] = [
        StepQuality(build_meter(cfg.data_dir, device), report["every"]),
        TuneCheckpointer(report_metrics(report["metric"], report["min_classes"]))]
    if hub is not None:
        callbacks.append(MetricsCallback(hub_pusher(hub), trial=report["trial"]))
    trainer = Trainer(cfg, images, device, callbacks=callbacks)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:  # --resume, or PBT exploiting another trial's state
        with checkpoint.as_directory() as directory:
            state = load_state(Path(directory) / STATE_FILE)
        # The Trainer was built from this trial's (possibly mutated) config: restoring the
        # weights keeps its learning rates, dropout and label smoothing.
        trainer.load_state_dict(state, source="tune checkpoint")
    trainer.fit()


def _train_with_workers(cfg: TrainConfig, report: dict[str, Any], threads: int,
                        use_gpu: bool, workers: int, storage: str, hub: Any) -> None:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from cluster.worker import print_once_per_line, train_loop_per_worker

    print_once_per_line()
    global_batch = cfg.batch_size
    if global_batch % workers:
        raise ValueError(f"batch_size {global_batch} does not divide over {workers} workers")
    per_worker = {"CPU": threads, **({"GPU": 1} if use_gpu else {})}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": cfg.to_dict(),
                           "run_dir": str(Path(storage) / report["trial"]),
                           "threads": threads, "tune": report, "metrics_hub": hub},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                     resources_per_worker=per_worker),
        # Same name on a rerun (--resume): Ray Train resumes from this trial's checkpoint.
        run_config=RunConfig(name=f"train-{report['trial']}", storage_path=storage,
                             callbacks=[TuneReportCallback()],
                             failure_config=FailureConfig(max_failures=cfg.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)))
    trainer.fit()
