"""MNIST, loaded once into memory as one uint8 tensor, served in seeded random batches that are
normalised to [-1, 1] where the images live (on the training device).

torchvision reads (or downloads) the IDX files; we check them first so that a missing,
truncated or corrupt file gets a message naming it instead of a deep traceback. No PIL
transform runs in the hot loop: an epoch is a permutation and a gather per batch.
"""

from __future__ import annotations

import io
import math
import struct
from collections.abc import Iterator
from contextlib import redirect_stdout
from pathlib import Path

import torch

from dcgan.errors import DataError, first_line

TRAIN_FILES = {  # name -> (magic number, shape)
    "train-images-idx3-ubyte": (2051, (60000, 28, 28)),
    "train-labels-idx1-ubyte": (2049, (60000,)),
}
TEST_FILES = {
    "t10k-images-idx3-ubyte": (2051, (10000, 28, 28)),
    "t10k-labels-idx1-ubyte": (2049, (10000,)),
}
HOW_TO_PROVIDE = (
    "connect to the internet so torchvision can download it, or copy the four MNIST IDX files "
    "into {raw}/, or point data_dir (or DCGAN_DATA_DIR) at a folder holding MNIST/raw/"
)


def raw_dir(data_dir: str | Path) -> Path:
    return Path(data_dir) / "MNIST" / "raw"


def check_idx_file(path: Path, magic: int, shape: tuple[int, ...]) -> None:
    """Raise DataError unless ``path`` is a complete IDX file with this magic and shape."""
    try:
        with open(path, "rb") as fh:
            header = fh.read(4 + 4 * len(shape))
        size = path.stat().st_size
    except OSError as exc:
        raise DataError(f"cannot read MNIST file {path}: {exc.strerror}") from None
    expected = 4 + 4 * len(shape) + math.prod(shape)
    if len(header) < 4 + 4 * len(shape):
        raise DataError(f"MNIST file {path} is truncated ({size} bytes, expected {expected})")
    got_magic, *dims = struct.unpack(f">{1 + len(shape)}I", header)
    if got_magic != magic or tuple(dims) != shape:
        raise DataError(f"MNIST file {path} is corrupt (header says magic {got_magic}, shape "
                        f"{tuple(dims)}; expected magic {magic}, shape {shape})")
    if size != expected:
        raise DataError(f"MNIST file {path} is truncated or corrupt ({size} bytes, "
                        f"expected {expected})")


def _ensure_files(data_dir: Path, files: dict[str, tuple[int, tuple[int, ...]]]) -> None:
    raw = raw_dir(data_dir)
    missing = [name for name in files if not (raw / name).exists()]
    if missing:
        _download(data_dir, raw, missing[0])
    for name, (magic, shape) in files.items():
        check_idx_file(raw / name, magic, shape)


def _download(data_dir: Path, raw: Path, missing: str) -> None:
    from torchvision.datasets import MNIST

    print(f"MNIST not found in {raw}; downloading it with torchvision...", flush=True)
    chatter = io.StringIO()
    try:
        with redirect_stdout(chatter):
            for train in (True, False):
                MNIST(root=str(data_dir), train=train, download=True)
    except Exception as exc:  # torchvision raises RuntimeError, URLError, OSError...
        raise DataError(
            f"MNIST is not in data_dir={data_dir} (no {raw / missing}) and the download failed "
            f"({first_line(exc, limit=160)}): {HOW_TO_PROVIDE.format(raw=raw)}") from None


def check_mnist(data_dir: str | Path, train: bool = True, subset: int = 0) -> None:
    """Everything ``load_mnist`` checks (download if absent, complete IDX files, subset size)
    without reading the images: for drivers that only need to fail fast."""
    files = TRAIN_FILES if train else TEST_FILES
    _ensure_files(Path(data_dir), files)
    available = next(iter(files.values()))[1][0]
    if subset > available:
        raise DataError(f"train_subset={subset} but MNIST has only {available} images")


def load_mnist(data_dir: str | Path, train: bool = True,
               subset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (images uint8 (N, 28, 28), labels int64 (N,)): the first ``subset`` if > 0."""
    from torchvision.datasets import MNIST

    data_dir = Path(data_dir)
    check_mnist(data_dir, train, subset)
    try:
        ds = MNIST(root=str(data_dir), train=train, download=False)
    except Exception as exc:
        raise DataError(f"torchvision could not read MNIST in {raw_dir(data_dir)}: {exc}") from None
    images, labels = ds.data, ds.targets
    if subset:
        images, labels = images[:subset], labels[:subset]
    return images, labels


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float32 (N, 1, 28, 28) in [-1, 1], as ToTensor + Normalize(0.5, 0.5)."""
    return images.unsqueeze(1).float().div(255).sub(0.5).div(0.5)


def as_model_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 images as loaded (N, 28, 28), or float (N, 1, 28, 28) already in [-1, 1]: float
    (N, 1, 28, 28) in [-1, 1] either way."""
    return to_model_range(images) if images.dtype == torch.uint8 else images.float()


class BatchSampler:
    """Seeded, per-epoch shuffled batches of an in-memory image tensor.

    The order of epoch ``e`` depends only on ``(seed, e)``, so resuming needs only the epoch
    and the batch index, and every rank draws the same permutation before taking its shard
    (``rank::world_size``, as DistributedSampler does). Incomplete batches are dropped: the
    seed's ``[Batch 500/937]`` counts 60,000 // 64 = 937 batches, and fixed shapes keep
    BatchNorm statistics and compiled graphs steady.
    """

    def __init__(self, images: torch.Tensor, batch_size: int, seed: int,
                 rank: int = 0, world_size: int = 1, *,
                 memory_format: torch.memory_format = torch.contiguous_format):
        # uint8 (N, 28, 28) as loaded (a quarter of float32's memory: MNIST is 47 MB), or
        # float (N, 1, 28, 28) already in [-1, 1]. Batches come out float in [-1, 1].
        self.images = images
        self.memory_format = memory_format
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        per_rank = images.shape[0] // world_size
        self.batches_per_epoch = per_rank // batch_size
        if self.batches_per_epoch < 1:
            raise DataError(f"{images.shape[0]} training images are too few for batch_size="
                            f"{batch_size} on {world_size} worker(s): not one full batch")

    def permutation(self, epoch: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        perm = torch.randperm(self.images.shape[0], generator=gen)
        return perm[self.rank::self.world_size]

    def take(self, indices: torch.Tensor) -> torch.Tensor:
        """Images at ``indices`` as a float batch in [-1, 1], normalised where they live
        (on the GPU in GPU mode: no per-batch host-to-device copy)."""
        batch = as_model_input(self.images.index_select(0, indices.to(self.images.device)))
        return batch.contiguous(memory_format=self.memory_format)

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[torch.Tensor]:
        perm = self.permutation(epoch).to(self.images.device)
        b = self.batch_size
        for i in range(start_batch, self.batches_per_epoch):
            yield self.take(perm[i * b:(i + 1) * b])
