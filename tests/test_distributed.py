"""``dcgan train-distributed``: Ray Train + DDP on 2 CPU workers of a real local Ray instance.

Each test starts its own Ray instance through the CLI (``address="local"``) and the CLI
shuts it down; a ``ray stop`` at the end of the module catches anything left over."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from dcgan.config import TrainConfig
from dcgan.data import load_mnist, to_model_range
from dcgan.stats import STATS_FILE
from dcgan.trainer import Trainer

from .conftest import ROOT, one_line_error, run_cli, sets

pytestmark = pytest.mark.slow

SMALL = {"train_subset": 640, "batch_size": 32, "epochs": 2, "log_every": 5, "sample_every": 10,
         "eval_samples": 200, "checkpoint_every": 1}


@pytest.fixture(scope="module", autouse=True)
def no_ray_left_behind():
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    yield
    subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "stop", "--force"],
                   capture_output=True, timeout=60, env=env)


def dist_args(out, data_dir, **overrides):
    return ["train-distributed", "--out", str(out), "--workers", "2", "--use-gpu", "false",
            *sets({**SMALL, "data_dir": data_dir, **overrides})]


def test_two_workers_end_to_end(tmp_path, data_dir):
    """Artifacts, every rank's metrics at the one endpoint, and a rerun that resumes."""
    from .test_monitoring import background, free_port, watch_ranks

    out, port = tmp_path / "run", free_port()
    with background([*dist_args(out, data_dir), "--metrics-port", str(port)],
                    tmp_path / "run.log") as proc:
        seen = watch_ranks(proc, port, timeout=240)
        log = (tmp_path / "run.log").read_text()
        assert proc.wait(timeout=60) == 0, log[-3000:]
    assert set(seen) == {"0", "1"}, log[-3000:]  # both ranks' series at one endpoint
    assert all(s["mode"] == "distributed" and s["run"] == "run" for s in seen.values())
    assert "SyncBatchNorm off (CPU workers" in log
    for name in ("dcgan_generator_final.pth", "dcgan_discriminator_final.pth", STATS_FILE,
                 "dcgan_final_samples.png", "dcgan_training_analysis.png",
                 "dcgan_diagnostics.json", "dcgan_eval_stats.parquet",
                 "dcgan_generator_epoch_1.pth", "dcgan_samples_epoch_0_batch_10.png"):
        assert (out / name).exists(), name
    stats = pq.read_table(out / STATS_FILE).to_pydict()
    # 640 images, 320 per rank, 16 per worker-batch: 20 steps per epoch, 40 in all.
    assert stats["step"] == list(range(40))
    # Rank averages of per-rank accuracies over 16 images are multiples of 1/32.
    assert all(abs(a * 32 - round(a * 32)) < 1e-4 for a in stats["d_real_acc"])
    # Every other command works on the distributed run unchanged.
    assert run_cli(["analyze", str(out)]).returncode == 0
    assert run_cli(["sample", "--generator", str(out / "dcgan_generator_final.pth"),
                    "--out", str(tmp_path / "s.png")]).returncode == 0
    # Rerunning with the same name (default: RUN_DIR's) resumes from the last checkpoint.
    again = run_cli([*dist_args(out, data_dir, epochs=3, eval_every=0, sample_every=0),
                     "--name", "run"], timeout=240)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Restored from the checkpoint at step 40" in again.stdout + again.stderr
    assert pq.read_table(out / STATS_FILE).to_pydict()["step"] == list(range(60))


def test_one_ddp_step_equals_averaged_gradients(tmp_path, data_dir):
    """2 workers x 32 images, one step, dropout 0, per-rank BatchNorm (CPU) == one process
    running both halves and averaging their gradients before each optimizer step."""
    out = tmp_path / "run"
    overrides = {"batch_size": 64, "dropout": 0.0, "max_steps": 1, "eval_every": 0,
                 "sample_every": 0, "checkpoint_every": 0}
    proc = run_cli(dist_args(out, data_dir, **overrides), timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]

    # Ray gives each worker OMP_NUM_THREADS=1; the same here keeps reduction orders alike
    # (Adam's first step moves every weight by ~lr * sign(grad), so a gradient that is
    # rounding noise around 0 would otherwise flip).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reference = _reference_step(data_dir, overrides)
    finally:
        torch.set_num_threads(threads)
    (g, d), d_losses = reference
    for name, module in (("generator", g), ("discriminator", d)):
        got = torch.load(out / f"dcgan_{name}_final.pth", weights_only=True)
        for key, value in module.named_parameters():
            assert torch.allclose(got[key], value, atol=1e-5), f"{name}.{key}"
    # The logged loss is the mean over ranks, as in local mode.
    row = pq.read_table(out / STATS_FILE).to_pydict()
    assert row["d_loss"][0] == pytest.approx(sum(d_losses) / 2, abs=1e-5)


