"""The seed's DCGAN networks for 28x28x1 MNIST. No distributed code lives here.

Usage, as in the seed::

    from dcgan.models import Generator
    g = Generator()
    g.load_state_dict(torch.load("dcgan_generator_final.pth", weights_only=True))
"""

from __future__ import annotations

import torch
from torch import nn


class Generator(nn.Module):
    """z (N, latent_dim) -> images (N, 1, 28, 28) in [-1, 1].

    Linear to 128x7x7, BatchNorm, then two (upsample x2, conv 3x3, BN, ReLU) blocks and a
    final conv to one channel with Tanh.
    """

    def __init__(self, latent_dim: int = 100):
        super().__init__()
        self.latent_dim = latent_dim
        self.project = nn.Linear(latent_dim, 128 * 7 * 7)
        self.blocks = nn.Sequential(
            nn.BatchNorm2d(128),
            nn.Upsample(scale_factor=2, mode="nearest"),  # 7 -> 14
            nn.Conv2d(128, 128, 3, padding=1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Upsample(scale_factor=2, mode="nearest"),  # 14 -> 28
            nn.Conv2d(128, 64, 3, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.Conv2d(64, 1, 3, padding=1),
            nn.Tanh(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.project(z).view(z.shape[0], 128, 7, 7)
        return self.blocks(x)


def _d_block(c_in: int, c_out: int, dropout: float, batch_norm: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(c_out))
    layers += [nn.LeakyReLU(0.2, inplace=True), nn.Dropout2d(dropout)]
    return layers


class Discriminator(nn.Module):
    """images (N, 1, 28, 28) -> logits (N,). ``torch.sigmoid`` of a logit is P(real).

    Four strided 4x4 convs (64, 128, 256, 512 channels; 28 -> 14 -> 7 -> 3 -> 1), each with
    LeakyReLU(0.2) and Dropout, BatchNorm on all but the first; then one linear unit. It
    returns logits rather than probabilities so that the loss can use the numerically stable
    ``BCEWithLogitsLoss`` (also the only BCE that autocast allows).
    """

    def __init__(self, dropout: float = 0.3):
        super().__init__()
        self.features = nn.Sequential(
            *_d_block(1, 64, dropout, batch_norm=False),
            *_d_block(64, 128, dropout, batch_norm=True),
            *_d_block(128, 256, dropout, batch_norm=True),
            *_d_block(256, 512, dropout, batch_norm=True),
        )
        self.classify = nn.Linear(512, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x).flatten(1)).squeeze(1)


def init_dcgan_weights(module: nn.Module) -> None:
    """DCGAN initialisation (Radford et al.): conv N(0, 0.02); BN weight N(1, 0.02), bias 0."""
    if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def build_models(latent_dim: int = 100, dropout: float = 0.3) -> tuple[Generator, Discriminator]:
    """Both networks with DCGAN init, drawn from the current torch RNG (seed it first)."""
    g, d = Generator(latent_dim), Discriminator(dropout)
    g.apply(init_dcgan_weights)
    d.apply(init_dcgan_weights)
    return g, d
