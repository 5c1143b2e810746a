"""The fixed MNIST classifier behind FID and Inception Score (``dcgan classifier train``).

FIDs from different feature extractors are not comparable, so this one is versioned: its
weights ship in the package (``dcgan/assets/``) and are checked against ``WEIGHTS_SHA256``
on load. ``docs/evaluation.md`` records how they were trained.
"""

from __future__ import annotations

import hashlib
import io
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dcgan.checkpoint import load_torch
from dcgan.errors import DCGANError, first_line
from dcgan.features import CLASSES, FEATURE_DIM
from dcgan.io import atomic_write_bytes

VERSION = "mnist-cnn-v1"
WEIGHTS_PATH = Path(__file__).with_name("assets") / "mnist_classifier_v1.pt"
WEIGHTS_SHA256 = "f47c815100d0b4069d0786320f8e26d24c36fd024a12a3901386b0eb61903cb7"


class EvaluatorError(DCGANError):
    """Classifier weights missing, corrupt or of the wrong shape."""


class MnistClassifier(nn.Module):
    """Two conv blocks and a 128-unit penultimate layer (the FID feature space).

    Inputs are images in [-1, 1] as the GAN produces them, (N, 1, 28, 28)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 28 -> 14
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 14 -> 7
            nn.Flatten(),
        )
        self.penultimate = nn.Sequential(nn.Linear(64 * 7 * 7, FEATURE_DIM), nn.ReLU())
        self.head = nn.Linear(FEATURE_DIM, CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.penultimate(self.conv(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_classifier(path: str | Path | None = None,
                    device: str | torch.device = "cpu") -> MnistClassifier:
    """The packaged classifier (SHA-256 checked), or the one at ``path`` (unchecked)."""
    packaged = path is None
    path = Path(path) if path is not None else WEIGHTS_PATH
    if not path.exists():
        raise EvaluatorError(f"classifier weights {path} are missing"
                             + (" (reinstall dcgan, or run: dcgan classifier train)"
                                if packaged else ""))
    if packaged and sha256(path) != WEIGHTS_SHA256:
        raise EvaluatorError(f"classifier weights {path} are corrupt: SHA-256 {sha256(path)[:16]}"
                             f"... does not match {WEIGHTS_SHA256[:16]}... ({VERSION})")
    unusable = "are unreadable or of the wrong shape"
    state = load_torch(path, what="classifier weights", error=EvaluatorError, unusable=unusable)
    model = MnistClassifier()
    try:
        model.load_state_dict(state)
    except Exception as exc:
        raise EvaluatorError(f"classifier weights {path} {unusable} "
                             f"({first_line(exc, limit=160)})") from None
    return model.to(device).eval()


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
             batch: int = 1000) -> float:
    correct = 0
    device = next(model.parameters()).device
    for i in range(0, len(images), batch):
        logits = model(images[i:i + batch].to(device))
        correct += int((logits.argmax(1).cpu() == labels[i:i + batch]).sum())
    return correct / len(images)


def train_classifier(data_dir: str, epochs: int = 3, *, seed: int = 0, batch_size: int = 128,
                     lr: float = 1e-3, log=print) -> tuple[MnistClassifier, float]:
    """Deterministic training (fixed seed, CPU, one thread-count-independent order)."""
    from dcgan.data import load_mnist, to_model_range

    images, labels = load_mnist(data_dir)
    test_images, test_labels = load_mnist(data_dir, train=False)
    x, xt = to_model_range(images), to_model_range(test_images)
    torch.manual_seed(seed)
    model = MnistClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    order = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        t0 = time.perf_counter()
        model.train()
        perm = torch.randperm(len(x), generator=order)
        for i in range(0, len(x), batch_size):
            idx = perm[i:i + batch_size]
            loss = F.cross_entropy(model(x[idx]), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        acc = accuracy(model, xt, test_labels)
        log(f"epoch {epoch}: test accuracy {100 * acc:.2f}% ({time.perf_counter() - t0:.0f}s)")
    return model, acc


def save_classifier(model: MnistClassifier, path: str | Path) -> str:
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, buf)
    atomic_write_bytes(path, buf.getvalue())
    return sha256(Path(path))
