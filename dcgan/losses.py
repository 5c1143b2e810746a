"""The GAN loss as one component: D's and G's losses, the step's recorded values, and the
diagnostic profile that says what those numbers mean.

Three losses, chosen by the ``loss`` config key:

* ``bce`` (the seed's): L_D = (BCE(D(x), 1-s) + BCE(D(G(z)), s)) / 2, L_G = BCE(D(G(z)), 1-s),
  with two-sided or one-sided label smoothing s;
* ``hinge`` (Lim & Ye 2017; Miyato et al. 2018): L_D = E[relu(1 - D(x))] + E[relu(1 + D(G(z)))],
  L_G = -E[D(G(z))];
* ``wgan-gp`` (Gulrajani et al. 2017):
  L_D = E[D(G(z))] - E[D(x)] + lambda E[(|grad D(x_hat)| - 1)^2] on random interpolates
  x_hat, L_G = -E[D(G(z))]; the critic has no BatchNorm (the penalty is per sample, and
  BatchNorm would mix them) and takes ``critic_steps`` updates per G update;
  Adam as in the paper (lr 1e-4, betas 0, 0.9) unless the config says otherwise.

Everything downstream (the status checks, the report, the figure, the Prometheus gauges and
alerts, the search objective) reads ``loss.profile`` instead of assuming BCE. Adding a loss is
one class here and one entry in ``LOSSES`` (docs/architecture.md).

torch is imported where tensors are made, not at the top: the config reads the losses' names,
defaults and profiles, and ``dcgan --help`` or ``dcgan config`` must not pay for torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch
    from torch import nn


class LossSettings(Protocol):
    """The config keys the losses read. ``dcgan.config.TrainConfig`` has them; it is not
    imported here (the config module imports this one), and this type has its own name so
    that it is never mistaken for the config."""

    loss: str
    label_smoothing: float
    gp_weight: float

    @property
    def one_sided_smoothing(self) -> bool: ...

Band = tuple[float, float]


@dataclass(frozen=True)
class LossProfile:
    """What one loss's numbers mean, for the diagnostics and everything that shows them.

    ``None`` for a band or a floor means "no such rule for this loss": the check is not made
    (and says so), never made against BCE's numbers.
    """

    name: str
    d_loss_label: str  # the figure's axis label of the loss panels
    meaning: str  # one line: what the losses measure
    accuracy_meaning: str  # what "D accuracy" is for this loss
    output_label: str  # what the d_real_prob / d_fake_prob columns hold
    d_floor: float | None  # the smallest L_D this loss and config allow
    floor_note: str  # why that is the floor (shown with it)
    loss_band: Band | None  # healthy band for both losses (the seed's 0.5-1.5 nats)
    ratio_band: Band | None  # healthy band for G loss / D loss (meaningful for positive losses)
    acc_band: Band | None = (0.60, 0.90)  # healthy D accuracy on real and on fake
    d_too_strong: float | None = 0.90  # mean D accuracy above this: D too strong
    d_dominant: float | None = 0.95  # over the long window: vanishing gradients
    # The balance measure's loss term (0 when balanced), from window means of (G, D) loss.
    loss_balance: Callable[[float, float], float] | None = None
    loss_balance_meaning: str = ""
    # Losses whose spread relative to their mean measures instability (positive losses only).
    stable_losses: tuple[str, ...] = ("g", "d")
    notes: tuple[str, ...] = field(default_factory=tuple)


def _bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    import torch.nn.functional as F

    # In fp32 whatever the autocast dtype: the loss is tiny work and precision matters there.
    return F.binary_cross_entropy_with_logits(logits.float(), target)


def bce_floor(label_smoothing: float) -> float:
    """Smallest possible BCE against a smoothed target t = 1 - s (or s): its entropy H(s).

    With the seed's s = 0.1 it is 0.325 nats, so neither L_D (a mean of two such terms) nor
    L_G can go below 0.325: a "loss near 0" never happens; "near 0.325" means saturation.
    """
    s = label_smoothing
    if s <= 0:
        return 0.0
    return -(s * math.log(s) + (1 - s) * math.log(1 - s))


def d_loss_floor(label_smoothing: float, one_sided: bool = False) -> float:
    """Smallest possible BCE L_D: the mean of its two terms' floors. One-sided smoothing (fake
    target 0) takes the fake term's floor to 0, so L_D can go down to H(s) / 2."""
    real = bce_floor(label_smoothing)
    return real / 2 if one_sided else real


def _log_ratio(g: float, d: float) -> float:
    """|ln(G/D)|: 0 when the losses are equal; infinite when either is not positive."""
    if not (d > 0 and g > 0 and math.isfinite(g / d)):
        return math.inf
    return abs(math.log(g / d))


