"""``dcgan bench-gpu`` (``make bench-gpu``): the GPU fast path, measured in one command.

1. Per setting (eager fp32; bf16; bf16 + channels_last; + torch.compile with CUDA graphs;
   fp32 + CUDA graphs), in a fresh process: images/s and ms/step of the real ``Trainer``
   (device-resident uint8 MNIST, no host syncs in the step) at the seed's batch 64, and
   the projected time of the seed's 30 epochs (28,110 steps).
2. One full 30-epoch run of the fastest setting with the seed's configuration, timed end to
   end, then FID, IS and class coverage of 10,000 samples with the fixed classifier.

Everything fits in about 8 minutes on one modern GPU; results go to OUT/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from dcgan.config import TrainConfig

SEED_EPOCHS, SEED_BATCH, MNIST_TRAIN = 30, 64, 60000
SEED_STEPS = SEED_EPOCHS * (MNIST_TRAIN // SEED_BATCH)  # 28,110
SETTINGS = {
    "eager fp32": {"precision": "fp32", "channels_last": "false", "compile": "off"},
    "bf16": {"precision": "bf16", "channels_last": "false", "compile": "off"},
    "bf16 + channels_last": {"precision": "bf16", "channels_last": "true", "compile": "off"},
    "bf16 + channels_last + CUDA graphs": {"precision": "bf16", "channels_last": "true",
                                           "compile": "reduce-overhead"},
    "fp32 + channels_last + CUDA graphs": {"precision": "fp32", "channels_last": "true",
                                           "compile": "reduce-overhead"},
}
TIME_LIMIT_S = 8 * 60


def time_setting(data_dir: str, device: str, overrides: dict, warmup: int, steps: int) -> dict:
    """Steady-state speed of the real training loop (run in a child process)."""
    from dcgan.data import load_mnist
    from dcgan.trainer import Callback, Trainer

    dev = torch.device(device)

    class Timer(Callback):
        t0 = t1 = 0.0

        def on_step_end(self, trainer):
            if trainer.step in (warmup, warmup + steps):
                trainer.flush()  # stats reach the host, as in real runs
                torch.cuda.synchronize(dev)
                if trainer.step == warmup:
                    self.t0 = time.perf_counter()
                else:
                    self.t1 = time.perf_counter()

    cfg = TrainConfig(batch_size=SEED_BATCH, data_dir=data_dir, device=device,
                      max_steps=warmup + steps, eval_every=0, **overrides)
    images, _ = load_mnist(data_dir)
    timer = Timer()
    start = time.perf_counter()
    Trainer(cfg, images, dev, callbacks=[timer]).fit()
    ms = 1000 * (timer.t1 - timer.t0) / steps
    return {"ms_per_step": ms, "images_per_s": SEED_BATCH * 1000 / ms,
            "projected_30_epochs_s": SEED_STEPS * ms / 1000,
            "warmup_s": timer.t0 - start, "peak_mem_mib": torch.cuda.max_memory_allocated(dev)
            / 2**20}


def full_run(out: Path, data_dir: str, device: str, overrides: dict, max_steps: int) -> dict:
    """The seed's configuration with ``overrides``, timed end to end, then evaluated."""
    from dcgan.generation import sample
    from dcgan.quality import build_meter
    from dcgan.run import train_local

    sets = [f"{k}={v}" for k, v in overrides.items()] + [
        f"data_dir={data_dir}", f"device={device}", "eval_every=0", f"max_steps={max_steps}"]
    start = time.perf_counter()
    # The defaults are the seed's configuration (configs/seed.yaml repeats them).
    trainer, _ = train_local(out / "run", None, sets, overwrite=True, progress=False)
    wall = time.perf_counter() - start
    meter = build_meter(data_dir, torch.device(device))
    quality = meter.measure(sample(trainer.generator, 10000, 0))
    return {"steps": trainer.step, "epochs": trainer.step / trainer.batches_per_epoch,
            "training_s": trainer.elapsed(), "end_to_end_s": wall, **quality.to_dict()}


def _child(args: argparse.Namespace) -> int:
    result = time_setting(args.data_dir, args.device, SETTINGS[args.setting], args.warmup,
                          args.steps)
    print(json.dumps(result))
    return 0


def main(args: argparse.Namespace) -> int:
    if not torch.cuda.is_available():
        print("error: bench-gpu needs a CUDA GPU and none is visible (torch.cuda.is_available() "
              "is False); run it on a GPU machine: make bench-gpu", file=sys.stderr)
        return 2
    started = time.perf_counter()
    data_dir = args.data_dir or TrainConfig().data_dir
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gpu = torch.cuda.get_device_name(0)
    print(f"dcgan bench-gpu: {gpu}, torch {torch.__version__}, batch {SEED_BATCH}, "
          f"{args.warmup} warm-up + {args.steps} timed steps per setting", flush=True)
    rows = {}
    for name in SETTINGS:
        cmd = [sys.executable, "-m", "dcgan_benchmarks.gpu", "--child", name, "--data-dir",
               data_dir, "--device", args.device, "--warmup", str(args.warmup), "--steps",
               str(args.steps)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            print(f"  {name}: failed: {tail}", flush=True)
            continue
        rows[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        r = rows[name]
        print(f"  {name:<36} {r['images_per_s']:9.0f} img/s {r['ms_per_step']:7.2f} ms/step "
              f"-> 30 epochs in {r['projected_30_epochs_s']:6.1f} s (warm-up "
              f"{r['warmup_s']:.0f} s)", flush=True)
    if not rows:
        print("error: every setting failed", file=sys.stderr)
        return 1
    fastest = min(rows, key=lambda n: rows[n]["ms_per_step"])
    # Stay within the time limit: cap the full run if the projection does not fit.
    left = TIME_LIMIT_S - (time.perf_counter() - started) - 60  # evaluation and start-up
    steps = SEED_STEPS if rows[fastest]["projected_30_epochs_s"] < left else max(
        1000, int(left * 1000 / rows[fastest]["ms_per_step"]))
    print(f"\nFull run: the seed's 30 epochs with '{fastest}'"
          + ("" if steps == SEED_STEPS else f", capped at {steps} steps to fit the time limit"),
          flush=True)
    full = full_run(out, data_dir, args.device, SETTINGS[fastest], steps)
    print("\n| setting | images/s | ms/step | projected 30 epochs | warm-up | peak memory |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['images_per_s']:.0f} | {r['ms_per_step']:.2f} | "
              f"{r['projected_30_epochs_s']:.1f} s | {r['warmup_s']:.0f} s | "
              f"{r['peak_mem_mib']:.0f} MiB |")
    from dcgan.quality import quality_summary

    print(f"\nFull run ({fastest}, {full['epochs']:.1f} epochs, {full['steps']} steps): "
          f"training {full['training_s']:.1f} s, end to end {full['end_to_end_s']:.1f} s; "
          f"{quality_summary(full)}")
    results = {"gpu": gpu, "torch": torch.__version__, "settings": SETTINGS, "timed": rows,
               "fastest": fastest, "full_run": full,
               "total_s": time.perf_counter() - started}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"Results in {out / 'results.json'} ({results['total_s']:.0f} s in all)")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", dest="setting", required=True, choices=list(SETTINGS))
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--steps", type=int, default=300)
    sys.exit(_child(parser.parse_args()))
