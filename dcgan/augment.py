"""Differentiable augmentation of every image D sees, at a strength set while training.

A discriminator that wins by memorising the training images is answered by showing it
transformed images, real and fake alike, in its own update and in G's, through transforms
that gradients flow through, so that G still learns from D's verdict (DiffAugment, Zhao et
al. 2020). How often an image is transformed, the probability p, is fixed (``augment_p``) or
set by the controller of ADA (Karras et al. 2020): every ``augment_every`` steps it reads
r = E[sign(D(x))] on real images, the overfitting heuristic, and moves p up when r is above
``augment_target``, down when below, by a step sized so that p could cross [0, 1] in
``augment_speed`` images. p starts at ``augment_p`` (0: D is not held back before it has
anything to overfit).

Transforms work in the [-1, 1] image space, on a batch, each image drawn on its own: with
probability p, ``translation`` shifts it by up to ``augment_shift`` of its size in each
direction and ``cutout`` blanks a square of ``augment_cutout`` of its size; what is uncovered
or blanked takes MNIST's background value (-1). Their random numbers come from one generator
of their own (seeded from the run's seed and the rank), kept in the full state, so a resume
is bit-exact. The controller decides from the stats rows, which are the mean over ranks in
distributed mode, so every rank applies the same p at the same step.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

TRANSFORMS = ("translation", "cutout")
BACKGROUND = -1.0  # MNIST's background after (x - 0.5) / 0.5


def translate(x: torch.Tensor, shifts: torch.Tensor, limit: int,
              background: float = BACKGROUND) -> torch.Tensor:
    """Each image of ``x`` (N, C, H, W) moved by its (dy, dx) in ``shifts`` (N, 2, integers
    in [-limit, limit]; positive: down, right), the uncovered border filled with
    ``background``. A gather from a padded copy: gradients flow to the pixels that moved."""
    import torch
    import torch.nn.functional as F

    n, _, h, w = x.shape
    padded = F.pad(x, (limit, limit, limit, limit), value=background)
    rows = torch.arange(h, device=x.device) + limit - shifts[:, 0:1]  # (N, H)
    cols = torch.arange(w, device=x.device) + limit - shifts[:, 1:2]  # (N, W)
    index = torch.arange(n, device=x.device)[:, None, None]
    # Advanced indexing around a slice puts the indexed dims first: (N, H, W, C).
    out = padded[index, :, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2)


def cutout_mask(n: int, h: int, w: int, size: int, centres: torch.Tensor,
                apply: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W): 0 inside a ``size`` x ``size`` square centred at ``centres`` (N, 2:
    row, col) of the images where ``apply``, 1 elsewhere."""
    import torch

    rows = torch.arange(h, device=centres.device)[None, :] - centres[:, 0:1]  # (N, H)
    cols = torch.arange(w, device=centres.device)[None, :] - centres[:, 1:2]  # (N, W)
    half_lo, half_hi = size // 2, size - size // 2
    inside_r = (rows >= -half_lo) & (rows < half_hi)
    inside_c = (cols >= -half_lo) & (cols < half_hi)
    inside = inside_r[:, :, None] & inside_c[:, None, :] & apply[:, None, None]
    return (~inside).to(torch.float32)[:, None]


def cutout(x: torch.Tensor, mask: torch.Tensor, background: float = BACKGROUND
           ) -> torch.Tensor:
    """``x`` where ``mask`` is 1, ``background`` where it is 0 (differentiable in ``x``)."""
    mask = mask.to(x.dtype)
    return x * mask + background * (1 - mask)


class Augment:
    """The transforms of one run, applied to a batch at probability ``p``."""

    def __init__(self, names: Iterable[str], shift: float, cutout_size: float,
                 generator: torch.Generator):
        self.names = tuple(names)
        self.shift, self.cutout_size = shift, cutout_size
        self.generator = generator
        self.p = 0.0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.p <= 0 or not self.names:
            return x
        import torch

        n, _, h, w = x.shape
        gen, dev = self.generator, x.device
        for name in self.names:
            apply = torch.rand(n, generator=gen, device=dev) < self.p
            if name == "translation":
                limit = max(1, round(self.shift * min(h, w)))
                shifts = torch.randint(-limit, limit + 1, (n, 2), generator=gen, device=dev)
                x = translate(x, shifts * apply[:, None], limit)
            elif name == "cutout":
                size = max(1, round(self.cutout_size * min(h, w)))
                centres = torch.stack([torch.randint(0, h, (n,), generator=gen, device=dev),
                                       torch.randint(0, w, (n,), generator=gen, device=dev)], 1)
                x = cutout(x, cutout_mask(n, h, w, size, centres, apply))
        return x

    def state_dict(self) -> dict[str, Any]:
        """p and the random stream (restored by the trainer with the other RNGs: only on the
        rank and device type that saved it)."""
        return {"p": self.p, "generator": self.generator.get_state()}


@dataclass
class AugmentController:
    """ADA's rule on the stats rows: every ``every`` steps, r over the steps since the last
    decision against ``target``; p moves by ``step_size`` per decision towards less
    overfitting, within [0, 1].

    r = E[sign(D(x))] on real images = 2 * d_real_acc - 1: D's real accuracy is the share of
    real images it calls real by the sign of its output (the loss's accuracy rule; for
    wgan-gp's critic, which has no fixed zero, the sign is taken about the midpoint of the
    batch's real and fake scores)."""

    target: float
    every: int
    step_size: float
    r_sum: float = 0.0
    n: int = 0
    last_r: float = math.nan  # r of the latest decision (stats, gauges)

    def observe(self, rows: Iterable[Mapping]) -> None:
        for row in rows:
            self.r_sum += 2 * row["d_real_acc"] - 1
            self.n += 1

    def due(self, step: int) -> bool:
        return step > 0 and step % self.every == 0

    def decide(self, p: float) -> float:
        """The new p from the rows observed since the last decision (p unchanged if none)."""
        if self.n == 0:
            return p
        self.last_r = self.r_sum / self.n
        self.r_sum, self.n = 0.0, 0
        direction = 1.0 if self.last_r > self.target else -1.0
        return min(1.0, max(0.0, p + direction * self.step_size))

    def state_dict(self) -> dict[str, Any]:
        return {"r_sum": self.r_sum, "n": self.n, "last_r": self.last_r}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.r_sum, self.n = float(state["r_sum"]), int(state["n"])
        self.last_r = float(state["last_r"])


def step_size(every: int, batch_size: int, speed_images: int) -> float:
    """ADA's adjustment per decision: p could go from 0 to 1 in ``speed_images`` images."""
    return every * batch_size / speed_images
