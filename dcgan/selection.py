"""Model selection: which generator of a run is its best, and how that is decided.

At every evaluation the generator and its moving average are scored (``record_quality``,
rows in the stats' evaluations). ``ModelSelection`` keeps the weights of the lowest-FID one
so far (``best``) and of the ``rescore_top`` lowest-FID evaluations (``candidates``); when a
run completes, the candidates are scored again with ``rescore_samples`` images, since at
``eval_samples`` images the ranking of close candidates is noise, and the winner becomes the
best generator. Its state travels in the run's checkpoint under ``SELECTION_KEY``, so that a
resumed run, or a search trial (which writes no files), still hands back its best generator
and not its last: ``best_weights`` reads it back for ``dcgan tune``.

``QualityEvaluator`` is the callback that drives it during training; with a run directory it
also writes the evaluations (``EVAL_FILE``), the best generator (``BEST_GENERATOR``, a plain
state dict) with ``BEST_INFO`` beside it, and its samples (``BEST_SAMPLES``).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from dcgan.checkpoint import SELECTION_KEY, save_torch, state_cpu
from dcgan.generation import generate, sample, save_grid
from dcgan.io import atomic_write_text
from dcgan.layout import BEST_GENERATOR, BEST_INFO, BEST_SAMPLES, EVAL_FILE
from dcgan.quality import quality_summary
from dcgan.stats import best_overall, write_evals_parquet
from dcgan.trainer import Callback, Outcome, StopRequested, Trainer, derive_seed

# What BEST_INFO copies from the chosen evaluation's row.
INFO_KEYS = ("step", "epoch", "generator", "fid", "inception_score", "classes_covered",
             "largest_class_fraction", "mean_confidence", "n")

Weights = dict[str, torch.Tensor]


def averaged_generator(trainer: Trainer) -> torch.nn.Module:
    """The EMA generator with BatchNorm statistics of its own (seeded by the step: the same
    weights give the same file on a resumed run)."""
    return trainer.ema.averaged_generator(
        trainer.generator, derive_seed(trainer.cfg.seed, "ema-bn", trainer.step))


def record_quality(trainer: Trainer, meter) -> list[tuple[dict, torch.nn.Module]]:
    """Score ``eval_samples`` images of the generator, and of its moving average when there
    is one, from the same noise; append one row per generator to the stats' evaluations
    (once per step). Returns the new rows with their generators. Leaves the training RNGs
    untouched."""
    evals = trainer.stats.evals
    if evals and evals[-1]["step"] == trainer.step:
        return []
    cfg = trainer.cfg
    generators = [("raw", trainer.generator)]
    if trainer.ema is not None:
        generators.append(("ema", averaged_generator(trainer)))
    epochs = round(trainer.step / trainer.batches_per_epoch, 4)
    new = []
    for name, generator in generators:
        quality = meter.measure(sample(generator, cfg.eval_samples,
                                       derive_seed(cfg.seed, "eval")))
        row = {"step": trainer.step, "epoch": epochs, "generator": name,
               "time": round(trainer.elapsed(), 3), **quality.to_dict()}
        evals.append(row)
        new.append((row, generator))
    return new


class ModelSelection:
    """The run's best generator and the candidates for its final choice (CPU weights)."""

    def __init__(self, keep: int):
        self.keep = max(keep, 1)
        self.best: Weights | None = None
        self.candidates: list[dict[str, Any]] = []  # {"row": evaluation, "weights": ...}

    def consider(self, new: list[tuple[dict, torch.nn.Module]], best_fid: float | None
                 ) -> dict | None:
        """Take one evaluation's rows with their generators; ``best_fid``: the lowest FID
        evaluated before them. Returns the row that became the best generator, if one did."""
        if not new:
            return None
        row, generator = min(new, key=lambda pair: pair[0]["fid"])
        improved = best_fid is None or row["fid"] < best_fid
        if improved:
            self.best = state_cpu(generator)
        for r, g in new:
            worst = max((c["row"]["fid"] for c in self.candidates), default=float("inf"))
            if len(self.candidates) < self.keep or r["fid"] < worst:
                self.candidates.append({"row": dict(r), "weights": state_cpu(g)})
                self.candidates.sort(key=lambda c: c["row"]["fid"])
                del self.candidates[self.keep:]
        return row if improved else None

    def rescore(self, measure: Callable[[torch.nn.Module], dict], template: torch.nn.Module
                ) -> tuple[dict, dict, list[dict]] | None:
        """Score every candidate again (``measure``: a generator -> its quality dict) and make
        the lowest FID the best generator. Returns (its row, its new quality, every
        candidate's rescoring), or None with fewer than two candidates. ``template``: a
        generator of the right shape to load the weights into (copied, left untouched)."""
        if len(self.candidates) < 2:
            return None
        generator = copy.deepcopy(template)
        scored = []
        for candidate in self.candidates:
            generator.load_state_dict(candidate["weights"])
            scored.append((measure(generator), candidate))
        quality, winner = min(scored, key=lambda pair: pair[0]["fid"])
        self.best = winner["weights"]
        rescored = [{"step": c["row"]["step"], "generator": c["row"]["generator"],
                     "eval_fid": c["row"]["fid"], "fid": q["fid"],
                     "inception_score": q["inception_score"], "n": q["n"]}
                    for q, c in scored]
        return winner["row"], quality, rescored

    def best_generator(self, template: torch.nn.Module) -> torch.nn.Module | None:
        """A copy of ``template`` holding the best weights (None before any evaluation)."""
        if self.best is None:
            return None
        generator = copy.deepcopy(template)
        generator.load_state_dict(self.best)
        return generator

    def state_dict(self) -> dict[str, Any]:
        return {"best_generator": self.best, "candidates": self.candidates}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """``None``: a state saved with no evaluations kept (``eval_every: 0``)."""
        state = state or {}
        self.best = state.get("best_generator")
        self.candidates = list(state.get("candidates") or [])


