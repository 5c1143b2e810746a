"""The side effects of the training loop: console, progress bar, samples, checkpoints, stats
and final files (quality and the choice of the best generator: ``dcgan.selection``).

Each is a small ``Callback``; ``dcgan.assembly`` picks the ones a process needs (distributed
workers other than rank 0, and search trials, pick none of the file writers).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

from dcgan.checkpoint import StateStore, save_torch, state_cpu
from dcgan.generation import generate, save_grid
from dcgan.layout import (
    DISCRIMINATOR_FINAL,
    FINAL_SAMPLES,
    GENERATOR_EMA_FINAL,
    GENERATOR_FINAL,
    STATS_FILE,
    epoch_weights,
    samples_file,
)
from dcgan.selection import averaged_generator
from dcgan.trainer import Callback, Outcome, Trainer


def log_line(row: dict, batches_per_epoch: int) -> str:
    """The seed's progress line."""
    return (f"[Epoch {row['epoch']}] [Batch {row['batch']}/{batches_per_epoch}] "
            f"[D: {row['d_loss']:.4f}] [G: {row['g_loss']:.4f}] "
            f"[Real Acc: {100 * row['d_real_acc']:.2f}%] "
            f"[Fake Acc: {100 * row['d_fake_acc']:.2f}%]")


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
            save_torch(state_cpu(trainer.generator),
                       self.run_dir / epoch_weights("generator", done))
            save_torch(state_cpu(trainer.discriminator),
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
        save_torch(state_cpu(trainer.generator), self.run_dir / GENERATOR_FINAL)
        save_torch(state_cpu(trainer.discriminator), self.run_dir / DISCRIMINATOR_FINAL)
        save_grid(generate(trainer.generator, trainer.fixed_noise), self.run_dir / FINAL_SAMPLES)
        if trainer.ema is not None:  # the average, with BatchNorm statistics of its own
            save_torch(state_cpu(averaged_generator(trainer)), self.run_dir / GENERATOR_EMA_FINAL)
