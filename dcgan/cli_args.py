"""Argument types and groups shared by the ``dcgan`` command and the wings' subcommands
(``dcgan_cluster.commands``, ``dcgan_tune.commands``, ``dcgan_benchmarks.commands``), so that
a flag means the same thing wherever it appears."""

from __future__ import annotations

import argparse

from dcgan.errors import DCGANError


class UsageError(DCGANError):
    exit_code = 2


def bounded(most: int):
    def parse(text: str) -> int:
        value = positive(text)
        if value > most:
            raise argparse.ArgumentTypeError(f"must be at most {most:,} (got {value:,})")
        return value

    return parse


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (got {value})")
    return value


def add_config_args(p: argparse.ArgumentParser, config_help: str, set_help: str) -> None:
    p.add_argument("--config", metavar="FILE", help=config_help)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help=set_help)


def add_metrics_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metrics-port", type=int, default=0, metavar="PORT",
                   help="serve Prometheus metrics on this port (default 0: off)")
    p.add_argument("--metrics-host", default="127.0.0.1", metavar="HOST",
                   help="address the metrics endpoint listens on (default 127.0.0.1; "
                        "0.0.0.0 in containers)")
