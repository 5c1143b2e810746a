"""The side effects of the training loop: console, progress bar, samples, quality, checkpoints,
stats and final files.

Each is a small ``Callback``; ``dcgan.assembly`` picks the ones a process needs (distributed
workers other than rank 0, and search trials, pick none of the file writers).
"""

from __future__ import annotations

import copy
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from dcgan.checkpoint import StateStore, save_torch
from dcgan.generation import generate, sample, save_grid
from dcgan.io import atomic_write_text
from dcgan.layout import (  # noqa: F401  (BEST_GENERATOR, BEST_INFO: re-exported)
    BEST_GENERATOR,
    BEST_INFO,
    BEST_SAMPLES,
    DISCRIMINATOR_FINAL,
    EVAL_FILE,
    FINAL_SAMPLES,
    GENERATOR_EMA_FINAL,
    GENERATOR_FINAL,
    STATS_FILE,
    epoch_weights,
    samples_file,
)
from dcgan.quality import quality_summary
from dcgan.stats import best_overall, write_evals_parquet
from dcgan.trainer import Callback, Outcome, StopRequested, Trainer, derive_seed


def log_line(row: dict, batches_per_epoch: int) -> str:
    """The seed's progress line."""
    return (f"[Epoch {row['epoch']}] [Batch {row['batch']}/{batches_per_epoch}] "
            f"[D: {row['d_loss']:.4f}] [G: {row['g_loss']:.4f}] "
            f"[Real Acc: {100 * row['d_real_acc']:.2f}%] "
            f"[Fake Acc: {100 * row['d_fake_acc']:.2f}%]")


