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


NORMS = ("batch", "layer")


def _norm(kind: str, channels: int) -> nn.Module:
    # "layer": one group over (C, H, W) with a per-channel affine, i.e. LayerNorm of each
    # sample on its own. WGAN-GP's per-sample gradient penalty needs a critic whose output
    # for one image does not depend on the others in its batch, which BatchNorm breaks.
    return nn.BatchNorm2d(channels) if kind == "batch" else nn.GroupNorm(1, channels)


def _d_block(c_in: int, c_out: int, dropout: float, norm: str | None) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1, bias=norm is None)]
    if norm is not None:
        layers.append(_norm(norm, c_out))
    layers += [nn.LeakyReLU(0.2, inplace=True), nn.Dropout2d(dropout)]
    return layers


class Discriminator(nn.Module):
    """images (N, 1, 28, 28) -> logits (N,). ``torch.sigmoid`` of a logit is P(real).

    Four strided 4x4 convs (64, 128, 256, 512 channels; 28 -> 14 -> 7 -> 3 -> 1), each with
    LeakyReLU(0.2) and Dropout, BatchNorm on all but the first; then one linear unit. It
    returns logits rather than probabilities so that the loss can use the numerically stable
    ``BCEWithLogitsLoss`` (also the only BCE that autocast allows).

    ``norm="layer"`` replaces BatchNorm by a per-sample norm: the critic of WGAN-GP.
    """

    def __init__(self, dropout: float = 0.3, norm: str = "batch"):
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}")
        self.features = nn.Sequential(
            *_d_block(1, 64, dropout, None),
            *_d_block(64, 128, dropout, norm),
            *_d_block(128, 256, dropout, norm),
            *_d_block(256, 512, dropout, norm),
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
    elif isinstance(module, nn.BatchNorm2d | nn.GroupNorm):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def build_models(latent_dim: int = 100, dropout: float = 0.3,
                 d_norm: str = "batch") -> tuple[Generator, Discriminator]:
    """Both networks with DCGAN init, drawn from the current torch RNG (seed it first)."""
    g, d = Generator(latent_dim), Discriminator(dropout, d_norm)
    g.apply(init_dcgan_weights)
    d.apply(init_dcgan_weights)
    return g, d
