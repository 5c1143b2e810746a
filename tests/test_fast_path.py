"""The GPU fast path, checked on the CPU: device-resident uint8 data, blocked host copies,
memory format, torch.compile of the whole step, and their settings."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from dcgan.config import TrainConfig
from dcgan.data import BatchSampler, load_mnist, to_model_range
from dcgan.trainer import Trainer

from .conftest import one_line_error, run_cli, sets

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def images(data_dir):
    return load_mnist(data_dir, subset=256)[0]


def run(images, data_dir, steps=6, **overrides) -> Trainer:
    cfg = TrainConfig(train_subset=256, batch_size=32, epochs=1, max_steps=steps, device="cpu",
                      eval_every=0, data_dir=data_dir, **overrides)
    trainer = Trainer(cfg, images, CPU)
    trainer.fit()
    return trainer


def rows(trainer: Trainer) -> dict[str, list]:
    return {k: v for k, v in trainer.stats.columns.items() if k != "time"}


def test_uint8_batches_equal_the_float_pipeline(images):
    """Normalising each batch where it lives gives exactly the pre-normalised batches."""
    raw = BatchSampler(images, 32, seed=3, memory_format=torch.channels_last)
    pre = BatchSampler(to_model_range(images), 32, seed=3)
    for a, b in zip(raw.epoch(1), pre.epoch(1), strict=True):
        assert a.dtype == torch.float32 and a.shape == (32, 1, 28, 28)
        assert a.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(a, b)
    assert raw.images.dtype == torch.uint8  # a quarter of the memory on the device


@pytest.mark.slow
def test_trainer_on_uint8_equals_trainer_on_floats(images, data_dir):
    a = run(images, data_dir)
    b = run(to_model_range(images), data_dir)
    assert rows(a) == rows(b)


@pytest.mark.slow
def test_blocked_host_copies_keep_every_row_identical(images, data_dir):
    """Metrics reach the host every log_every steps; the rows equal a per-step copy's."""
    every_step = run(images, data_dir, steps=8, log_every=1)
    blocked = run(images, data_dir, steps=8, log_every=5)
    assert len(blocked.stats) == 8
    assert rows(every_step) == rows(blocked)


def test_memory_format_does_not_change_the_function(images, data_dir):
    nhwc = run(images, data_dir, steps=1, channels_last="true", dropout=0.0)
    nchw = run(images, data_dir, steps=1, channels_last="false", dropout=0.0)
    for key in ("d_loss", "g_loss", "d_real_prob", "d_fake_prob"):
        assert nhwc.stats.columns[key] == pytest.approx(nchw.stats.columns[key], abs=1e-5)


@pytest.mark.slow
def test_compiled_step_computes_the_same_function_as_eager(images, data_dir):
    """torch.compile of the whole step (inductor on the CPU). Dropout off: compiled and
    eager dropout draw from different RNGs. Inductor needs a C++ compiler: without one the
    test is skipped, except under CI=true, where it fails; any other error fails it."""
    if shutil.which("c++") is None and shutil.which("g++") is None:
        message = "no C++ compiler (c++/g++) for torch.compile's inductor backend"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    from torch._dynamo.utils import counters

    eager = run(images, data_dir, steps=4, dropout=0.0)
    torch._dynamo.reset()
    counters.clear()
    compiled = run(images, data_dir, steps=4, dropout=0.0, compile="default")
    # The step really went through the compiler (not eager under another name).
    assert hasattr(compiled.step_fn, "_torchdynamo_orig_callable")
    assert counters["stats"]["unique_graphs"] >= 1, dict(counters["stats"])
    e, c = eager.stats.columns, compiled.stats.columns
    # Step 0: same weights, batch and noise: the same numbers up to kernel rounding.
    for key in ("d_loss", "g_loss", "d_real_prob", "d_fake_prob"):
        assert c[key][0] == pytest.approx(e[key][0], abs=1e-5), key
    # Later steps drift by rounding only (Adam's first steps amplify it a little).
    for key in ("d_loss", "g_loss"):
        assert c[key] == pytest.approx(e[key], abs=2e-3), key
    for name, w in eager.generator.state_dict().items():
        assert torch.allclose(w.float(), compiled.generator.state_dict()[name].float(),
                              atol=4 * 2 * 2e-4), name  # at most ~lr per Adam step


@pytest.mark.parametrize("key, value, rule", [
    ("compile", "fast", "must be one of off, default, reduce-overhead, max-autotune"),
    ("channels_last", "yes", "must be one of auto, true, false"),
    ("precision", "fp8", "must be one of fp32, bf16, fp16"),
])
def test_fast_path_settings_are_validated(tmp_path, key, value, rule):
    proc = run_cli(["train", "--out", str(tmp_path / "r"), *sets({key: value})])
    assert proc.returncode == 2
    assert f"config: {key}: {rule}" in one_line_error(proc)


def test_bench_gpu_without_a_gpu_says_so(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: make bench-gpu runs the real benchmark")
    proc = run_cli(["bench-gpu", "--out", str(tmp_path / "b")])
    assert proc.returncode == 2
    assert "bench-gpu needs a CUDA GPU" in one_line_error(proc)
