"""Sample grids from a generator (the seed's periodic and final sample images)."""

from __future__ import annotations

import io
from pathlib import Path

import torch
from torch import nn

from dcgan.io import atomic_write_bytes


@torch.no_grad()
def generate(generator: nn.Module, noise: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] for ``noise``, with BatchNorm in eval mode (running statistics).

    Eval mode also means sampling never changes the generator's state, so how often a run
    samples cannot change its training trajectory.
    """
    was_training = generator.training
    generator.eval()
    try:
        return generator(noise).float()
    finally:
        generator.train(was_training)


def save_grid(images: torch.Tensor, path: str | Path, nrow: int = 8) -> None:
    """Save images in [-1, 1] as one PNG grid, atomically."""
    # Imported here: torchvision costs about 2 s at import, which every command that only
    # validates its input (and fails in a second) would otherwise pay.
    from torchvision.utils import make_grid, save_image

    grid = make_grid(images.detach().cpu(), nrow=nrow, normalize=True, value_range=(-1, 1),
                     padding=2)
    buf = io.BytesIO()
    save_image(grid, buf, format="png")
    atomic_write_bytes(path, buf.getvalue())
