"""``dcgan bench``, ``dcgan bench-gpu`` and ``dcgan bench-quality``, registered with the ``dcgan``
command through the ``dcgan.commands`` entry point (pyproject.toml)."""

from __future__ import annotations

import argparse

from dcgan.cli_args import add_data_dir_arg, add_device_arg, bounded, directory, positive
from dcgan.config import MAX_EVAL_SAMPLES


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="images/s of this trainer against a plain PyTorch loop",
                       description="Training speed in images per second: a plain PyTorch "
                                   "loop (the baseline), this trainer at each precision, with "
                                   "augmentation, and under Ray Train with 1 and 2 workers; "
                                   "variants alternate over rounds and the best round counts "
                                   "(docs/benchmarks.md).")
    add_data_dir_arg(p)
    p.add_argument("--steps", type=positive, default=60, metavar="N",
                   help="timed steps per variant (default 60)")
    p.add_argument("--warmup", type=positive, default=15, metavar="N",
                   help="untimed steps per variant before the timed ones (default 15)")
    p.add_argument("--batch-size", type=positive, default=64, metavar="N",
                   help="images per step (default 64)")
    add_device_arg(p)
    p.add_argument("--rounds", type=positive, default=2, metavar="N",
                   help="alternating rounds; the best one counts (default 2)")
    p.add_argument("--variants", default=None, metavar="LIST",
                   help="comma-separated subset of: baseline, fp32, bf16, fp16, bf16+augment, "
                        "ray1, ray2 (default: all that this machine can run)")
    p.set_defaults(func=_cmd_bench)


def _cmd_bench(args: argparse.Namespace) -> int:
    from dcgan_benchmarks.throughput import main as bench_main

    return bench_main(args)


def _add_bench_gpu(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench-gpu", help="the GPU fast path: speed per setting, then the "
                                         "seed's 30 epochs timed and evaluated",
                       description="Needs a CUDA GPU; about 8 minutes (docs/benchmarks.md).")
    add_data_dir_arg(p)
    p.add_argument("--out", type=directory, default="runs/bench-gpu", metavar="DIR",
                   help="results folder (default runs/bench-gpu)")
    p.add_argument("--device", default="cuda", help="cuda or cuda:N")
    p.add_argument("--warmup", type=positive, default=30, metavar="N",
                   help="untimed steps per setting (default 30)")
    p.add_argument("--steps", type=positive, default=300, metavar="N",
                   help="timed steps per setting (default 300)")
    p.set_defaults(func=_cmd_bench_gpu)


def _cmd_bench_gpu(args: argparse.Namespace) -> int:
    from dcgan_benchmarks.gpu import main as bench_gpu_main

    return bench_gpu_main(args)


def _add_bench_quality(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench-quality", help="sample quality against wall-clock time, per "
                                             "configuration",
                       description="Train each configuration for the same wall-clock budget "
                                   "(30 minutes on a CPU; on a GPU, its full epochs), then "
                                   "score its best generator (docs/benchmarks.md).")
    p.add_argument("--configs", nargs="+", metavar="NAME=FILE",
                   help="configurations to compare (default: seed=configs/seed.yaml "
                        "recommended=configs/recommended.yaml)")
    p.add_argument("--budget-minutes", type=float, default=None,
                   help="training minutes per configuration (default 30 on a CPU; a GPU "
                        "trains the full epochs)")
    p.add_argument("--steps", type=positive, default=None, metavar="N",
                   help="a fixed budget of N training steps per run instead of minutes (the "
                        "same figure on any machine)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, metavar="SEED",
                   help="train each configuration once per seed (default: its config's seed)")
    p.add_argument("--final-samples", type=bounded(MAX_EVAL_SAMPLES), default=10000,
                   help="samples scoring each best generator (default 10000)")
    p.add_argument("--out", type=directory, default="runs/bench-quality", metavar="DIR",
                   help="the study's folder (default runs/bench-quality)")
    add_data_dir_arg(p)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key of every configuration (repeatable)")
    p.add_argument("--overwrite", action="store_true",
                   help="start the study in --out again (default: a rerun of the same command "
                        "skips the runs it finished and continues the one it stopped in)")
    p.add_argument("--merge", nargs="+", metavar="RESULTS", default=None,
                   help="train nothing: join finished studies (results.json files or their "
                        "folders) into one in --out, with their summary and charts")
    p.set_defaults(func=_cmd_bench_quality)


def _cmd_bench_quality(args: argparse.Namespace) -> int:
    from dcgan_benchmarks.quality import main as bench_quality_main

    return bench_quality_main(args)


def register(sub: argparse._SubParsersAction) -> None:
    _add_bench(sub)
    _add_bench_gpu(sub)
    _add_bench_quality(sub)
