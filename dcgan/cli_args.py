"""Argument types and groups shared by the ``dcgan`` command and the wings' subcommands
(``dcgan_cluster.commands``, ``dcgan_tune.commands``, ``dcgan_benchmarks.commands``), so that
a flag means the same thing wherever it appears."""

from __future__ import annotations

import argparse

from dcgan.errors import DCGANError, shown


class UsageError(DCGANError):
    exit_code = 2


def bounded(most: int):
    def parse(text: str) -> int:
        value = positive(text)
        if value > most:
            raise argparse.ArgumentTypeError(f"must be at most {most:,} (got {shown(value)})")
        return value

    return parse


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{shown(text)} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (got {shown(value)})")
    return value


def seed_number(text: str) -> int:
    """A seed for the random generators: 0 to ``MAX_INT``."""
    from dcgan.config import MAX_INT

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{shown(text)} is not an integer") from None
    if not 0 <= value <= MAX_INT:
        raise argparse.ArgumentTypeError(f"must be in 0-{MAX_INT} (got {shown(value)})")
    return value


def directory(text: str) -> str:
    """A directory argument: not empty (an empty --out would write into the current
    directory)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must name a directory (got an empty string)")
    return text


def add_config_args(p: argparse.ArgumentParser, config_help: str, set_help: str) -> None:
    """--config FILE, --set KEY=VALUE (repeatable) and --data-dir DIR; read them back with
    ``config_overrides``."""
    p.add_argument("--config", metavar="FILE", help=config_help)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help=set_help)
    add_data_dir_arg(p)


# -- one convention per flag --------------------------------------------------------------------
# --out        the directory a command writes (a run, a search, a benchmark's results)
# --image      the one PNG a command writes; --weights the one .pt file
# --device     auto (a GPU if there is one, else the CPU), cpu, cuda, cuda:N
# --seed       the training seed (a config key, default 42) and nothing else; the noise a
#              trained generator is sampled or scored with is --noise-seed (default 0, the
#              seed every documented score uses)
# --data-dir   the MNIST folder, on every command that reads MNIST (= --set data_dir=...)
NOISE_SEED = 0
DATA_DIR_HELP = "MNIST folder (default: DCGAN_DATA_DIR, else ./data; = --set data_dir=DIR)"


class Deprecated(argparse.Action):
    """An old spelling kept for one release: it works, says what replaces it in one line on
    stderr, and stays out of the help."""

    def __init__(self, option_strings, dest, replacement: str, **kwargs):
        self.replacement = replacement
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        import sys

        print(f"note: {option_string} is deprecated and goes in the next release; use "
              f"{self.replacement}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto",
                   help="auto (default: a GPU if there is one, else the CPU), cpu, cuda, cuda:N")


def add_noise_seed_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--noise-seed", type=seed_number, default=NOISE_SEED, metavar="N",
                   help=f"seed of the noise fed to the generator (default {NOISE_SEED})")
    p.add_argument("--seed", dest="noise_seed", type=seed_number, action=Deprecated,
                   replacement="--noise-seed N")


def add_data_dir_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", metavar="DIR", help=DATA_DIR_HELP)


def add_image_arg(p: argparse.ArgumentParser, what: str) -> None:
    """--image FILE.png (the one file the command writes); --out, its old name."""
    p.add_argument("--image", metavar="FILE.png", help=f"{what} to write (required)")
    p.add_argument("--out", dest="image", action=Deprecated, replacement="--image FILE.png")


def require(value, flag: str) -> None:
    if value is None:
        raise UsageError(f"{flag} is required")


def config_overrides(args: argparse.Namespace) -> list[str]:
    """--set KEY=VALUE pairs, with --data-dir DIR as the last one (the flag wins)."""
    data_dir = getattr(args, "data_dir", None)
    return [*args.overrides, *([f"data_dir={data_dir}"] if data_dir else [])]