class GANLoss:
    """One GAN objective. Subclasses set ``name`` and the two losses; the defaults below are
    the seed's discriminator (BatchNorm) and accuracy rule (the sign of D's logit)."""

    name = ""
    critic_norm = "batch"  # D's normalisation: batch (the seed's) or layer (per sample)
    # Config values this loss starts from unless the config sets them (for example the
    # paper's Adam settings); applied under the file and --set, over the seed's defaults.
    config_defaults: dict[str, object] = {}
    # Config keys this loss does not read (a value set for them changes nothing): named, so
    # that a run says so instead of accepting them silently.
    ignored_keys: tuple[str, ...] = ("gp_weight",)
    ignored_why = "they belong to another loss"

    @classmethod
    def from_config(cls, cfg: LossSettings) -> GANLoss:
        return cls()

    @property
    def profile(self) -> LossProfile:
        raise NotImplementedError

    def d_loss(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def g_loss(self, gen_logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def penalty(self, critic: nn.Module, real: torch.Tensor,
                fake: torch.Tensor) -> torch.Tensor | None:
        """A regulariser added to L_D, computed from the networks (WGAN-GP's); None: none."""
        return None

    def accuracies(self, real_logits: torch.Tensor,
                   fake_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(real classified real, fake classified fake): the sign of D's output."""
        return (real_logits > 0).float().mean(), (fake_logits < 0).float().mean()

    def outputs(self, real_logits: torch.Tensor,
                fake_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The d_real_prob / d_fake_prob columns: mean sigmoid(D), P(real) for BCE."""
        import torch

        return torch.sigmoid(real_logits).mean(), torch.sigmoid(fake_logits).mean()


class BCELoss(GANLoss):
    """The seed's loss, with two-sided (the seed) or one-sided (Salimans et al.) smoothing."""

    name = "bce"

    def __init__(self, label_smoothing: float = 0.1, one_sided: bool = False):
        self.label_smoothing, self.one_sided = label_smoothing, one_sided
        self.real_target = 1.0 - label_smoothing
        self.fake_target = 0.0 if one_sided else label_smoothing
        self._targets: dict[tuple[int, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def from_config(cls, cfg: LossSettings) -> BCELoss:
        return cls(cfg.label_smoothing, cfg.one_sided_smoothing)

    def targets(self, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Smoothed labels: real 1-s, fake s (0 when one-sided), made once per batch size."""
        import torch

        key = (n, torch.device(device))
        if key not in self._targets:
            self._targets[key] = (torch.full((n,), self.real_target, device=device),
                                  torch.full((n,), self.fake_target, device=device))
        return self._targets[key]

    @property
    def profile(self) -> LossProfile:
        return LossProfile(
            name=self.name, d_loss_label="BCE loss (nats)",
            meaning="binary cross-entropy of D's real/fake call against smoothed targets",
            accuracy_meaning="real correct when D(x) > 0.5, fake correct when D(G(z)) < 0.5",
            output_label="mean P(real) from D",
            d_floor=d_loss_floor(self.label_smoothing, self.one_sided),
            floor_note=f"label smoothing {self.label_smoothing}",
            loss_band=(0.5, 1.5), ratio_band=(0.3, 3.0),
            loss_balance=_log_ratio,
            loss_balance_meaning="|ln(G loss / D loss)|")

    def d_loss(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        real_t, fake_t = self.targets(real_logits.shape[0], real_logits.device)
        return (_bce(real_logits, real_t) + _bce(fake_logits, fake_t)) / 2

    def g_loss(self, gen_logits: torch.Tensor) -> torch.Tensor:
        # G wants its fakes called real: the real target, not the fake one.
        real_t, _ = self.targets(gen_logits.shape[0], gen_logits.device)
        return _bce(gen_logits, real_t)


# Chance level of the hinge critic (every output 0): L_D = 2, L_G = 0.
HINGE_D_BAND = (0.8, 1.9)


def _hinge_balance(g: float, d: float) -> float:
    """How far L_D is from the band where both networks learn: 0 inside it."""
    lo, hi = HINGE_D_BAND
    return max(0.0, lo - d) + max(0.0, d - hi)


class HingeLoss(GANLoss):
    """The hinge loss of SNGAN/SAGAN/BigGAN, with the seed's discriminator."""

    name = "hinge"
    ignored_keys = ("label_smoothing", "label_smoothing_mode", "gp_weight")
    ignored_why = "hinge has no labels to smooth and no gradient penalty"

    @property
    def profile(self) -> LossProfile:
        return LossProfile(
            name=self.name, d_loss_label="hinge loss",
            meaning="D: mean margin violations relu(1 - D(x)) + relu(1 + D(G(z))) (2 at "
                    "chance, 0 when every image is beyond its margin); G: -mean D(G(z))",
            accuracy_meaning="real correct when D(x) > 0, fake correct when D(G(z)) < 0",
            output_label="mean sigmoid(D)",
            d_floor=0.0, floor_note="every image beyond its margin: D stops learning",
            loss_band=None, ratio_band=None,
            loss_balance=_hinge_balance, stable_losses=("d",),
            loss_balance_meaning=f"distance of D loss from {HINGE_D_BAND[0]}-{HINGE_D_BAND[1]}",
            notes=("G's loss can be negative: no loss ratio or loss band applies",))

    def d_loss(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        return F.relu(1 - real_logits.float()).mean() + F.relu(1 + fake_logits.float()).mean()

    def g_loss(self, gen_logits: torch.Tensor) -> torch.Tensor:
        return -gen_logits.float().mean()


def _critic_failing(g: float, d: float) -> float:
    return max(0.0, d)


class WGANGPLoss(GANLoss):
    """The Wasserstein loss with gradient penalty; a critic without BatchNorm."""

    name = "wgan-gp"
    critic_norm = "layer"
    # The paper's critic and Adam settings: no dropout in the critic (Gulrajani et al. 2017).
    config_defaults = {"g_lr": 1e-4, "d_lr": 1e-4, "beta1": 0.0, "beta2": 0.9,
                       "critic_steps": 5, "dropout": 0.0}
    ignored_keys = ("label_smoothing", "label_smoothing_mode")
    ignored_why = "a critic has no labels to smooth"

    def __init__(self, gp_weight: float = 10.0):
        self.gp_weight = gp_weight

    @classmethod
    def from_config(cls, cfg: LossSettings) -> WGANGPLoss:
        return cls(cfg.gp_weight)

    @property
    def profile(self) -> LossProfile:
        return LossProfile(
            name=self.name, d_loss_label="critic loss (-W + penalty)",
            meaning="D (the critic): mean D(G(z)) - mean D(x) + gradient penalty, so -L_D "
                    "estimates the Wasserstein distance; G: -mean D(G(z))",
            accuracy_meaning="the critic's separation: real correct when D(x) is above the "
                             "midpoint of the batch's mean real and fake scores, fake correct "
                             "when below (the critic has no fixed zero)",
            output_label="mean critic score",
            d_floor=None, floor_note="", loss_band=None, ratio_band=None,
            # A critic near-perfectly separating real from fake is what WGAN-GP asks for:
            # its gradient does not vanish, so the accuracy rules of BCE do not apply.
            acc_band=None, d_too_strong=None, d_dominant=None,
            loss_balance=_critic_failing, stable_losses=(),
            loss_balance_meaning="max(0, D loss): the critic no longer separates real from "
                                 "fake by more than its penalty",
            notes=("a high critic accuracy is expected: the penalty keeps its gradient "
                   "useful", "W (= -D loss, roughly) should fall as G improves"))

    def d_loss(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        return fake_logits.float().mean() - real_logits.float().mean()

    def g_loss(self, gen_logits: torch.Tensor) -> torch.Tensor:
        return -gen_logits.float().mean()

    def penalty(self, critic: nn.Module, real: torch.Tensor,
                fake: torch.Tensor) -> torch.Tensor:
        return _eager(gradient_penalty)(critic, real, fake.detach(), self.gp_weight)

    def accuracies(self, real_logits, fake_logits):
        mid = (real_logits.mean() + fake_logits.mean()) / 2
        return (real_logits > mid).float().mean(), (fake_logits < mid).float().mean()

    def outputs(self, real_logits, fake_logits):
        return real_logits.mean(), fake_logits.mean()


@cache
def _eager(fn: Callable) -> Callable:
    """``fn`` run in eager mode even inside a compiled step (decorated on first use, so that
    importing this module does not import torch)."""
    import torch

    return torch._dynamo.disable(fn)


# The penalty's double backward runs in eager mode even inside a compiled step: compiled
# (AOT autograd) graphs do not support create_graph=True (``WGANGPLoss.penalty``).
def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                     weight: float) -> torch.Tensor:
    """weight * E[(||d critic(x_hat) / d x_hat||_2 - 1)^2], x_hat on random lines between real
    and fake images (one uniform draw per image, from the global RNG)."""
    import torch

    eps = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype)
    x_hat = (eps * real + (1 - eps) * fake.to(real.dtype)).requires_grad_(True)
    scores = critic(x_hat)
    (grad,) = torch.autograd.grad(scores.float().sum(), x_hat, create_graph=True)
    norms = grad.float().flatten(1).norm(2, dim=1)
    return weight * ((norms - 1) ** 2).mean()


LOSSES: dict[str, type[GANLoss]] = {cls.name: cls for cls in (BCELoss, HingeLoss, WGANGPLoss)}


def build_loss(cfg: LossSettings) -> GANLoss:
    return LOSSES[cfg.loss].from_config(cfg)


def loss_defaults(name: str) -> dict[str, object]:
    """The config values a loss starts from (an unknown name has none: config refuses it)."""
    cls = LOSSES.get(name)
    return dict(cls.config_defaults) if cls is not None else {}
