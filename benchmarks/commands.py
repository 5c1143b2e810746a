"""``dcgan bench``, ``dcgan bench-gpu`` and ``dcgan bench-quality``, registered with the ``dcgan``
command through the ``dcgan.commands`` entry point (pyproject.toml)."""

from __future__ import annotations

import argparse

from dcgan.cli_args import add_data_dir_arg, add_device_arg, bounded, directory, positive
from dcgan.config import MAX_EVAL_SAMPLES


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="images/s of this trainer against a plain PyTorch loop")
    add_data_dir_arg(p)
    p.add_argument("--steps", type=int, default=60, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=15, help="untimed steps per variant")
    p.add_argument("--batch-size", type=int, default=64)
    add_device_arg(p)
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds; best one counts")
    p.add_argument("--variants", default=None,
                   help="comma-separated subset of: baseline, fp32, bf16, fp16, bf16+augment, "
                        "ray1, ray2")
    p.set_defaults(func=_cmd_bench)


def _cmd_bench(args: argparse.Namespace) -> int:
    from dcgan_benchmarks.throughput import main as bench_main

    return bench_main(args)


def _add_bench_gpu(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench-gpu", help="the GPU fast path: speed per setting, then the "
                                         "seed's 30 epochs timed and evaluated",
                       description="Needs a CUDA GPU; about 8 minutes (docs/benchmarks.md).")
    add_data_dir_arg(p)
    p.add_argument("--out", type=directory, default="runs/bench-gpu", help="results folder")
    p.add_argument("--device", default="cuda", help="cuda or cuda:N")
    p.add_argument("--warmup", type=int, default=30, help="untimed steps per setting")
    p.add_argument("--steps", type=int, default=300, help="timed steps per setting")
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
    p.add_argument("--out", type=directory, default="runs/bench-quality", help="results folder")
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
