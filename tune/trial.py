"""One trial of a search: the run assembly of every mode (``dcgan.assembly``), reporting to Tune.

``workers == 1``: the trial process trains itself, reporting through ``ray.tune.report``.
``workers > 1``: it runs the ``TorchTrainer`` of ``dcgan train-distributed``
(``dcgan_cluster.runtime``) with ``TuneReportCallback``, Ray's current Train-in-Tune pattern.
Either way, every ``report_every`` steps and at the end the trial scores its generator,
then reports ``trial_metrics`` (balance_score from the diagnostics, losses, accuracies, FID,
classes covered) with a full-state checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from dcgan.assembly import assemble
from dcgan.config import TrainConfig
from dcgan.device import resolve_device
from dcgan.losses import loss_defaults
from dcgan.trainer import Trainer
from dcgan_cluster.ray_store import RayStore
from dcgan_cluster.runtime import torch_trainer
from dcgan_cluster.worker import WorkerSpec
from dcgan_tune.objective import trial_metrics


def trial_config(base: dict[str, Any], params: dict[str, Any], report_every: int) -> TrainConfig:
    """The base config with a trial's hyperparameters; evaluation and checkpoints happen at
    report steps only."""
    return with_params(TrainConfig(**base), params).replace(
        checkpoint_every=0, eval_every=0, checkpoint_every_steps=report_every)


def with_params(base: TrainConfig, params: dict[str, Any]) -> TrainConfig:
    """The base config with a trial's values. A trial that switches loss starts from that
    loss's own defaults (WGAN-GP's Adam settings and critic steps), under its values: the
    trials and the best config written after the search both come from here."""
    if params.get("loss", base.loss) != base.loss:
        params = {**loss_defaults(params["loss"]), **params}
    return base.replace(**params)


@dataclass(frozen=True)
class TrialReport:
    """What a trial's rank 0 sends with each state. Picklable: Ray Train workers call it."""

    metric: str
    min_classes: int

    def __call__(self, trainer: Trainer) -> dict[str, Any]:
        return trial_metrics(trainer.stats.columns, trainer.stats.evals, self.metric,
                             self.min_classes, trainer.loss.profile)


def run_trial(params: dict[str, Any], *, base: dict[str, Any], workers: int, metric: str,
              min_classes: int, report_every: int, threads: int, use_gpu: bool, storage: str,
              feeds: tuple = ()) -> None:
    """``feeds``: the search's sinks (``dcgan.sinks``), fed by this trial."""
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    cfg = trial_config(base, params, report_every)
    for feed in feeds:
        feed.trial_config(trial_id, cfg.to_dict())
    report = TrialReport(metric, min_classes)
    if workers > 1:
        from ray.tune.integration.ray_train import TuneReportCallback

        torch_trainer(WorkerSpec("trial", cfg.to_dict(), threads=threads, feeds=feeds,
                                 trial=trial_id, quality_every_steps=report_every,
                                 report=report),
                      workers=workers, gpu=use_gpu, cpus_per_worker=threads,
                      # Same name on a rerun (--resume): Ray Train resumes this trial.
                      name=f"train-{trial_id}", storage=storage,
                      max_failures=cfg.max_failures,
                      callbacks=[TuneReportCallback()]).fit()
        return
    torch.set_num_threads(threads)
    store = RayStore("tune")
    # A checkpoint on --resume, or when PBT exploits another trial's state. The Trainer is
    # built from this trial's (possibly mutated) config: restoring the weights keeps its
    # learning rates, dropout and label smoothing.
    trainer = assemble(cfg, resolve_device(cfg), store, quality_every_steps=report_every,
                       report=report, feeds=feeds, trial=trial_id, restore=store.latest())
    trainer.fit()
