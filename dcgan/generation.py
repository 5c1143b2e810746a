"""Using a generator: sampling it (in training and after), saving sample grids, loading it from
any of our files, interpolating in its latent space."""

from __future__ import annotations

import io
from pathlib import Path

import torch
from torch import nn

from dcgan.checkpoint import FORMAT, load_torch
from dcgan.errors import CheckpointError, first_line
from dcgan.io import atomic_write_bytes
from dcgan.models import G_ROWS, Generator, generator_width


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


def load_generator(path: str | Path, device: str | torch.device = "cpu") -> Generator:
    """A generator in eval mode from a ``dcgan_generator_*.pth`` state dict or a full-state
    checkpoint (``checkpoints/state_step_*.pt``). The latent size and the width are read from
    the weights."""
    path = Path(path)
    obj = load_torch(path)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        obj = obj.get("generator")
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} is not a generator state dict or a dcgan checkpoint")
    weight = obj.get("project.weight")
    if weight is None or weight.dim() != 2:
        raise CheckpointError(f"{path} does not hold a dcgan Generator (no project.weight; "
                              "is it a discriminator?)")
    width = generator_width(weight.shape[0])
    if width is None:
        raise CheckpointError(f"{path} does not fit the dcgan Generator: its first layer has "
                              f"{weight.shape[0]} outputs, not a multiple of "
                              f"{G_ROWS}")
    g = Generator(latent_dim=weight.shape[1], width=width)
    try:
        g.load_state_dict(obj)
    except RuntimeError as exc:
        raise CheckpointError(f"{path} does not fit the dcgan Generator: "
                              f"{first_line(exc)}") from None
    return g.to(device).eval()


def latent(n: int, latent_dim: int, seed: int) -> torch.Tensor:
    return torch.randn(n, latent_dim, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def sample(g: nn.Module, n: int, seed: int = 0, batch: int = 1000) -> torch.Tensor:
    """``n`` images (N, 1, 28, 28) in [-1, 1] on the CPU from noise seeded by ``seed``, in
    batches of ``batch``; eval-mode generator, global RNGs untouched (safe mid-training)."""
    device = next(g.parameters()).device
    noise = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, n, batch):
        z = torch.randn(min(batch, n - i), g.latent_dim, generator=noise).to(device)
        out.append(generate(g, z).cpu())
    return torch.cat(out)


def slerp(z0: torch.Tensor, z1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation (rows of z0, z1; t in [0, 1]); lerp where they are parallel.

    Gaussian latents concentrate on a shell of radius ~sqrt(d); slerp stays near it, while
    the midpoint of a straight line is shorter than typical vectors by about 1/sqrt(2)."""
    a, b = z0 / z0.norm(dim=-1, keepdim=True), z1 / z1.norm(dim=-1, keepdim=True)
    omega = torch.arccos((a * b).sum(-1, keepdim=True).clamp(-1.0, 1.0))
    so = torch.sin(omega)
    t = t.view(-1, 1)
    lerp = (1 - t) * z0 + t * z1
    arc = (torch.sin((1 - t) * omega) / so.clamp_min(1e-8)) * z0 + \
        (torch.sin(t * omega) / so.clamp_min(1e-8)) * z1
    return torch.where(so.abs() < 1e-6, lerp, arc)


@torch.no_grad()
def interpolate(g: Generator, pairs: int, steps: int, mode: str = "slerp",
                seed: int = 0) -> torch.Tensor:
    """(pairs, steps, 1, 28, 28): row i walks from one latent vector to another."""
    if mode not in ("lerp", "slerp"):
        raise ValueError(f"unknown interpolation mode {mode!r}")
    ends = latent(2 * pairs, g.latent_dim, seed)
    z0, z1 = ends[:pairs], ends[pairs:]
    t = torch.linspace(0, 1, steps)
    rows = []
    for i in range(pairs):
        a, b = z0[i].expand(steps, -1), z1[i].expand(steps, -1)
        w = t.view(-1, 1)
        rows.append(slerp(a, b, t) if mode == "slerp" else (1 - w) * a + w * b)
    z = torch.cat(rows).to(next(g.parameters()).device)
    return g(z).float().cpu().view(pairs, steps, 1, 28, 28)


def save_tensor(images: torch.Tensor, path: str | Path) -> None:
    """Raw images for other tools: ``.pt`` (torch) or ``.npy`` (numpy), atomically."""
    path = Path(path)
    buf = io.BytesIO()
    if path.suffix == ".npy":
        import numpy as np

        np.save(buf, images.numpy())
    else:
        torch.save(images, buf)
    atomic_write_bytes(path, buf.getvalue())


def save_gif(frames: torch.Tensor, path: str | Path, frame_ms: int = 120) -> None:
    """Frames (T, pairs, 1, 28, 28) in [-1, 1] -> an animated GIF, forth and back."""
    from PIL import Image
    from torchvision.utils import make_grid

    images = []
    for frame in frames:
        grid = make_grid(frame, nrow=frame.shape[0], normalize=True, value_range=(-1, 1),
                         padding=2)
        array = (grid[0] * 255).round().clamp(0, 255).to(torch.uint8).numpy()
        images.append(Image.fromarray(array, mode="L").resize(
            (array.shape[1] * 3, array.shape[0] * 3), Image.NEAREST))
    sequence = images + images[-2:0:-1]
    buf = io.BytesIO()
    sequence[0].save(buf, format="GIF", save_all=True, append_images=sequence[1:],
                     duration=frame_ms, loop=0)
    atomic_write_bytes(path, buf.getvalue())

