"""``dcgan bench``: steady-state training images/s of this trainer against a plain PyTorch loop.

The baseline is the loop a user of the seed would write: a torchvision ``DataLoader`` with
``ToTensor``/``Normalize`` transforms, the same networks and losses in fp32, and ``.item()``
on every step to record the seed's per-iteration statistics. Each variant runs in its own
process (fresh allocator, its own peak memory), rounds alternate between variants to spread
machine noise, and the best round counts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from dcgan.config import TrainConfig
from dcgan.layout import STATS_FILE, TIMING_FILE
from dcgan.models import build_models

VARIANTS = {
    "baseline": "plain PyTorch loop: DataLoader + ToTensor/Normalize, fp32, .item() per step",
    "fp32": "dcgan trainer, fp32 (in-memory data, channels_last, foreach Adam, no host syncs)",
    "bf16": "dcgan trainer, bf16 autocast (same, plus bf16 matmuls/convs)",
    "fp16": "dcgan trainer, fp16 autocast + grad scaler (GPU only)",
    "bf16+augment": "dcgan trainer, bf16, every image D sees translated and cut out "
                    "(augment p = 1: the most augmentation costs)",
    "ray1": "dcgan train-distributed, Ray Train + DDP (gloo), 1 CPU worker, fp32",
    "ray2": "dcgan train-distributed, Ray Train + DDP (gloo), 2 CPU workers, fp32",
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_baseline(data_dir: str, batch_size: int, warmup: int, steps: int,
                 device: torch.device) -> float:
    from torch import nn
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    from dcgan.data import check_mnist

    check_mnist(data_dir)  # same checks (and download) as the trainer
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])
    loader = DataLoader(datasets.MNIST(data_dir, train=True, transform=tf), batch_size=batch_size,
                        shuffle=True, drop_last=True)
    torch.manual_seed(0)
    g, d = build_models()
    g, d = g.to(device), d.to(device)
    opt_g = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    bce = nn.BCEWithLogitsLoss()
    history = []
    start = None
    for i, (real, _) in enumerate(loader):
        if i == warmup:
            _sync(device)
            start = time.perf_counter()
        if i == warmup + steps:
            break
        real = real.to(device)
        n = real.shape[0]
        real_t, fake_t = torch.full((n,), 0.9, device=device), torch.full((n,), 0.1, device=device)
        z = torch.randn(n, 100, device=device)
        fake = g(z)
        opt_d.zero_grad()
        real_out, fake_out = d(real), d(fake.detach())
        d_loss = (bce(real_out, real_t) + bce(fake_out, fake_t)) / 2
        d_loss.backward()
        opt_d.step()
        opt_g.zero_grad()
        g_loss = bce(d(fake), real_t)
        g_loss.backward()
        opt_g.step()
        history.append((d_loss.item(), g_loss.item(), (real_out > 0).float().mean().item(),
                        (fake_out < 0).float().mean().item()))
    _sync(device)
    return steps * batch_size / (time.perf_counter() - start)


def run_trainer(data_dir: str, batch_size: int, *, warmup: int, steps: int,
                device: torch.device, precision: str, augment: bool = False) -> float:
    from dcgan.data import load_mnist
    from dcgan.trainer import Callback, Trainer

    class Timer(Callback):
        t0 = t1 = None

        def on_step_end(self, trainer):
            if trainer.step == warmup:
                _sync(device)
                self.t0 = time.perf_counter()
            elif trainer.step == warmup + steps:
                trainer.flush()  # the stats must reach the host, as in real runs
                _sync(device)
                self.t1 = time.perf_counter()

    extra = {"augment": "translation,cutout", "augment_p": 1.0} if augment else {}
    cfg = TrainConfig(batch_size=batch_size, data_dir=data_dir, precision=precision,
                      max_steps=warmup + steps, device=str(device), log_every=100, **extra)
    images, _ = load_mnist(data_dir)
    timer = Timer()
    Trainer(cfg, images, device, callbacks=[timer]).fit()
    return steps * batch_size / (timer.t1 - timer.t0)


def run_ray(data_dir: str, batch_size: int, warmup: int, steps: int,
            workers: int) -> tuple[float, float]:
    """Steady-state images/s from the run's own per-step times, and start-to-first-step."""
    import tempfile

    import pyarrow.parquet as pq

    from dcgan_cluster.launch import train_distributed

    with tempfile.TemporaryDirectory() as tmp:
        overrides = [f"data_dir={data_dir}", f"batch_size={batch_size}",
                     f"max_steps={warmup + steps}", "eval_every=0", "sample_every=0",
                     "checkpoint_every=0", "log_every=1000", "device=cpu"]
        train_distributed(Path(tmp) / "run", workers, use_gpu="false", overrides=overrides)
        times = pq.read_table(Path(tmp) / "run" / STATS_FILE).column(
            "time").to_pylist()
        startup = json.loads((Path(tmp) / "run" / TIMING_FILE).read_text())
    ips = steps * batch_size / (times[warmup + steps - 1] - times[warmup - 1])
    return ips, startup["start_to_first_step_s"]


