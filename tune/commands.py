"""``dcgan tune``, registered with the ``dcgan`` command through the ``dcgan.commands``
entry point (pyproject.toml). Ray is imported when the command runs."""

from __future__ import annotations

import argparse

from dcgan.cli_args import add_config_args, config_overrides, directory
from dcgan.config import Tristate
from dcgan.sinks import add_sink_args, sinks_from_args
from dcgan_tune.options import OBJECTIVES, SCHEDULERS, SearchOptions


def _add_tune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune", help="hyperparameter search with Ray Tune (balance objective)",
                       description="Search learning rates, dropout and label smoothing (or "
                                   "any config keys) against the balance objective, guarded "
                                   "by sample quality (docs/tuning.md).")
    p.add_argument("--out", type=directory, required=True, metavar="DIR", help="search directory")
    p.add_argument("--trials", type=int, default=SearchOptions.trials,
                   help=f"trials to run (default {SearchOptions.trials})")
    p.add_argument("--max-concurrent", type=int, default=SearchOptions.max_concurrent, metavar="K",
                   help="trials at once (default: CPU cores / workers per trial)")
    p.add_argument("--workers-per-trial", type=int, default=SearchOptions.workers_per_trial,
                   metavar="W",
                   help="1: each trial trains in its own process; W > 1: a TorchTrainer "
                        "with W DDP workers per trial")
    p.add_argument("--scheduler", default=SearchOptions.scheduler, choices=SCHEDULERS,
                   help="early stopping (asha), population-based training (pbt), or none "
                        f"(fifo); default {SearchOptions.scheduler}")
    p.add_argument("--budget-steps", type=int, default=SearchOptions.budget_steps, metavar="S",
                   help=f"training steps per trial (default {SearchOptions.budget_steps}: fewer "
                        "fail the quality guard on full MNIST); 4 reports per trial")
    p.add_argument("--metric", default=SearchOptions.metric, choices=OBJECTIVES,
                   help=f"objective to minimise (default {SearchOptions.metric}, guarded by "
                        "quality)")
    p.add_argument("--min-classes", type=int, default=SearchOptions.min_classes, metavar="N",
                   help="quality guard: a trial must draw at least N of the 10 digits "
                        f"(default {SearchOptions.min_classes}; only very short smoke searches "
                        "need less)")
    p.add_argument("--space", metavar="FILE.yaml", help="search space (default: g_lr, d_lr "
                   "log-uniform in [1e-5, 1e-3], dropout in [0, 0.5], label_smoothing in "
                   "[0, 0.3], label_smoothing_mode two-sided or one-sided)")
    p.add_argument("--baseline", action="store_true",
                   help="make trial 0 the base config's own values (the seed's by default), "
                        "measured the same way as the others")
    p.add_argument("--address", metavar="HOST:PORT",
                   help="an existing Ray cluster (default: RAY_ADDRESS, else a fresh local "
                        "instance)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted search with its saved settings")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the search already in DIR (its trials, results and Ray "
                        "storage; nothing else)")
    p.add_argument("--use-gpu", default="auto", choices=Tristate.CHOICES,
                   help="one GPU per trial worker (auto: if the Ray cluster reports GPUs)")
    add_config_args(p, "base config (YAML) for every trial",
                     "override one base config key (repeatable)")
    add_sink_args(p)
    p.set_defaults(func=_cmd_tune)


def _cmd_tune(args: argparse.Namespace) -> int:
    from dcgan_cluster.preflight import resolve_use_gpu
    from dcgan_tune.search import run_search

    run_search(SearchOptions(
        out=args.out, trials=args.trials, max_concurrent=args.max_concurrent,
        workers_per_trial=args.workers_per_trial, scheduler=args.scheduler,
        budget_steps=args.budget_steps, metric=args.metric, min_classes=args.min_classes,
        baseline=args.baseline,
        space_file=args.space,
        address=args.address, resume=args.resume, overwrite=args.overwrite,
        config_path=args.config,
        overrides=tuple(config_overrides(args)), use_gpu=resolve_use_gpu(args.use_gpu),
        sinks=tuple(sinks_from_args(args))))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    _add_tune(sub)
