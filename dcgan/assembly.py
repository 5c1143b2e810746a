"""One run assembly for every mode: config -> data -> ``Trainer`` with its callbacks -> restore.

Local mode (``dcgan.run``), each Ray Train worker (``dcgan_cluster.worker``) and each Tune
trial (``dcgan_tune.trial``) call ``assemble``. What differs between them is passed in, never
copied:

* ``Placement``: this process's rank, the DDP wrapper, the averaging of stats over ranks;
* a ``StateStore``: where full states go (the run directory, or a Ray Train / Tune report);
* ``run_dir``: the directory this process writes (local mode, rank 0 of a distributed run),
  or None (other ranks, search trials: they write nothing);
* ``quality_every_steps`` and ``report``: a search trial scores its generator at report
  steps and sends its metrics with each state;
* ``feeds``: the sinks a command line asked for (``dcgan.sinks``: Prometheus), fed by every
  rank after the mode's own callbacks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dcgan.callbacks import (
    Checkpointer,
    ConsoleLogger,
    FinalArtifacts,
    SampleWriter,
    StatsWriter,
    WeightFiles,
)
from dcgan.checkpoint import StateStore
from dcgan.config import TrainConfig
from dcgan.data import load_mnist
from dcgan.quality import build_meter
from dcgan.report import DiagnosticsReporter
from dcgan.selection import QualityEvaluator
from dcgan.sinks import Feed
from dcgan.step import StepFn, gan_step
from dcgan.trainer import Callback, Trainer


@dataclass(frozen=True)
class Placement:
    """Where this process sits in its run. The defaults: the only process (local mode, a
    one-process search trial)."""

    rank: int = 0
    world_size: int = 1
    wrap_model: Callable[[nn.Module], nn.Module] | None = None  # DDP in distributed mode
    reduce_stats: Callable[[torch.Tensor], torch.Tensor] | None = None  # mean over ranks

    @property
    def leads(self) -> bool:
        """Rank 0: the one process that writes files, scores quality and talks to the user."""
        return self.rank == 0


def mode_callbacks(cfg: TrainConfig, device: torch.device, store: StateStore, *,
                   placement: Placement, run_dir: Path | None, write: Callable[[str], None],
                   quality_every_steps: int, report: Callable[[Trainer], dict] | None,
                   resume_hint: str) -> list[Callback]:
    """The side effects of one process, in the order they must run: quality before the
    checkpoint that keeps it, stats after the checkpoint they must agree with, diagnostics
    after both. Builds the quality meter now, so that its inputs fail early."""
    if not placement.leads:
        return [Checkpointer(store)]  # every rank reports states (a barrier); none writes
    # A search trial always scores (at report steps); a run every eval_every epochs, if at all.
    scores = run_dir is None or bool(cfg.eval_every)
    quality = ([QualityEvaluator(build_meter(cfg.data_dir, device), run_dir,
                                 write if run_dir is not None else None,
                                 every_steps=quality_every_steps, keep=cfg.rescore_top)]
               if scores else [])
    if run_dir is None:  # a search trial: scores and reports, writes nothing
        return [*quality, Checkpointer(store, report=report)]
    return [ConsoleLogger(write), SampleWriter(run_dir, cfg.sample_every), *quality,
            WeightFiles(run_dir), Checkpointer(store, write, report, resume_hint),
            StatsWriter(run_dir), DiagnosticsReporter(run_dir, write), FinalArtifacts(run_dir)]


def assemble(cfg: TrainConfig, device: torch.device, store: StateStore, *,
             placement: Placement = Placement(), run_dir: Path | None = None,
             write: Callable[[str], None] = print, quality_every_steps: int = 0,
             report: Callable[[Trainer], dict] | None = None, resume_hint: str = "",
             feeds: Sequence[Feed] = (), trial: str = "",
             callbacks: Sequence[Callback] = (), step_fn: StepFn = gan_step,
             restore: tuple[str, dict[str, Any]] | None = None) -> Trainer:
    """A ``Trainer`` ready to ``fit``: MNIST loaded, this mode's callbacks (after the given
    ``callbacks``), and, with ``restore`` (where from, full state), the state restored. Only
    the rank that saved a state gets its RNG states back; the others reseed per rank.
    Touches no file: what can fail on bad input fails before the run directory changes."""
    images, _ = load_mnist(cfg.data_dir, train=True, subset=cfg.train_subset)
    own = mode_callbacks(cfg, device, store, placement=placement, run_dir=run_dir, write=write,
                         quality_every_steps=quality_every_steps, report=report,
                         resume_hint=resume_hint)
    every = [*callbacks, *own]
    every += [feed.callback(trial) for feed in feeds]  # every rank reports its own series
    trainer = Trainer(cfg, images, device, callbacks=every, rank=placement.rank,
                      world_size=placement.world_size, wrap_model=placement.wrap_model,
                      step_fn=step_fn, reduce_stats=placement.reduce_stats)
    if restore is not None:
        source, state = restore
        trainer.load_state_dict(state, source=source, restore_rng=placement.leads)
    return trainer