def _child(args: argparse.Namespace) -> int:
    device = torch.device(args.device)
    if args.variant.startswith("ray"):
        ips, startup = run_ray(args.data_dir, args.batch_size, args.warmup, args.steps,
                               int(args.variant[3:]))
        # The workers are Ray's processes, not this one's: no peak RSS to report here.
        print(json.dumps({"variant": args.variant, "images_per_s": ips, "peak_rss_mib": None,
                          "start_to_first_step_s": startup}))
        return 0
    if args.variant == "baseline":
        ips = run_baseline(args.data_dir, args.batch_size, args.warmup, args.steps, device)
    else:
        precision, _, extra = args.variant.partition("+")
        ips = run_trainer(args.data_dir, args.batch_size, warmup=args.warmup, steps=args.steps,
                          device=device, precision=precision, augment=extra == "augment")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    print(json.dumps({"variant": args.variant, "images_per_s": ips, "peak_rss_mib": peak}))
    return 0


def main(args: argparse.Namespace) -> int:
    from dcgan.config import load_config
    from dcgan.device import resolve_device

    data_dir = args.data_dir or TrainConfig().data_dir
    device = resolve_device(load_config(overrides=[f"device={args.device}"]))
    args.device = str(device)  # the variants' subprocesses get the resolved device
    names = args.variants.split(",") if args.variants else (
        ["baseline", "fp32", "fp16" if device.type == "cuda" else "bf16", "ray1", "ray2"])
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        print(f"error: unknown variant {unknown[0]} (known: {', '.join(VARIANTS)})",
              file=sys.stderr)
        return 2
    rounds = max(args.rounds, 1)
    best: dict[str, dict] = {}
    print(f"dcgan bench: {args.device}, batch {args.batch_size}, {args.warmup} warm-up + "
          f"{args.steps} timed steps per round, {rounds} round(s), "
          f"{torch.get_num_threads()} torch threads, torch {torch.__version__}", flush=True)
    for r in range(rounds):
        for name in names:
            cmd = [sys.executable, "-m", "dcgan_benchmarks.throughput", "--child", name,
                   "--data-dir", data_dir,
                   "--device", args.device, "--batch-size", str(args.batch_size),
                   "--warmup", str(args.warmup), "--steps", str(args.steps)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
            if proc.returncode != 0:
                tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
                print(f"error: variant {name} failed: {tail}", file=sys.stderr)
                return 1
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            extra = (f", first step {result['start_to_first_step_s']:.1f}s after start"
                     if "start_to_first_step_s" in result else "")
            print(f"  round {r + 1} {name:>8}: {result['images_per_s']:8.1f} img/s{extra}",
                  flush=True)
            if name not in best or result["images_per_s"] > best[name]["images_per_s"]:
                best[name] = result
    base = best.get("baseline", {}).get("images_per_s")
    print()
    local = best.get("fp32", {}).get("images_per_s")
    print("| variant | images/s | vs baseline | vs local fp32 | start to first step | "
          "peak RSS (MiB) | what |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for name in names:
        res = best[name]
        ratio = f"{res['images_per_s'] / base:.2f}x" if base else "-"
        vs_local = f"{res['images_per_s'] / local:.2f}x" if local else "-"
        startup = (f"{res['start_to_first_step_s']:.1f} s" if "start_to_first_step_s" in res
                   else "-")
        rss = f"{res['peak_rss_mib']:.0f}" if res.get("peak_rss_mib") else "-"
        print(f"| {name} | {res['images_per_s']:.1f} | {ratio} | {vs_local} | {startup} | "
              f"{rss} | {VARIANTS[name]} |")
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", dest="variant", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=15)
    parser.add_argument("--steps", type=int, default=60)
    sys.exit(_child(parser.parse_args()))
