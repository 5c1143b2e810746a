"""What many Prometheus scrapers cost a training run: ``dcgan train`` with its metrics
endpoint, alone and while ``--scrapers`` scrapers each scrape it every ``--interval`` seconds
(50 every second: 750 times what one Prometheus at its default 15 s asks), in alternating
rounds. The scrapers run on the same cores as the training (as they would not in a real
deployment), so their own work counts against it too.

    python -m dcgan_benchmarks.scrape_load [--scrapers 50] [--interval 1] [--rounds 2]

Training speed is read from the run's own statistics (steps per second between the warm-up
and the last step), so the scrapers' own work in this process is not counted as training.
Writes ``docs/results/scrape-load.json``. Needs MNIST (``DCGAN_DATA_DIR``); about 6 minutes on
2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq

from dcgan.io import atomic_write_text, results_json
from dcgan.layout import STATS_FILE

RUN = {"train_subset": 6400, "batch_size": 64, "max_steps": 500, "epochs": 5, "log_every": 50,
       "sample_every": 0, "checkpoint_every": 0, "eval_every": 0, "device": "cpu"}
WARMUP_STEPS = 100


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_run(workdir: Path, scrapers: int, interval: float, data_dir: str | None) -> dict:
    out, port = workdir / f"run-{time.monotonic_ns()}", free_port()
    args = [sys.executable, "-m", "dcgan.cli", "train", "--out", str(out), "--no-progress",
            "--metrics-port", str(port)]
    for key, value in {**RUN, **({"data_dir": data_dir} if data_dir else {})}.items():
        args += ["--set", f"{key}={value}"]
    url = f"http://127.0.0.1:{port}/metrics"
    stop, counts = threading.Event(), [0] * scrapers
    failures: list[float] = []  # when a scrape failed once the endpoint was up

    def scrape(i: int) -> None:
        stop.wait(interval * i / max(scrapers, 1))  # spread over the interval, as servers are
        while not stop.is_set():
            try:
                with urllib.request.urlopen(url, timeout=10) as response:
                    response.read()
                counts[i] += 1
            except OSError:
                if counts[i]:
                    failures.append(time.monotonic())
            stop.wait(interval)

    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    threads = [threading.Thread(target=scrape, args=(i,), daemon=True) for i in range(scrapers)]
    for t in threads:
        t.start()
    _, err = proc.communicate(timeout=1800)
    ended = time.monotonic()
    stop.set()
    for t in threads:
        t.join(timeout=30)
    if proc.returncode != 0:
        raise SystemExit(f"the training run failed:\n{err[-2000:]}")
    stats = pq.read_table(out / STATS_FILE).to_pydict()
    steps, times = stats["step"], stats["time"]
    rate = (steps[-1] - steps[WARMUP_STEPS]) / (times[-1] - times[WARMUP_STEPS])
    return {"scrapers": scrapers, "steps_per_s": round(rate, 3), "scrapes": sum(counts),
            # The endpoint closes as the run ends: what failed in its last 2 s is not a fault.
            "failed_scrapes": sum(t < ended - 2 for t in failures)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scrapers", type=int, default=50)
    parser.add_argument("--interval", type=float, default=1.0, metavar="SECONDS")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default="docs/results/scrape-load.json", metavar="FILE.json")
    args = parser.parse_args(argv)
    data_dir = os.environ.get("DCGAN_DATA_DIR")
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for scrapers in (0, args.scrapers):
                row = one_run(Path(tmp), scrapers, args.interval, data_dir)
                print(f"{scrapers:>3} scrapers: {row['steps_per_s']:.2f} steps/s "
                      f"({row['scrapes']:,} scrapes, {row['failed_scrapes']} failed)", flush=True)
                runs.append(row)
    best = {n: max(r["steps_per_s"] for r in runs if r["scrapers"] == n)
            for n in (0, args.scrapers)}
    cost = 1 - best[args.scrapers] / best[0]
    print(f"best of {args.rounds}: {best[0]:.2f} steps/s alone, {best[args.scrapers]:.2f} with "
          f"{args.scrapers} scrapers: {100 * cost:.1f}% slower")
    atomic_write_text(args.out, results_json({
        "date": time.strftime("%Y-%m-%d"), "cores": os.cpu_count(), "run": RUN,
        "scrapers": args.scrapers, "interval_s": args.interval,
        "warmup_steps": WARMUP_STEPS, "runs": runs, "best_steps_per_s": best,
        "cost": round(cost, 4)}))
    print(f"Wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
