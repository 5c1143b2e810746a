"""``dcgan`` command line. Every user error is one line on stderr and a non-zero status."""

from __future__ import annotations

import argparse
import sys

from dcgan.errors import DCGANError

EXIT_INTERRUPTED = {"SIGINT": 130, "SIGTERM": 143}


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train the DCGAN on one device (GPU if any, else CPU)",
                       description="Train the seed's DCGAN on MNIST in RUN_DIR.")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory")
    p.add_argument("--config", metavar="FILE", help="YAML file of config keys")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key (repeatable), e.g. --set epochs=5")
    p.add_argument("--resume", action="store_true",
                   help="continue from the latest full-state checkpoint in RUN_DIR")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run already in RUN_DIR")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    from dcgan.run import train_local
    from dcgan.trainer import Outcome

    trainer, outcome = train_local(args.out, args.config, args.overrides, resume=args.resume,
                                   overwrite=args.overwrite,
                                   progress=False if args.no_progress else None)
    if outcome is Outcome.INTERRUPTED:
        return EXIT_INTERRUPTED.get(trainer.stop_requested or "", 1)
    print(f"Artifacts in {args.out}")
    return 0


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="images/s of this trainer against a plain PyTorch loop")
    p.add_argument("--data-dir", help="MNIST folder (default: config default / DCGAN_DATA_DIR)")
    p.add_argument("--steps", type=int, default=60, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=15, help="untimed steps per variant")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds; best one counts")
    p.add_argument("--variants", default=None,
                   help="comma-separated subset of: baseline,fp32,bf16,fp16")
    p.set_defaults(func=_cmd_bench)


def _cmd_bench(args: argparse.Namespace) -> int:
    from dcgan.bench import main as bench_main

    return bench_main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dcgan", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(sub)
    _add_bench(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except DCGANError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
