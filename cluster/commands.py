"""``dcgan train-distributed``, registered with the ``dcgan`` command through the
``dcgan.commands`` entry point (pyproject.toml). Ray is imported when the command runs."""

from __future__ import annotations

import argparse

from dcgan.cli_args import add_config_args, config_overrides, directory
from dcgan.config import Tristate
from dcgan.sinks import add_sink_args, sinks_from_args


def _add_train_distributed(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-distributed", help="train with Ray Train + DDP across N workers",
                       description="The same training loop under Ray Train's TorchTrainer "
                                   "with DistributedDataParallel (gloo on CPUs, NCCL on GPUs).")
    p.add_argument("--out", type=directory, required=True, metavar="RUN_DIR", help="run directory")
    p.add_argument("--workers", type=int, required=True, metavar="N", help="training workers")
    p.add_argument("--use-gpu", default="auto", choices=Tristate.CHOICES,
                   help="one GPU per worker (auto: if the Ray cluster reports GPUs)")
    p.add_argument("--address", metavar="HOST:PORT",
                   help="an existing Ray cluster (default: RAY_ADDRESS, else a fresh local "
                        "instance)")
    p.add_argument("--storage", metavar="PATH_OR_URI",
                   help="where Ray keeps checkpoints (default RUN_DIR/ray; shared storage such "
                        "as NFS or s3:// on multi-node clusters)")
    p.add_argument("--name", metavar="NAME",
                   help="run name: Ray Train's checkpoints of the run are kept under it in the "
                        "storage (default: RUN_DIR's name)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in RUN_DIR from its latest checkpoint, with its saved "
                        "config (plus --config / --set, each change recorded)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run already in RUN_DIR (and its checkpoints)")
    p.add_argument("--cpus-per-worker", type=float, default=None, metavar="N",
                   help="CPUs reserved per worker (default: local instance: cores / workers; "
                        "cluster: 1)")
    p.add_argument("--gpus-per-worker", type=float, default=1.0, metavar="N",
                   help="GPUs per worker when using GPUs (default 1)")
    add_config_args(p, "YAML file of config keys", "override one config key (repeatable)")
    add_sink_args(p)
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (distributed runs print log lines only; accepted so "
                        "that a train command line works here unchanged)")
    p.set_defaults(func=_cmd_train_distributed)


def _cmd_train_distributed(args: argparse.Namespace) -> int:
    from dcgan_cluster.launch import train_distributed

    out = train_distributed(args.out, args.workers, use_gpu=args.use_gpu, address=args.address,
                            storage=args.storage, name=args.name, config_path=args.config,
                            overrides=config_overrides(args), cpus_per_worker=args.cpus_per_worker,
                            gpus_per_worker=args.gpus_per_worker,
                            sinks=sinks_from_args(args),
                            resume=args.resume, overwrite=args.overwrite)
    print(f"Distributed run {out['name']} finished in {out['seconds']:.1f}s at step "
          f"{out['metrics'].get('step')}; checkpoints in {out['storage']}; artifacts in "
          f"{args.out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    _add_train_distributed(sub)
