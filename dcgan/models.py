"""The seed's DCGAN networks for 28x28x1 MNIST. No distributed code lives here.

Usage, as in the seed::

    from dcgan.models import Generator
    g = Generator()
    g.load_state_dict(torch.load("dcgan_generator_final.pth", weights_only=True))
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

# The seed generator's hidden channels (after the projection, after the first block).
G_CHANNELS = (128, 64)
G_START = 7  # the side of the projection's feature maps (7 -> 14 -> 28)
G_ROWS = G_CHANNELS[0] * G_START * G_START  # the first layer's outputs per unit of width


class Generator(nn.Module):
    """z (N, latent_dim) -> images (N, 1, 28, 28) in [-1, 1].

    Linear to 128x7x7, BatchNorm, then two (upsample x2, conv 3x3, BN, ReLU) blocks and a
    final conv to one channel with Tanh. ``width`` multiplies every hidden layer's channels
    (1: the seed's 128, 128, 64).
    """

    def __init__(self, latent_dim: int = 100, width: int = 1):
        super().__init__()
        self.latent_dim, self.width = latent_dim, width
        wide, narrow = G_CHANNELS[0] * width, G_CHANNELS[1] * width
        self.project = nn.Linear(latent_dim, wide * G_START * G_START)
        self.blocks = nn.Sequential(
            nn.BatchNorm2d(wide),
            nn.Upsample(scale_factor=2, mode="nearest"),  # 7 -> 14
            nn.Conv2d(wide, wide, 3, padding=1, bias=False),
            nn.BatchNorm2d(wide),
            nn.ReLU(inplace=True),
            nn.Upsample(scale_factor=2, mode="nearest"),  # 14 -> 28
            nn.Conv2d(wide, narrow, 3, padding=1, bias=False),
            nn.BatchNorm2d(narrow),
            nn.ReLU(inplace=True),
            nn.Conv2d(narrow, 1, 3, padding=1),
            nn.Tanh(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.project(z).view(z.shape[0], -1, G_START, G_START)
        return self.blocks(x)


def generator_width(project_rows: int) -> int | None:
    """The width multiplier of a generator whose first layer has this many outputs (None if
    no width gives it): how a saved generator is rebuilt from its weights alone."""
    width, rest = divmod(project_rows, G_ROWS)
    return width if width >= 1 and rest == 0 else None



NORMS = ("batch", "layer", "none")


def _norm(kind: str, channels: int) -> nn.Module | None:
    # "layer": one group over (C, H, W) with a per-channel affine, i.e. LayerNorm of each
    # sample on its own. WGAN-GP's per-sample gradient penalty needs a critic whose output
    # for one image does not depend on the others in its batch, which BatchNorm breaks.
    if kind == "none":
        return None
    return nn.BatchNorm2d(channels) if kind == "batch" else nn.GroupNorm(1, channels)


def _d_block(c_in: int, c_out: int, dropout: float, norm: str) -> list[nn.Module]:
    layer = _norm(norm, c_out)
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1,
                                         bias=layer is None)]
    if layer is not None:
        layers.append(layer)
    layers += [nn.LeakyReLU(0.2, inplace=True), nn.Dropout2d(dropout)]
    return layers


class Discriminator(nn.Module):
    """images (N, 1, 28, 28) -> logits (N,). ``torch.sigmoid`` of a logit is P(real).

    Four strided 4x4 convs (64, 128, 256, 512 channels; 28 -> 14 -> 7 -> 3 -> 1), each with
    LeakyReLU(0.2) and Dropout, BatchNorm on all but the first; then one linear unit. It
    returns logits rather than probabilities so that the loss can use the numerically stable
    ``BCEWithLogitsLoss`` (also the only BCE that autocast allows).

    ``norm="layer"`` replaces BatchNorm by a per-sample norm: the critic of WGAN-GP;
    ``norm="none"`` drops it (what spectral normalisation replaces it with, ``spectralize``).
    """

    def __init__(self, dropout: float = 0.3, norm: str = "batch"):
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}")
        self.features = nn.Sequential(
            *_d_block(1, 64, dropout, "none"),
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


def spectralize(d: Discriminator) -> Discriminator:
    """Spectral normalisation of every conv and linear layer of ``d`` (Miyato et al. 2018):
    each weight divided by its largest singular value, estimated by one power iteration per
    forward pass in training mode (the estimate's vectors are buffers: in the state dict and
    the checkpoint). Applied after initialisation, which it keeps up to scale."""
    for module in d.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            spectral_norm(module)
    return d


def build_models(latent_dim: int = 100, dropout: float = 0.3, d_norm: str = "batch",
                 g_width: int = 1, d_spectral: bool = False
                 ) -> tuple[Generator, Discriminator]:
    """Both networks with DCGAN init, drawn from the current torch RNG (seed it first).
    ``d_spectral``: D's layers spectrally normalised, in place of its normalisation layers
    (a per-sample constraint: it also suits WGAN-GP's critic)."""
    g = Generator(latent_dim, g_width)
    d = Discriminator(dropout, "none" if d_spectral else d_norm)
    g.apply(init_dcgan_weights)
    d.apply(init_dcgan_weights)
    return g, spectralize(d) if d_spectral else d
