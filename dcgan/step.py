"""One DCGAN training iteration, shared by local, distributed and tune modes.

Mode differences are injected through ``GANParts``: the discriminator used for the D update
may be DDP-wrapped while ``d_for_g`` is the plain module, frozen during the G update so that
no gradient is computed (or all-reduced) for D's weights in that phase.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

# What one step records (the stats columns besides step, epoch, batch and time).
STEP_VALUES = ("d_loss", "g_loss", "d_real_acc", "d_fake_acc", "d_real_prob", "d_fake_prob")

AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class GANParts:
    generator: nn.Module
    discriminator: nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    label_smoothing: float
    precision: str = "fp32"
    device_type: str = "cpu"
    scaler: torch.amp.GradScaler | None = None  # fp16 only
    d_for_g: nn.Module | None = None  # D as seen by the G update; defaults to ``discriminator``
    one_sided: bool = False  # smooth the real label only: fake target 0 (Salimans et al. 2016)
    _targets: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    def autocast(self) -> contextlib.AbstractContextManager:
        dtype = AUTOCAST_DTYPES[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=dtype)

    def targets(self, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Smoothed labels (real 1-s, fake s; fake 0 when one-sided), cached per batch size."""
        if n not in self._targets:
            s = self.label_smoothing
            self._targets[n] = (torch.full((n,), 1.0 - s, device=device),
                                torch.full((n,), 0.0 if self.one_sided else s, device=device))
        return self._targets[n]


def _bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # In fp32 whatever the autocast dtype: the loss is tiny work and precision matters there.
    return F.binary_cross_entropy_with_logits(logits.float(), target)


def _backward_step(parts: GANParts, loss: torch.Tensor, opt: torch.optim.Optimizer) -> None:
    opt.zero_grad(set_to_none=True)
    if parts.scaler is None:
        loss.backward()
        opt.step()
    else:
        parts.scaler.scale(loss).backward()
        parts.scaler.step(opt)


def gan_step(parts: GANParts, real: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Update D then G once; return the step's values (``STEP_VALUES`` order) as a device
    tensor.

    L_D = (BCE(D(x), 1-s) + BCE(D(G(z)), s)) / 2 and L_G = BCE(D(G(z)), 1-s), the seed's
    losses. Nothing here waits for the device: the caller decides when to read the values.
    """
    g, d = parts.generator, parts.discriminator
    d_for_g = parts.d_for_g if parts.d_for_g is not None else d
    real_t, fake_t = parts.targets(real.shape[0], real.device)

    with parts.autocast():
        fake = g(z)
    # Under torch.compile: end the region here. G's graph is then its own autograd node,
    # which the G update backpropagates through once; fused with D's forward, D's backward
    # would free it first. (No-op in eager mode.)
    torch._dynamo.graph_break()
    with parts.autocast():
        real_logits = d(real)
        fake_logits = d(fake.detach())
    d_loss = (_bce(real_logits, real_t) + _bce(fake_logits, fake_t)) / 2
    _backward_step(parts, d_loss, parts.opt_d)

    d_for_g.requires_grad_(False)  # G's update needs dL/dx through D, not D's weight grads
    try:
        with parts.autocast():
            gen_logits = d_for_g(fake)
        g_loss = _bce(gen_logits, real_t)
        _backward_step(parts, g_loss, parts.opt_g)
    finally:
        d_for_g.requires_grad_(True)
    if parts.scaler is not None:
        parts.scaler.update()

    with torch.no_grad():
        real_logits, fake_logits = real_logits.detach().float(), fake_logits.detach().float()
        return torch.stack([
            d_loss.detach(), g_loss.detach(),
            (real_logits > 0).float().mean(), (fake_logits < 0).float().mean(),
            torch.sigmoid(real_logits).mean(), torch.sigmoid(fake_logits).mean(),
        ])


StepFn = Callable[[GANParts, torch.Tensor, torch.Tensor], torch.Tensor]
