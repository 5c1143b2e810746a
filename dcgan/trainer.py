"""The training loop: one implementation for every mode.

``Trainer`` owns the models, optimizers, data order, RNGs and stats; it knows nothing of
files, consoles, Ray or Prometheus. Everything a step causes outside the loop (log lines,
sample images, checkpoints, metrics) is a ``Callback``. Distributed mode injects
``rank``/``world_size`` and a ``wrap_model`` function (DDP) instead of copying the loop.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from dcgan.augment import Augment, AugmentController, step_size
from dcgan.checkpoint import HEADER_KEYS
from dcgan.config import TrainConfig
from dcgan.data import BatchSampler
from dcgan.ema import GeneratorEMA
from dcgan.errors import CheckpointError, NonFiniteLossError, first_line
from dcgan.losses import build_loss
from dcgan.models import build_models
from dcgan.schedule import BalanceController, decay_factor
from dcgan.stats import TrainingStats
from dcgan.step import GANParts, StepFn, gan_step

FIXED_NOISE_SIZE = 64  # the seed's 8x8 sample grid
# Changing these on resume would change what a step means (data order, shapes, noise).
# The loss decides D's layers (a BatchNorm or a per-sample critic) and what its state means.
RESUME_LOCKED_KEYS = ("batch_size", "latent_dim", "seed", "train_subset", "loss", "g_width",
                      "spectral_norm")
# The trainer's own parts of a full state (``state_dict``, pinned by tests/test_training.py);
# any other key belongs to a callback, or to the checkpoint file's header.
STATE_KEYS = ("generator", "discriminator", "opt_g", "opt_d", "scaler", "step", "epoch",
              "batch_in_epoch", "rng", "fixed_noise", "config", "stats", "elapsed", "ema",
              "balance", "augment")


class Outcome(enum.StrEnum):
    COMPLETED = "completed"  # every epoch done, or max_steps reached
    INTERRUPTED = "interrupted"  # SIGINT/SIGTERM: state saved, resumable
    DIVERGED = "diverged"  # a non-finite loss: nothing saved past the last good checkpoint


class StopRequested(Exception):  # noqa: N818  (a request, not an error)
    """A stop signal arrived inside an abortable stretch of side work (an evaluation): that
    work is dropped, so that the state is saved and the process gone within seconds."""


class Callback:
    """Observer of the loop. Override what you need; every hook is optional."""

    def on_train_start(self, trainer: Trainer) -> None: ...

    def on_step_end(self, trainer: Trainer) -> None: ...

    def on_rows(self, trainer: Trainer, rows: list[dict]) -> None: ...

    def on_epoch_end(self, trainer: Trainer) -> None: ...

    def on_balance(self, trainer: Trainer, change: dict) -> None:
        """The balance controller changed D's learning rate (``change``: step, real_acc,
        fake_acc, and from / to, multipliers of d_lr)."""

    def on_state_saved(self, trainer: Trainer, where: str) -> None:
        """A full state of this step was just saved (``where`` says where it went)."""

    def on_train_end(self, trainer: Trainer, outcome: Outcome) -> None: ...

    # A callback that keeps state (the model selection) names its part of the run's one
    # checkpoint and saves and restores it itself; the trainer only carries it.
    state_key: str | None = None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """``state``: this callback's part of a checkpoint (None: the checkpoint has none)."""


