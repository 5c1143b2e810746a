"""One GAN training iteration, shared by local, distributed and tune modes.

Mode differences are injected through ``GANParts``: the discriminator used for the D update
may be DDP-wrapped while ``d_for_g`` is the plain module, frozen during the G update so that
no gradient is computed (or all-reduced) for D's weights in that phase. What the losses are
is the ``loss`` component's business (``dcgan.losses``); this module only orders the updates.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from dcgan.losses import BCELoss, GANLoss

# What one step records (the stats columns besides step, epoch, batch and time). The last two
# are what ``GANLoss.outputs`` says they are (P(real) for BCE, critic scores for WGAN-GP).
STEP_VALUES = ("d_loss", "g_loss", "d_real_acc", "d_fake_acc", "d_real_prob", "d_fake_prob")

AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class GANParts:
    generator: nn.Module
    discriminator: nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    loss: GANLoss = field(default_factory=BCELoss)
    precision: str = "fp32"
    device_type: str = "cpu"
    scaler: torch.amp.GradScaler | None = None  # fp16 only
    d_for_g: nn.Module | None = None  # D as seen by the G update; defaults to ``discriminator``
    # False on the critic-only iterations of ``critic_steps`` > 1: D updates, G does not.
    update_g: bool = True
    # Every image D sees, real or fake, in both updates, goes through this (dcgan.augment).
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None

    @property
    def label_smoothing(self) -> float | None:
        """The smoothing the step's loss applies (None for a loss without one)."""
        return getattr(self.loss, "label_smoothing", None)

    def autocast(self) -> contextlib.AbstractContextManager:
        dtype = AUTOCAST_DTYPES[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=dtype)


def _backward_step(parts: GANParts, loss: torch.Tensor, opt: torch.optim.Optimizer) -> None:
    opt.zero_grad(set_to_none=True)
    if parts.scaler is None:
        loss.backward()
        opt.step()
    else:
        parts.scaler.scale(loss).backward()
        parts.scaler.step(opt)


def gan_step(parts: GANParts, real: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Update D then (when ``parts.update_g``) G once; return the step's values
    (``STEP_VALUES`` order) as a device tensor.

    On a critic-only iteration G's loss is still recorded, from the fakes D just scored, so
    that every stats row is complete. Nothing here waits for the device: the caller decides
    when to read the values.
    """
    g, d, loss = parts.generator, parts.discriminator, parts.loss
    d_for_g = parts.d_for_g if parts.d_for_g is not None else d
    seen = parts.augment or _as_is

    with parts.autocast(), torch.set_grad_enabled(parts.update_g):
        fake = g(z)
    # Under torch.compile: end the region here. G's graph is then its own autograd node,
    # which the G update backpropagates through once; fused with D's forward, D's backward
    # would free it first. (No-op in eager mode.)
    torch._dynamo.graph_break()
    real_seen, fake_seen = seen(real), seen(fake.detach())
    with parts.autocast():
        real_logits = d(real_seen)
        fake_logits = d(fake_seen)
    d_loss = loss.d_loss(real_logits, fake_logits)
    penalty = loss.penalty(d, real_seen, fake_seen)
    _backward_step(parts, d_loss if penalty is None else d_loss + penalty, parts.opt_d)

    if parts.update_g:
        d_for_g.requires_grad_(False)  # G's update needs dL/dx through D, not D's weight grads
        try:
            with parts.autocast():
                gen_logits = d_for_g(seen(fake))
            g_loss = loss.g_loss(gen_logits)
            _backward_step(parts, g_loss, parts.opt_g)
        finally:
            d_for_g.requires_grad_(True)
    else:
        with torch.no_grad():
            g_loss = loss.g_loss(fake_logits.detach())
    if parts.scaler is not None:
        parts.scaler.update()

    with torch.no_grad():
        real_logits, fake_logits = real_logits.detach().float(), fake_logits.detach().float()
        d_total = d_loss.detach() if penalty is None else (d_loss + penalty).detach()
        return torch.stack([d_total, g_loss.detach(), *loss.accuracies(real_logits, fake_logits),
                            *loss.outputs(real_logits, fake_logits)])


def _as_is(x: torch.Tensor) -> torch.Tensor:
    return x


StepFn = Callable[[GANParts, torch.Tensor, torch.Tensor], torch.Tensor]
