import shutil
from pathlib import Path

import pytest
import torch

from dcgan.data import BatchSampler, check_idx_file, load_mnist, to_model_range
from dcgan.errors import DataError

from .conftest import one_line_error, run_cli, tiny_train_args

OFFLINE = {k: "http://127.0.0.1:9" for k in ("http_proxy", "https_proxy", "HTTP_PROXY",
                                              "HTTPS_PROXY")} | {"no_proxy": "", "NO_PROXY": ""}


def test_normalisation_matches_totensor_normalize(data_dir):
    from torchvision import datasets, transforms

    images, labels = load_mnist(data_dir, subset=50)
    assert images.shape == (50, 28, 28) and images.dtype == torch.uint8 and labels.shape == (50,)
    x = to_model_range(images)
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])
    ds = datasets.MNIST(data_dir, train=True, transform=tf)
    expected = torch.stack([ds[i][0] for i in range(50)])
    assert torch.equal(x, expected)
    assert x.min() == -1 and x.max() == 1


def test_sampler_is_seeded_per_epoch_and_drops_the_last_partial_batch():
    images = torch.arange(100).float().view(100, 1, 1, 1)
    s = BatchSampler(images, batch_size=32, seed=3)
    assert s.batches_per_epoch == 3
    e0, e0_again, e1 = list(s.epoch(0)), list(s.epoch(0)), list(s.epoch(1))
    assert all(torch.equal(a, b) for a, b in zip(e0, e0_again, strict=True))
    assert not torch.equal(e0[0], e1[0])
    seen = torch.cat(e0).flatten()
    assert len(seen.unique()) == 96  # no repeats inside an epoch
    assert torch.equal(torch.cat(list(s.epoch(0, start_batch=1))), torch.cat(e0[1:]))


def test_shards_partition_the_same_permutation():
    images = torch.arange(64).float().view(64, 1, 1, 1)
    shards = [BatchSampler(images, 8, seed=1, rank=r, world_size=2) for r in range(2)]
    a = torch.cat(list(shards[0].epoch(0))).flatten()
    b = torch.cat(list(shards[1].epoch(0))).flatten()
    assert len(set(a.tolist()) | set(b.tolist())) == 64 and not set(a.tolist()) & set(b.tolist())


def test_too_few_images_for_one_batch():
    with pytest.raises(DataError, match="not one full batch"):
        BatchSampler(torch.zeros(10, 1, 28, 28), batch_size=64, seed=0)


def _copy_mnist(data_dir: str, dest: Path) -> Path:
    raw = dest / "MNIST" / "raw"
    shutil.copytree(Path(data_dir) / "MNIST" / "raw", raw)
    for f in raw.iterdir():
        f.chmod(0o644)
    return raw


def test_truncated_file_is_named(data_dir, tmp_path):
    raw = _copy_mnist(data_dir, tmp_path)
    victim = raw / "train-images-idx3-ubyte"
    victim.write_bytes(victim.read_bytes()[:1_000_000])
    with pytest.raises(DataError, match="train-images-idx3-ubyte is truncated"):
        load_mnist(tmp_path)


def test_corrupt_header_is_named(data_dir, tmp_path):
    raw = _copy_mnist(data_dir, tmp_path)
    victim = raw / "train-labels-idx1-ubyte"
    data = bytearray(victim.read_bytes())
    data[0:4] = b"\xde\xad\xbe\xef"
    victim.write_bytes(bytes(data))
    with pytest.raises(DataError, match="train-labels-idx1-ubyte is corrupt"):
        check_idx_file(victim, 2049, (60000,))


def test_cli_missing_mnist_without_network(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_cli(tiny_train_args(tmp_path / "run", str(empty)), env=OFFLINE)
    assert proc.returncode == 1
    line = one_line_error(proc)
    assert f"data_dir={empty}" in line and "copy the four MNIST IDX files" in line
    assert not (tmp_path / "run").exists()


def test_cli_truncated_mnist(data_dir, tmp_path):
    raw = _copy_mnist(data_dir, tmp_path / "data")
    (raw / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03")
    proc = run_cli(tiny_train_args(tmp_path / "run", str(tmp_path / "data")), env=OFFLINE)
    assert proc.returncode == 1
    assert "train-images-idx3-ubyte is truncated" in one_line_error(proc)