def derive_seed(seed: int, *parts: Any) -> int:
    """A stable 63-bit seed for one purpose (and rank), independent of PYTHONHASHSEED."""
    digest = hashlib.sha256(repr((seed, *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def check_locked_keys(saved: dict[str, Any], cfg: TrainConfig, source: str) -> None:
    """A state resumes only under the values that decide what its steps mean. A key missing
    from an older state had its default then."""
    for key in RESUME_LOCKED_KEYS:
        was = saved.get(key, getattr(TrainConfig, key))
        if was != getattr(cfg, key):
            raise CheckpointError(f"{source} was trained with {key}={was!r}; it cannot be "
                                  f"resumed with {key}={getattr(cfg, key)!r}")


def compile_step(step_fn: StepFn, mode: str) -> StepFn:
    """The whole training step (both forwards, backwards and optimizer steps) through
    torch.compile; ``reduce-overhead`` adds CUDA graphs on GPUs. ``off``: eager."""
    if mode == "off":
        return step_fn
    return torch.compile(step_fn, mode=None if mode == "default" else mode)


def make_optimizer(params, lr: float, cfg: TrainConfig, device: torch.device):
    # Fused Adam is one kernel per step on GPUs; on CPUs the foreach path is as fast.
    fast = {"fused": True} if device.type == "cuda" else {"foreach": True}
    return torch.optim.Adam(params, lr=lr, betas=(cfg.beta1, cfg.beta2), **fast)


class Trainer:
    def __init__(self, cfg: TrainConfig, images: torch.Tensor, device: torch.device, *,
                 callbacks: Sequence[Callback] = (), rank: int = 0, world_size: int = 1,
                 wrap_model: Callable[[nn.Module], nn.Module] | None = None,
                 step_fn: StepFn = gan_step,
                 reduce_stats: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.cfg = cfg
        self.device = device
        self.rank, self.world_size = rank, world_size
        self.callbacks = list(callbacks)
        self.step_fn = compile_step(step_fn, cfg.compile)

        self.loss = build_loss(cfg)
        torch.manual_seed(derive_seed(cfg.seed, "init"))  # same weights on every rank
        g, d = build_models(cfg.latent_dim, cfg.dropout, self.loss.critic_norm, cfg.g_width,
                            cfg.spectral_norm)
        # NHWC: faster convs on CPUs (AMX/oneDNN) and on tensor cores.
        fmt = torch.contiguous_format if cfg.channels_last == "false" else torch.channels_last
        self.generator = g.to(device, memory_format=fmt)
        self.discriminator = d.to(device, memory_format=fmt)
        wrap = wrap_model or (lambda m: m)
        self.opt_g = make_optimizer(self.generator.parameters(), cfg.g_lr, cfg, device)
        self.opt_d = make_optimizer(self.discriminator.parameters(), cfg.d_lr, cfg, device)
        self.scaler = torch.amp.GradScaler("cuda") if cfg.precision == "fp16" else None
        self.augment, self.augment_control = self._build_augment(cfg, device, rank)
        self.parts = GANParts(
            generator=wrap(self.generator), discriminator=wrap(self.discriminator),
            d_for_g=self.discriminator, opt_g=self.opt_g, opt_d=self.opt_d,
            loss=self.loss, precision=cfg.precision, device_type=device.type,
            scaler=self.scaler, augment=self.augment)

        # The whole training set lives on the device (uint8 stays uint8: 47 MB for MNIST);
        # batches are drawn, normalised and laid out there, never copied from the host.
        self.sampler = BatchSampler(images.to(device), cfg.batch_size, cfg.seed, rank,
                                    world_size, memory_format=fmt)
        self.batches_per_epoch = self.sampler.batches_per_epoch
        total = cfg.epochs * self.batches_per_epoch
        self.total_steps = min(total, cfg.max_steps) if cfg.max_steps else total

        fixed = torch.Generator().manual_seed(derive_seed(cfg.seed, "fixed-noise"))
        self.fixed_noise = torch.randn(FIXED_NOISE_SIZE, cfg.latent_dim, generator=fixed).to(device)
        self.noise_gen = torch.Generator(device=device)
        self.noise_gen.manual_seed(derive_seed(cfg.seed, "noise", rank))  # differs per rank
        torch.manual_seed(derive_seed(cfg.seed, "dropout", rank))  # global RNG: dropout

        # The average of G's weights (on the device, updated after every step).
        self.ema = GeneratorEMA(self.generator, cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.step = 0  # completed steps; the next step's index
        self.epoch = 0  # epoch of the last completed step
        self.batch = -1  # batch index (in its epoch) of the last completed step
        self.stats = TrainingStats(reduce_stats)
        profile = self.loss.profile
        # Decisions read the stats rows, which are the same on every rank (the mean over
        # ranks), so every rank applies the same rate at the same step.
        self.balance = (BalanceController(profile.acc_band, cfg.balance_every,
                                          cfg.balance_floor)
                        if cfg.auto_balance and profile.acc_band is not None else None)
        # Callback states restored from a checkpoint whose owner this process lacks (a resume
        # with evaluations turned off): carried on unchanged into the next state.
        self._carried: dict[str, Any] = {}
        self.stop_requested: str | None = None  # set by a signal handler (request_stop)
        self._abortable = False
        self._elapsed_before = 0.0
        self._t0 = time.perf_counter()

    @staticmethod
    def _build_augment(cfg: TrainConfig, device: torch.device, rank: int
                       ) -> tuple[Augment | None, AugmentController | None]:
        """The augmentation of what D sees and its controller (None: off); its random stream
        differs per rank, like the noise."""
        if not cfg.augment:
            return None, None
        gen = torch.Generator(device=device)
        gen.manual_seed(derive_seed(cfg.seed, "augment", rank))
        augment = Augment(cfg.augment.split(","), cfg.augment_shift, cfg.augment_cutout, gen)
        augment.p = cfg.augment_p
        control = (AugmentController(cfg.augment_target, cfg.augment_every,
                                     step_size(cfg.augment_every, cfg.batch_size,
                                               cfg.augment_speed))
                   if cfg.augment_target > 0 else None)
        return augment, control

    # -- time and stats ---------------------------------------------------------------------
    def elapsed(self) -> float:
        """Seconds of training in this run, across resumes."""
        return self._elapsed_before + time.perf_counter() - self._t0

    def flush(self) -> list[dict]:
        """Bring pending stats to the host, hand them to callbacks, stop on a non-finite loss."""
        rows = self.stats.flush()
        if not rows:
            return rows
        if self.balance is not None:
            self.balance.observe(rows)
        if self.augment_control is not None:
            self.augment_control.observe(rows)
        for cb in self.callbacks:
            cb.on_rows(self, rows)
        for row in rows:
            if not (math.isfinite(row["d_loss"]) and math.isfinite(row["g_loss"])):
                raise NonFiniteLossError(
                    f"non-finite loss at step {row['step']} (epoch {row['epoch']}, batch "
                    f"{row['batch']}): d_loss={row['d_loss']}, g_loss={row['g_loss']}")
        return rows

    # -- the loop ---------------------------------------------------------------------------
    def fit(self) -> Outcome:
        cfg, bpe = self.cfg, self.batches_per_epoch
        self._t0 = time.perf_counter()
        for cb in self.callbacks:
            cb.on_train_start(self)
        outcome = Outcome.COMPLETED
        try:
            while self.step < self.total_steps and not self.stop_requested:
                epoch, start = divmod(self.step, bpe)
                for batch, real in enumerate(self.sampler.epoch(epoch, start), start):
                    z = torch.randn(real.shape[0], cfg.latent_dim, device=self.device,
                                    generator=self.noise_gen)
                    # With critic_steps k, G updates on every k-th step (and so does its
                    # average); the other steps train D alone.
                    self.parts.update_g = (self.step + 1) % cfg.critic_steps == 0
                    rates = self._apply_rates()
                    values = self.step_fn(self.parts, real, z)
                    if self.ema is not None and self.parts.update_g:
                        self.ema.update()
                    self.stats.record(self.step, epoch, batch, self.elapsed(), values, rates)
                    self.step, self.epoch, self.batch = self.step + 1, epoch, batch
                    if self._flush_point(batch):
                        self.flush()
                    if self.balance is not None and self.balance.due(self.step):
                        self._balance_decision()
                    if (self.augment_control is not None
                            and self.augment_control.due(self.step)):
                        self.augment.p = self.augment_control.decide(self.augment.p)
                    self._notify("on_step_end")
                    if self.stop_requested or self.step >= self.total_steps:
                        break
                if self.batch == bpe - 1 and self.step % bpe == 0:
                    self._notify("on_epoch_end")
            self.flush()
            if self.step < self.total_steps:
                outcome = Outcome.INTERRUPTED
        except NonFiniteLossError:
            self._finish(Outcome.DIVERGED)
            raise
        return self._finish(outcome)

    def request_stop(self, reason: str) -> None:
        """Stop after the current step (a signal's way in: ``reason`` is its name); inside an
        abortable stretch (an evaluation), drop that work at once."""
        self.stop_requested = reason
        if self._abortable:
            self._abortable = False
            raise StopRequested(reason)

    @contextlib.contextmanager
    def abortable(self):
        """Side work that a stop may cut short (it raises ``StopRequested``); nothing in it may
        leave a file or the state half-changed."""
        if self.stop_requested:
            raise StopRequested(self.stop_requested)
        self._abortable = True
        try:
            yield
        finally:
            self._abortable = False

    def _notify(self, hook: str) -> None:
        """Call ``hook`` on every callback; a stop cutting one short ends the round (the loop
        then stops and saves)."""
        with contextlib.suppress(StopRequested):
            for cb in self.callbacks:
                getattr(cb, hook)(self)

    def _apply_rates(self) -> tuple[float, float, float, float]:
        """Set both optimizers' learning rates for the coming step (the config's, times the
        decay and, for D, the balance controller's multiplier); return them, with the
        augmentation's p and r, for the stats (``stats.HOST_COLUMNS``)."""
        cfg = self.cfg
        decay = decay_factor(self.step, self.total_steps, cfg.lr_decay, cfg.lr_decay_final)
        d_scale = self.balance.scale if self.balance is not None else 1.0
        rates = (cfg.g_lr * decay, cfg.d_lr * decay * d_scale)
        for opt, lr in zip((self.opt_g, self.opt_d), rates, strict=True):
            for group in opt.param_groups:
                group["lr"] = lr
        p = self.augment.p if self.augment is not None else math.nan
        r = self.augment_control.last_r if self.augment_control is not None else math.nan
        return (*rates, p, r)

    def _balance_decision(self) -> None:
        change = self.balance.decide(self.step)
        if change is not None:
            for cb in self.callbacks:
                cb.on_balance(self, change)

    def _flush_point(self, batch: int) -> bool:
        """Steps after which stats reach the host: the same on every rank, and covering every
        step at which a callback may save state or the balance controller decides, so that
        neither starts a collective of its own."""
        every = self.cfg.checkpoint_every_steps
        balance = self.balance is not None and self.balance.due(self.step)
        augment = self.augment_control is not None and self.augment_control.due(self.step)
        return (batch % self.cfg.log_every == 0 or batch == self.batches_per_epoch - 1
                or bool(every and self.step % every == 0) or self.step >= self.total_steps
                or balance or augment)

    def _finish(self, outcome: Outcome) -> Outcome:
        """The end of the run, callback by callback. A stop that arrives during it (the final
        evaluation, the final files) turns the rest into an interrupted run's end: the state
        is saved, the work left is done by the resume."""
        for cb in self.callbacks:
            if outcome is Outcome.COMPLETED and self.stop_requested:
                outcome = Outcome.INTERRUPTED
            try:
                cb.on_train_end(self, outcome)
            except StopRequested:
                outcome = Outcome.INTERRUPTED
        if outcome is Outcome.COMPLETED and self.stop_requested:
            outcome = Outcome.INTERRUPTED  # arrived while the last files were written
        return outcome

    def state_saved(self, where: str) -> None:
        """Called by whoever saved a full state, so that files kept beside it (the stats)
        can follow at the same step."""
        for cb in self.callbacks:
            cb.on_state_saved(self, where)

    # -- checkpoint state -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        self.flush()
        cuda_rng = (torch.cuda.get_rng_state(self.device) if self.device.type == "cuda"
                    else None)
        # A part carried from a restored state comes first: nothing carried can stand in for
        # what this trainer or its callbacks hold now.
        return {
            **self._carried,
            "generator": self.generator.state_dict(),
            "discriminator": self.discriminator.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "step": self.step,
            "epoch": self.step // self.batches_per_epoch,
            "batch_in_epoch": self.step % self.batches_per_epoch,
            "rng": {"device_type": self.device.type, "torch": torch.get_rng_state(),
                    "cuda": cuda_rng, "noise": self.noise_gen.get_state()},
            "fixed_noise": self.fixed_noise.cpu(),
            "config": self.cfg.to_dict(),
            "stats": self.stats.state_dict(),
            "elapsed": self.elapsed(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "balance": self.balance.state_dict() if self.balance is not None else None,
            "augment": self._augment_state(),
            **{cb.state_key: cb.state_dict() for cb in self.callbacks if cb.state_key},
        }

    def _augment_state(self) -> dict[str, Any] | None:
        if self.augment is None:
            return None
        control = self.augment_control
        return {**self.augment.state_dict(),
                "control": control.state_dict() if control is not None else None}

    def load_state_dict(self, state: dict[str, Any], source: str = "checkpoint",
                        restore_rng: bool = True) -> None:
        """Restore a full state. ``restore_rng=False`` (other ranks than the one that saved)
        reseeds noise and dropout from (seed, rank, step) instead: deterministic, per rank."""
        check_locked_keys(state["config"], self.cfg, source)
        try:
            self.generator.load_state_dict(state["generator"])
            self.discriminator.load_state_dict(state["discriminator"])
            self.opt_g.load_state_dict(state["opt_g"])
            self.opt_d.load_state_dict(state["opt_d"])
            if self.scaler is not None and state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
            self.fixed_noise = state["fixed_noise"].to(self.device)
            if self.ema is not None and state.get("ema"):
                self.ema.load_state_dict(state["ema"])  # else it starts from these weights
            elif self.ema is not None:
                self.ema = GeneratorEMA(self.generator, self.cfg.ema_decay)
            self.stats.load_state_dict(state["stats"])
            keys = {cb.state_key for cb in self.callbacks if cb.state_key}
            for cb in self.callbacks:
                if cb.state_key:
                    cb.load_state_dict(state.get(cb.state_key))
            self._carried = {k: v for k, v in state.items()
                             if k not in (*STATE_KEYS, *HEADER_KEYS, *keys) and v is not None}
            if self.balance is not None and state.get("balance"):
                self.balance.load_state_dict(state["balance"])
            augment = state.get("augment")  # absent before augmentation, or turned on now
            if self.augment is not None and augment:
                self.augment.p = float(augment["p"])  # its random stream: with the RNGs below
                if self.augment_control is not None and augment.get("control"):
                    self.augment_control.load_state_dict(augment["control"])
        except (RuntimeError, KeyError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{source} does not match this model: "
                                  f"{first_line(exc)}") from None
        # The config may change learning rates on resume; the optimizer state must not win.
        for opt, lr in ((self.opt_g, self.cfg.g_lr), (self.opt_d, self.cfg.d_lr)):
            for group in opt.param_groups:
                group["lr"], group["betas"] = lr, (self.cfg.beta1, self.cfg.beta2)
        self.step = int(state["step"])
        self.epoch, self.batch = divmod(self.step - 1, self.batches_per_epoch)
        self._elapsed_before = float(state["elapsed"])
        rng = state["rng"]
        if restore_rng and rng.get("device_type") == self.device.type:
            torch.set_rng_state(rng["torch"])
            if rng.get("cuda") is not None:
                torch.cuda.set_rng_state(rng["cuda"], self.device)
            self.noise_gen.set_state(rng["noise"])
            if self.augment is not None and state.get("augment"):
                self.augment.generator.set_state(state["augment"]["generator"])
        else:  # another rank's or device's state: deterministic, not bit-exact
            torch.manual_seed(derive_seed(self.cfg.seed, "dropout", self.rank, self.step))
            self.noise_gen.manual_seed(derive_seed(self.cfg.seed, "noise", self.rank, self.step))
            if self.augment is not None:
                self.augment.generator.manual_seed(
                    derive_seed(self.cfg.seed, "augment", self.rank, self.step))