def _reference_step(data_dir, overrides):
    cfg = TrainConfig(**{**SMALL, **overrides, "data_dir": data_dir, "batch_size": 32,
                         "device": "cpu"})
    images = to_model_range(load_mnist(data_dir, subset=cfg.train_subset)[0])
    cpu = torch.device("cpu")
    ref = Trainer(cfg, images, cpu, rank=0, world_size=2)
    halves = []
    for rank in (0, 1):
        shard = Trainer(cfg, images, cpu, rank=rank, world_size=2)
        real = next(shard.sampler.epoch(0))
        z = torch.randn(32, cfg.latent_dim, generator=shard.noise_gen)
        halves.append((real, z))
    g, d = ref.generator, ref.discriminator
    real_t, fake_t = torch.full((32,), 0.9), torch.full((32,), 0.1)
    fakes = [g(z) for _, z in halves]
    d_losses = []
    ref.opt_d.zero_grad()
    for (real, _), fake in zip(halves, fakes, strict=True):
        loss = (F.binary_cross_entropy_with_logits(d(real), real_t)
                + F.binary_cross_entropy_with_logits(d(fake.detach()), fake_t)) / 2
        (loss / 2).backward()
        d_losses.append(loss.item())
    ref.opt_d.step()
    d.requires_grad_(False)
    ref.opt_g.zero_grad()
    for fake in fakes:
        (F.binary_cross_entropy_with_logits(d(fake), real_t) / 2).backward()
    ref.opt_g.step()
    d.requires_grad_(True)
    return (g, d), d_losses


def test_worker_killed_after_a_checkpoint_restarts_and_finishes(tmp_path, data_dir):
    """Also: the metrics endpoint outlives the worker group, and the restarted workers'
    counters continue where the killed ones stopped."""
    from .test_monitoring import free_port, steps_by_rank

    out, port = tmp_path / "run", free_port()
    args = [*dist_args(out, data_dir, epochs=4, eval_every=0, sample_every=0),
            "--metrics-port", str(port)]
    proc = subprocess.Popen([sys.executable, "-m", "dcgan", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines, killed, before, after = [], None, {}, {}
    try:
        for line in proc.stdout:
            lines.append(line)
            # A few steps after the first checkpoint (Ray registers it asynchronously).
            if killed is None and "[Epoch 1] [Batch 10/20]" in line:
                before = {r: v for r, (v, _) in steps_by_rank(port).items()}
                killed = int(re.search(r"pid=(\d+)", line).group(1))
                os.kill(killed, signal.SIGKILL)
            if killed and not after and "[Epoch 2] [Batch 10/20]" in line:
                # The restarted group, same endpoint.
                after = {r: v for r, (v, _) in steps_by_rank(port).items()}
        proc.wait(timeout=300)
    finally:
        proc.kill()
        proc.wait()
    log = "".join(lines)
    assert killed is not None, log[-3000:]
    assert proc.returncode == 0, log[-3000:]
    assert set(before) == set(after) == {"0", "1"}, (before, after)
    assert all(after[r] > before[r] for r in after), (before, after)
    assert "Restored from the checkpoint at step 20" in log
    stats = pq.read_table(out / STATS_FILE).to_pydict()
    assert stats["step"] == list(range(80))  # the requested number of steps, no gaps
    assert "finished" in log and "at step 80" in log


@pytest.mark.parametrize("extra, code, needle", [
    (["--workers", "0"], 2, "--workers: must be >= 1"),
    (["--workers", "3"], 2, "does not divide evenly over 3 workers"),
    (["--address", "127.0.0.1:9"], 1, "cannot reach the Ray cluster at 127.0.0.1:9"),
    (["--storage", "/proc/dcgan-storage"], 1, "is not writable"),
])
def test_bad_input_fails_fast_with_one_line(tmp_path, data_dir, extra, code, needle):
    args = dist_args(tmp_path / "run", data_dir)
    if extra[0] == "--workers":
        args[args.index("--workers") + 1] = extra[1]
    else:
        args += extra
    started = time.monotonic()
    proc = run_cli(args, timeout=60)
    assert time.monotonic() - started < 30
    assert proc.returncode == code
    assert needle in one_line_error(proc)