def _state_cpu(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy, also on the CPU: ``.cpu()`` alone would alias weights that keep training."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


class ConsoleLogger(Callback):
    """The seed's log line every ``log_every`` batches, plus start, epoch and end summaries."""

    def __init__(self, write: Callable[[str], None] = print):
        self.write = write
        self._epoch_t0 = time.perf_counter()
        self._epoch_step0 = 0

    def on_train_start(self, trainer: Trainer) -> None:
        cfg = trainer.cfg
        n = trainer.sampler.images.shape[0]
        where = f"resuming at step {trainer.step}" if trainer.step else "starting"
        self.write(f"Training on {trainer.device} ({cfg.precision}), {where}: {n} images, "
                   f"batch {cfg.batch_size}, {trainer.batches_per_epoch} batches/epoch, "
                   f"{trainer.total_steps} steps in all")
        self._epoch_t0, self._epoch_step0 = time.perf_counter(), trainer.step

    def on_rows(self, trainer: Trainer, rows: list[dict]) -> None:
        for row in rows:
            if row["batch"] % trainer.cfg.log_every == 0:
                self.write(log_line(row, trainer.batches_per_epoch))

    def on_balance(self, trainer: Trainer, change: dict) -> None:
        side = "lowered" if change["to"] < change["from"] else "raised"
        self.write(f"[Step {change['step']}] auto-balance: D accuracy real "
                   f"{100 * change['real_acc']:.1f}%, fake {100 * change['fake_acc']:.1f}%; "
                   f"D's learning rate {side} to {change['to']:.3g} x d_lr "
                   f"({trainer.cfg.d_lr * change['to']:.3g})")

    def on_epoch_end(self, trainer: Trainer) -> None:
        seconds = time.perf_counter() - self._epoch_t0
        images = (trainer.step - self._epoch_step0) * trainer.cfg.batch_size
        last = trainer.stats.last(trainer.batches_per_epoch)
        d = sum(last["d_loss"]) / max(len(last["d_loss"]), 1)
        g = sum(last["g_loss"]) / max(len(last["g_loss"]), 1)
        self.write(f"[Epoch {trainer.epoch}] done in {seconds:.1f}s "
                   f"({images / max(seconds, 1e-9):.0f} img/s), mean D: {d:.4f}, mean G: {g:.4f}")
        self._epoch_t0, self._epoch_step0 = time.perf_counter(), trainer.step

    def on_train_end(self, trainer: Trainer, outcome: Outcome) -> None:
        if outcome is Outcome.COMPLETED:
            self.write(f"Training finished: {trainer.step} steps in {trainer.elapsed():.1f}s")


class ProgressBar(Callback):
    """A tqdm bar with ETA and images/s, on interactive terminals only."""

    def __init__(self, enabled: bool | None = None):
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.bar = None

    def on_train_start(self, trainer: Trainer) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        b = trainer.cfg.batch_size
        self.bar = tqdm(total=trainer.total_steps * b, initial=trainer.step * b, unit="img",
                        unit_scale=True, dynamic_ncols=True, leave=False, file=sys.stderr)

    def on_step_end(self, trainer: Trainer) -> None:
        if self.bar is not None:
            self.bar.update(trainer.cfg.batch_size)
            if trainer.batch % 10 == 0:
                self.bar.set_description(f"epoch {trainer.epoch}", refresh=False)

    def on_train_end(self, trainer: Trainer, outcome: Outcome) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def writer(self, fallback: Callable[[str], None] = print) -> Callable[[str], None]:
        """A print function that keeps the bar intact."""

        def write(line: str) -> None:
            if self.bar is not None:
                self.bar.write(line)
            else:
                fallback(line)

        return write


class SampleWriter(Callback):
    """``dcgan_samples_epoch_{E}_batch_{B}.png`` from the fixed noise every ``every`` batches."""

    def __init__(self, run_dir: Path, every: int):
        self.run_dir, self.every = Path(run_dir), every

    def on_step_end(self, trainer: Trainer) -> None:
        if self.every and trainer.batch % self.every == 0:
            images = generate(trainer.generator, trainer.fixed_noise)
            save_grid(images, self.run_dir /
                      samples_file(trainer.epoch, trainer.batch))


class WeightFiles(Callback):
    """The seed's per-epoch weight files, every ``checkpoint_every`` epochs:
    ``dcgan_generator_epoch_{E}.pth`` and ``dcgan_discriminator_epoch_{E}.pth``."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)

    def on_epoch_end(self, trainer: Trainer) -> None:
        every = trainer.cfg.checkpoint_every
        done = trainer.step // trainer.batches_per_epoch  # epochs completed
        if every and done % every == 0:
            save_torch(_state_cpu(trainer.generator),
                       self.run_dir / epoch_weights("generator", done))
            save_torch(_state_cpu(trainer.discriminator),
                       self.run_dir / epoch_weights("discriminator", done))


class Checkpointer(Callback):
    """When full states are saved: every ``checkpoint_every`` epochs, every
    ``checkpoint_every_steps`` steps, and when training stops (not after a divergence: the
    last good state stays the newest). Where a state goes is the ``store``'s business.

    Every rank of a distributed run saves at the same steps (a Ray report is a barrier).
    ``report`` adds a search's metrics to what travels with each state; ``write`` (the
    process that talks to the user) announces saves, and ``resume_hint`` says how to go on
    after an interruption."""

    def __init__(self, store: StateStore, write: Callable[[str], None] | None = None,
                 report: Callable[[Trainer], dict] | None = None, resume_hint: str = ""):
        self.store, self.write, self.report, self.resume_hint = store, write, report, resume_hint
        self.last: str | None = None
        self._saved_step = -1

    def save(self, trainer: Trainer) -> str | None:
        if self._saved_step == trainer.step:
            return self.last
        state = trainer.state_dict()
        info = {"step": trainer.step, "epoch": trainer.step / trainer.batches_per_epoch}
        if self.report is not None:
            info.update(self.report(trainer))
        self.last = self.store.save(state, info)
        self._saved_step = trainer.step
        trainer.state_saved(self.last)
        return self.last

    def on_step_end(self, trainer: Trainer) -> None:
        every = trainer.cfg.checkpoint_every_steps
        if every and trainer.step % every == 0:
            self.save(trainer)

    def on_epoch_end(self, trainer: Trainer) -> None:
        every = trainer.cfg.checkpoint_every
        done = trainer.step // trainer.batches_per_epoch  # epochs completed
        if every and done % every == 0:
            where = self.save(trainer)
            if self.write is not None:
                self.write(f"Checkpoint after epoch {done}: {where}")

    def on_train_end(self, trainer: Trainer, outcome: Outcome) -> None:
        if outcome is Outcome.DIVERGED:
            return
        where = self.save(trainer)
        if outcome is Outcome.INTERRUPTED and self.write is not None:
            self.write(f"Stopped ({trainer.stop_requested}) at step {trainer.step}; state saved "
                       f"to {where}. {self.resume_hint}".rstrip())


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
    candidates = [("raw", trainer.generator)]
    if trainer.ema is not None:
        candidates.append(("ema", averaged_generator(trainer)))
    epochs = round(trainer.step / trainer.batches_per_epoch, 4)
    new = []
    for name, generator in candidates:
        quality = meter.measure(sample(generator, cfg.eval_samples,
                                       derive_seed(cfg.seed, "eval")))
        row = {"step": trainer.step, "epoch": epochs, "generator": name,
               "time": round(trainer.elapsed(), 3), **quality.to_dict()}
        evals.append(row)
        new.append((row, generator))
    return new


def keep_candidates(trainer: Trainer, new: list[tuple[dict, torch.nn.Module]]) -> None:
    """Keep the ``rescore_top`` lowest-FID evaluations of the run with their weights."""
    keep = max(trainer.cfg.rescore_top, 1)
    pool = trainer.candidates
    for row, generator in new:
        worst = max((c["row"]["fid"] for c in pool), default=float("inf"))
        if len(pool) < keep or row["fid"] < worst:
            pool.append({"row": dict(row), "weights": _state_cpu(generator)})
            pool.sort(key=lambda c: c["row"]["fid"])
            del pool[keep:]


class QualityEvaluator(Callback):
    """FID, IS and class coverage of ``eval_samples`` images of G and of its moving average,
    kept with the stats (and so in checkpoints): every ``eval_every`` epochs and at the end,
    or, for a search trial, every ``every_steps`` steps and at its last step (so that each
    report carries a fresh score).

    Whenever either generator scores the lowest FID of the run so far, its weights become
    ``trainer.best_generator`` (kept in the full state). With a ``run_dir`` the evaluations
    are also written to ``EVAL_FILE`` and the best generator to ``BEST_GENERATOR`` (a plain
    state dict) with ``BEST_INFO`` beside it. When a run with a ``run_dir`` completes, its
    ``rescore_top`` best evaluations are scored again with ``rescore_samples`` images, and
    the best of those becomes the best generator (``BEST_INFO`` lists them all)."""

    def __init__(self, meter, run_dir: Path | None = None,
                 write: Callable[[str], None] | None = None, every_steps: int = 0):
        self.meter, self.write, self.every_steps = meter, write, every_steps
        self.run_dir = Path(run_dir) if run_dir is not None else None

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
        row, generator = min(new, key=lambda pair: pair[0]["fid"])
        improved = before is None or row["fid"] < before["fid"]
        if improved:
            trainer.best_generator = _state_cpu(generator)
        keep_candidates(trainer, new)
        if self.run_dir is not None:
            write_evals_parquet(trainer.stats.evals, self.run_dir / EVAL_FILE)
            if improved:
                self._save_best(row, trainer.best_generator)
        if self.write is not None:
            for row, _ in new:
                label = "EMA G" if row["generator"] == "ema" else "G"
                self.write(f"[Epoch {trainer.epoch}] quality of {label} ({row['n']} samples): "
                           f"{quality_summary(row)}")

    def rescore(self, trainer: Trainer) -> None:
        """Score the few best-evaluated generators again with ``rescore_samples`` images
        (fresh noise, not the evaluations'): at ``eval_samples`` images the ranking of close
        candidates is noise. The winner becomes the run's best generator."""
        cfg, candidates = trainer.cfg, trainer.candidates
        if cfg.rescore_top < 2 or len(candidates) < 2:
            return
        generator = copy.deepcopy(trainer.generator)
        scored = []
        with trainer.abortable():  # cut short, the best generator stays as it was
            for candidate in candidates:
                generator.load_state_dict(candidate["weights"])
                quality = self.meter.measure(sample(generator, cfg.rescore_samples,
                                                    derive_seed(cfg.seed, "rescore")))
                scored.append((quality.to_dict(), candidate))
        (quality, winner) = min(scored, key=lambda pair: pair[0]["fid"])
        trainer.best_generator = winner["weights"]
        rescored = [{"step": c["row"]["step"], "generator": c["row"]["generator"],
                     "eval_fid": c["row"]["fid"], "fid": q["fid"],
                     "inception_score": q["inception_score"], "n": q["n"]}
                    for q, c in scored]
        if self.run_dir is not None:
            self._save_best(winner["row"], winner["weights"],
                            {"rescored": rescored, "rescore_samples": cfg.rescore_samples,
                             "rescored_fid": quality["fid"],
                             "rescored_inception_score": quality["inception_score"]})
        if self.write is not None:
            label = "EMA G" if winner["row"]["generator"] == "ema" else "G"
            self.write(f"Best generator: {label} of step {winner['row']['step']}, chosen from "
                       f"the {len(scored)} best evaluations rescored with "
                       f"{cfg.rescore_samples:,} samples: {quality_summary(quality)}")

    def _save_best(self, row: dict, weights: dict[str, torch.Tensor],
                   extra: dict | None = None) -> None:
        save_torch(weights, self.run_dir / BEST_GENERATOR)
        keys = ("step", "epoch", "generator", "fid", "inception_score", "classes_covered",
                "largest_class_fraction", "mean_confidence", "n")
        info = {k: row[k] for k in keys if k in row} | {"eval_samples": row.get("n")}
        atomic_write_text(self.run_dir / BEST_INFO,
                          json.dumps(info | (extra or {}), indent=2) + "\n")

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

    def save_best_samples(self, trainer: Trainer) -> None:
        """The best generator's 64 samples from the run's fixed noise, beside the seed's
        final ones: the picture a user should look at first."""
        if trainer.best_generator is None:
            return
        generator = copy.deepcopy(trainer.generator)
        generator.load_state_dict(trainer.best_generator)
        save_grid(generate(generator, trainer.fixed_noise), self.run_dir / BEST_SAMPLES)


class StatsWriter(Callback):
    """Rewrites the Parquet stats at every epoch end (so ``dcgan analyze`` can follow a run),
    whenever a full state is saved (so the two agree) and when training stops; at most once
    per step."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self._written_step = -1

    def write(self, trainer: Trainer) -> None:
        if self._written_step == trainer.step:
            return
        trainer.flush()
        trainer.stats.write_parquet(self.run_dir / STATS_FILE)
        self._written_step = trainer.step

    def on_epoch_end(self, trainer: Trainer) -> None:
        self.write(trainer)

    def on_state_saved(self, trainer: Trainer, where: str) -> None:
        self.write(trainer)

    def on_train_end(self, trainer: Trainer, outcome: Outcome) -> None:
        self.write(trainer)  # after a divergence: the stats that show it


class FinalArtifacts(Callback):
    """The seed's end products, when training completes: final weights and 64 samples; and
    the moving average of G (``GENERATOR_EMA_FINAL``), when there is one."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)

    def on_train_end(self, trainer: Trainer, outcome: Outcome) -> None:
        if outcome is not Outcome.COMPLETED:
            return
        save_torch(_state_cpu(trainer.generator), self.run_dir / GENERATOR_FINAL)
        save_torch(_state_cpu(trainer.discriminator), self.run_dir / DISCRIMINATOR_FINAL)
        save_grid(generate(trainer.generator, trainer.fixed_noise), self.run_dir / FINAL_SAMPLES)
        if trainer.ema is not None:  # the average, with BatchNorm statistics of its own
            save_torch(_state_cpu(averaged_generator(trainer)), self.run_dir / GENERATOR_EMA_FINAL)
