"""Sample quality with the fixed MNIST classifier: FID, Inception Score, class coverage.

FID and IS come from torchmetrics (custom feature extractors), not hand-written statistics.
FID is computed in the classifier's 128-d penultimate feature space against the MNIST test
set; IS uses its 10-way logits (so it is at most 10).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from dcgan.checkpoint import load_torch, save_torch
from dcgan.classifier import VERSION, MnistClassifier
from dcgan.errors import CheckpointError, DCGANError
from dcgan.features import FEATURE_DIM, MIN_SAMPLES

COVERED_FRACTION = 0.02  # a class is covered when more than 2% of samples fall in it
IS_SPLITS = 10
# torchmetrics' FID states that hold the real images' statistics.
REFERENCE_STATES = ("real_features_sum", "real_features_cov_sum", "real_features_num_samples")


class QualityError(DCGANError):
    exit_code = 2


class _Precomputed(nn.Module):
    """Features are computed once per batch by the caller; torchmetrics gets them as is."""

    def __init__(self, head: nn.Module | None = None):
        super().__init__()
        self.head = head if head is not None else nn.Identity()
        self.num_features = FEATURE_DIM

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)


@dataclass
class Quality:
    n: int
    fid: float
    inception_score: float
    inception_score_std: float
    class_fractions: list[float]
    classes_covered: int
    largest_class_fraction: float
    mean_confidence: float
    classifier: str = VERSION

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        return quality_summary(self.to_dict())


def quality_summary(q: Mapping) -> str:
    """One line of a quality row (a ``Quality`` as a dict, an evaluations row, or a best
    generator's record): the one format every command prints scores in."""
    confidence = (f" | confidence {q['mean_confidence']:.3f}" if "mean_confidence" in q
                  else "")
    return (f"FID {q['fid']:.2f} | IS {q['inception_score']:.2f} | classes covered "
            f"{q['classes_covered']}/10 | largest class {q['largest_class_fraction']:.3f}"
            + confidence)


class QualityMeter:
    """Holds the classifier and the real reference statistics (computed once)."""

    def __init__(self, classifier: MnistClassifier, real: torch.Tensor, batch: int = 1000,
                 cache: Path | None = None, name: str = VERSION):
        """``cache``: a folder for the reference statistics, keyed by the classifier's
        weights and ``real``. They cost seconds per run on a CPU (10,000 images through the
        classifier) and never change for the same inputs."""
        # torchmetrics pulls in torchvision and matplotlib (seconds): commands that fail on
        # bad input should not pay for them.
        from torchmetrics.image.fid import FrechetInceptionDistance

        self.clf = classifier.eval()
        self.name = name  # every score names the classifier it was measured with
        self.device = next(classifier.parameters()).device
        self.batch = batch
        # sync_on_compute=False: under DDP only rank 0 evaluates; torchmetrics must not wait
        # for the other ranks to join a gather.
        self.fid = FrechetInceptionDistance(feature=_Precomputed(), reset_real_features=False,
                                            input_img_size=(FEATURE_DIM,),
                                            sync_on_compute=False).to(self.device)
        path = cache / f"fid-reference-{reference_key(classifier, real)}.pt" if cache else None
        if not self._load_reference(path):
            with torch.no_grad():
                for chunk in real.split(batch):
                    self.fid.update(self.clf.features(chunk.to(self.device).float()), real=True)
            self._save_reference(path)

    def _load_reference(self, path: Path | None) -> bool:
        if path is None or not path.is_file():
            return False
        try:
            states = load_torch(path, what="FID reference statistics")
            ok = all(states[name].shape == getattr(self.fid, name).shape
                     for name in REFERENCE_STATES)
        except (CheckpointError, KeyError, AttributeError, TypeError):
            return False  # a corrupt or foreign file: recomputed and replaced
        if ok:
            for name in REFERENCE_STATES:
                setattr(self.fid, name, states[name].to(self.device))
        return ok

    def _save_reference(self, path: Path | None) -> None:
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_torch({name: getattr(self.fid, name).cpu() for name in REFERENCE_STATES}, path)
        except OSError:
            pass  # an unwritable cache only costs the recomputation next time

    @torch.no_grad()
    def measure(self, fake: torch.Tensor) -> Quality:
        """Quality of ``fake`` images (N, 1, 28, 28) in [-1, 1]."""
        n = len(fake)
        if n < MIN_SAMPLES:
            raise QualityError(f"{n} samples are too few: FID needs more samples than its "
                               f"{FEATURE_DIM} feature dimensions (at least {MIN_SAMPLES}; "
                               "10,000 is the standard)")
        from torchmetrics.image.inception import InceptionScore

        # IS shuffles with the global RNG: keep training's RNG untouched.
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
            torch.manual_seed(0)
            self.fid.reset()
            inception = InceptionScore(feature=_Precomputed(self.clf.head), splits=IS_SPLITS,
                                       sync_on_compute=False).to(self.device)
            probs = []
            for chunk in fake.split(self.batch):
                features = self.clf.features(chunk.to(self.device).float())
                self.fid.update(features, real=False)
                inception.update(features)
                probs.append(torch.softmax(self.clf.head(features), 1).cpu())
            fid = float(self.fid.compute())
            is_mean, is_std = (float(v) for v in inception.compute())
        p = torch.cat(probs)
        fractions = torch.bincount(p.argmax(1), minlength=10).double() / n
        return Quality(
            n=n, fid=max(fid, 0.0), inception_score=is_mean, inception_score_std=is_std,
            class_fractions=[round(float(f), 5) for f in fractions],
            classes_covered=int((fractions > COVERED_FRACTION).sum()),
            largest_class_fraction=float(fractions.max()),
            mean_confidence=float(p.max(1).values.mean()), classifier=self.name)


def cache_dir() -> Path:
    """Recomputable files: ``DCGAN_CACHE_DIR``, else ``$XDG_CACHE_HOME/dcgan``, else
    ``~/.cache/dcgan``."""
    if os.environ.get("DCGAN_CACHE_DIR"):
        return Path(os.environ["DCGAN_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "dcgan"


def reference_key(classifier: nn.Module, real: torch.Tensor) -> str:
    """Changes with any classifier weight and any reference pixel."""
    digest = hashlib.sha256(VERSION.encode())
    for tensor in (*classifier.state_dict().values(), real):
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()[:32]


def build_meter(data_dir: str, device: str | torch.device = "cpu",
                classifier: str | None = None) -> QualityMeter:
    """The classifier and the MNIST test set's reference statistics."""
    from dcgan.classifier import load_classifier
    from dcgan.data import load_mnist, to_model_range

    clf = load_classifier(classifier, device)
    test_images, _ = load_mnist(data_dir, train=False)
    # Scores from other weights are not comparable with mnist-cnn-v1's: they say so.
    name = VERSION if classifier is None else f"{classifier} (unchecked weights, not {VERSION})"
    return QualityMeter(clf, to_model_range(test_images), cache=cache_dir(), name=name)
