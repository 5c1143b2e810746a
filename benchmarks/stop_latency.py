"""How long ``dcgan train`` takes to exit after one SIGTERM (what ``docker stop`` and Kubernetes
send, with a 10 s grace), at each moment of a run where it used to be slow: mid-training, during
an epoch-end evaluation, during the final rescoring, while the final files are written.

    python -m dcgan_benchmarks.stop_latency [--out docs/results/stop-latency.json]

Each case starts a small run, waits for the log line that marks its moment, sends SIGTERM and
times the exit; it also checks the promise that goes with it: status 143 and a full state
saved. Needs MNIST (``DCGAN_DATA_DIR``); about 3 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dcgan.checkpoint import list_states
from dcgan.io import atomic_write_text, results_json

BASE = {"train_subset": 2048, "batch_size": 64, "log_every": 1, "sample_every": 0,
        "checkpoint_every": 0, "eval_samples": 5000, "rescore_samples": 20000,
        "rescore_top": 2, "device": "cpu"}
# moment -> (extra config, the log text after which the signal goes, a delay after it)
CASES = {
    "mid-training": ({"epochs": 50}, "[Epoch 0] [Batch 10/32]", 0.0),
    "epoch-end evaluation": ({"epochs": 50}, "[Epoch 0] done", 0.5),
    "final rescoring": ({"epochs": 1}, "quality of EMA G", 0.5),
    "final files": ({"epochs": 1, "rescore_top": 0}, "quality of EMA G", 0.3),
}


def measure(name: str, workdir: Path, data_dir: str | None) -> dict:
    extra, marker, delay = CASES[name]
    out = workdir / name.replace(" ", "-")
    args = [sys.executable, "-m", "dcgan.cli", "train", "--out", str(out), "--no-progress"]
    for key, value in {**BASE, **extra, **({"data_dir": data_dir} if data_dir else {})}.items():
        args += ["--set", f"{key}={value}"]
    log = workdir / f"{out.name}.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 600
        while marker not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{name}: the run ended before {marker!r}:\n{log.read_text()}")
            time.sleep(0.05)
        time.sleep(delay)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(timeout=600)
        seconds = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
    return {"moment": name, "exit_s": round(seconds, 2), "status": status,
            "state_saved": bool(list_states(out))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="docs/results/stop-latency.json", metavar="FILE.json")
    args = parser.parse_args(argv)
    data_dir = os.environ.get("DCGAN_DATA_DIR")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in CASES:
            row = measure(name, Path(tmp), data_dir)
            print(f"{row['moment']:<22} exit after {row['exit_s']:5.2f} s, status "
                  f"{row['status']}, state saved: {row['state_saved']}", flush=True)
            rows.append(row)
    atomic_write_text(args.out, results_json({
        "date": time.strftime("%Y-%m-%d"), "threads": os.cpu_count(), "runs": rows}))
    print(f"Wrote {args.out}")
    return 0 if all(r["status"] == 143 and r["state_saved"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