def best_weights(checkpoint: dict[str, Any]) -> Weights | None:
    """The best generator kept in a full-state checkpoint (None when it kept none)."""
    selection = ModelSelection(1)
    selection.load_state_dict(checkpoint.get(SELECTION_KEY))
    return selection.best


def read_best_info(run_dir: Path) -> dict[str, Any]:
    """``BEST_INFO`` of a run (raises OSError or ValueError when it is missing or unusable)."""
    info = json.loads((Path(run_dir) / BEST_INFO).read_text())
    if not isinstance(info, dict):
        raise ValueError(f"{BEST_INFO} holds no mapping")
    return info


class QualityEvaluator(Callback):
    """FID, IS and class coverage of ``eval_samples`` images of G and of its moving average,
    kept with the stats (and so in checkpoints): every ``eval_every`` epochs and at the end,
    or, for a search trial, every ``every_steps`` steps and at its last step (so that each
    report carries a fresh score). The ``ModelSelection`` it feeds is its state in the
    run's checkpoint. With a ``run_dir``, the run's files of the best generator are written
    as it changes, and a completed run rescores its candidates."""

    state_key = SELECTION_KEY

    def __init__(self, meter, run_dir: Path | None = None,
                 write: Callable[[str], None] | None = None, every_steps: int = 0,
                 keep: int = 1):
        self.meter, self.write, self.every_steps = meter, write, every_steps
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.selection = ModelSelection(keep)

    def state_dict(self) -> dict[str, Any]:
        return self.selection.state_dict()

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        self.selection.load_state_dict(state)

    def evaluate(self, trainer: Trainer) -> None:
        before = best_overall(trainer.stats.evals)
        evals, known = trainer.stats.evals, len(trainer.stats.evals)
        try:
            with trainer.abortable():
                new = record_quality(trainer, self.meter)
        except StopRequested:
            del evals[known:]  # no half evaluation: the resume evaluates this step again
            raise
        if not new:
            return
        improved = self.selection.consider(new, before["fid"] if before else None)
        if self.run_dir is not None:
            write_evals_parquet(trainer.stats.evals, self.run_dir / EVAL_FILE)
            if improved is not None:
                self._save_best(improved, self.selection.best)
        if self.write is not None:
            for row, _ in new:
                label = "EMA G" if row["generator"] == "ema" else "G"
                self.write(f"[Epoch {trainer.epoch}] quality of {label} ({row['n']} samples): "
                           f"{quality_summary(row)}")

    def rescore(self, trainer: Trainer) -> None:
        """The final choice among the candidates, with ``rescore_samples`` fresh-noise
        images each (not the evaluations' noise)."""
        cfg = trainer.cfg
        if cfg.rescore_top < 2:
            return

        def measure(generator: torch.nn.Module) -> dict:
            return self.meter.measure(sample(generator, cfg.rescore_samples,
                                             derive_seed(cfg.seed, "rescore"))).to_dict()

        with trainer.abortable():  # cut short, the best generator stays as it was
            chosen = self.selection.rescore(measure, trainer.generator)
        if chosen is None:
            return
        row, quality, rescored = chosen
        if self.run_dir is not None:
            self._save_best(row, self.selection.best,
                            {"rescored": rescored, "rescore_samples": cfg.rescore_samples,
                             "rescored_fid": quality["fid"],
                             "rescored_inception_score": quality["inception_score"]})
        if self.write is not None:
            label = "EMA G" if row["generator"] == "ema" else "G"
            self.write(f"Best generator: {label} of step {row['step']}, chosen from "
                       f"the {len(rescored)} best evaluations rescored with "
                       f"{cfg.rescore_samples:,} samples: {quality_summary(quality)}")

    def _save_best(self, row: dict, weights: Weights, extra: dict | None = None) -> None:
        save_torch(weights, self.run_dir / BEST_GENERATOR)
        info = {k: row[k] for k in INFO_KEYS if k in row} | {"eval_samples": row.get("n")}
        atomic_write_text(self.run_dir / BEST_INFO,
                          json.dumps(info | (extra or {}), indent=2) + "\n")

    def save_best_samples(self, trainer: Trainer) -> None:
        """The best generator's 64 samples from the run's fixed noise, beside the seed's
        final ones: the picture a user should look at first."""
        generator = self.selection.best_generator(trainer.generator)
        if generator is not None:
            save_grid(generate(generator, trainer.fixed_noise), self.run_dir / BEST_SAMPLES)

    def on_step_end(self, trainer: Trainer) -> None:
        every = self.every_steps
        if every and (trainer.step % every == 0 or trainer.step >= trainer.total_steps):
            trainer.flush()
            self.evaluate(trainer)

    def on_epoch_end(self, trainer: Trainer) -> None:
        every = trainer.cfg.eval_every
        if every and (trainer.step // trainer.batches_per_epoch) % every == 0:
            self.evaluate(trainer)

    def on_train_end(self, trainer: Trainer, outcome: Outcome) -> None:
        if outcome is Outcome.COMPLETED and (trainer.cfg.eval_every or self.every_steps):
            self.evaluate(trainer)
            if self.run_dir is not None:  # a search trial ranks by its evaluations
                self.rescore(trainer)
                self.save_best_samples(trainer)
