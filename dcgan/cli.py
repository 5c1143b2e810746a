"""``dcgan`` command line. Every user error is one line on stderr and a non-zero status."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, entry_points, version

from dcgan.cli_args import (
    Deprecated,
    UsageError,
    add_config_args,
    add_data_dir_arg,
    add_device_arg,
    add_image_arg,
    add_noise_seed_arg,
    bounded,
    config_overrides,
    directory,
    positive,
    require,
)
from dcgan.config import MAX_EVAL_SAMPLES
from dcgan.errors import DCGANError, error_line
from dcgan.paths import check_writable_file
from dcgan.sinks import add_sink_args, sinks_from_args

COMMANDS_GROUP = "dcgan.commands"
CLASSIFIER_OUT = "runs/classifier/mnist_classifier.pt"

EXIT_INTERRUPTED = {"SIGINT": 130, "SIGTERM": 143}
# Upper bounds on sizes (a typo's extra zeros must fail at once, not fill the memory):
MAX_GRID = 10_000  # images in one sample grid (a 1,250-row PNG at 8 per row)
MAX_WALK = 100  # interpolation steps per walk, and walks


def _add_config(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="print the resolved configuration as YAML",
                       description="Print the configuration a training command would use "
                                   "(defaults, then --config, then --set) as YAML that "
                                   "--config reads back to the same configuration.")
    add_config_args(p, "YAML file of config keys", "override one config key (repeatable)")
    p.set_defaults(func=_cmd_config)


def _cmd_config(args: argparse.Namespace) -> int:
    from dcgan.config import config_yaml, load_config, note_ignored_settings

    cfg = load_config(args.config, config_overrides(args))
    note_ignored_settings(cfg)
    sys.stdout.write(config_yaml(cfg))
    return 0


def _version() -> str:
    try:
        return version("dcgan")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train the DCGAN on one device (GPU if any, else CPU)",
                       description="Train the seed's DCGAN on MNIST in RUN_DIR.")
    p.add_argument("--out", type=directory, required=True, metavar="RUN_DIR", help="run directory")
    add_config_args(p, "YAML file of config keys",
                     "override one config key (repeatable), e.g. --set epochs=5")
    p.add_argument("--resume", action="store_true",
                   help="continue from the latest full-state checkpoint in RUN_DIR")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run already in RUN_DIR")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_sink_args(p)
    p.set_defaults(func=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    from dcgan.run import train_local
    from dcgan.trainer import Outcome

    trainer, outcome = train_local(args.out, args.config, config_overrides(args),
                                   resume=args.resume,
                                   overwrite=args.overwrite,
                                   progress=False if args.no_progress else None,
                                   sinks=sinks_from_args(args))
    if outcome is Outcome.INTERRUPTED:
        return EXIT_INTERRUPTED.get(trainer.stop_requested or "", 1)
    from pathlib import Path

    from dcgan.layout import BEST_GENERATOR

    best = Path(args.out) / BEST_GENERATOR
    print(f"Artifacts in {args.out}" + (f"; the best generator: {best}" if best.is_file()
                                        else ""))
    return 0


def _add_analyze(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("analyze", help="diagnostics report and 6-panel figure of a run",
                       description="Read RUN_DIR's statistics (also while it trains or after a "
                                   "stop), print the seed's report, write "
                                   "dcgan_training_analysis.png and dcgan_diagnostics.json.")
    p.add_argument("--out", dest="run_dir", type=directory, metavar="RUN_DIR",
                   help="the run directory to analyze (required)")
    p.add_argument("old_run_dir", nargs="?", metavar="RUN_DIR", help=argparse.SUPPRESS)
    p.add_argument("--window", type=positive, default=100,
                   help="iterations the report averages over (default 100)")
    p.add_argument("--smooth", type=positive, default=None,
                   help="moving-average window of the smoothed panels (default: ~5%% of the run)")
    p.set_defaults(func=_cmd_analyze)


def _cmd_analyze(args: argparse.Namespace) -> int:
    from dcgan.report import analyze_run

    if args.old_run_dir is not None:
        print("note: a positional RUN_DIR is deprecated and goes in the next release; use "
              "--out RUN_DIR", file=sys.stderr)
        if args.run_dir is None:
            args.run_dir = args.old_run_dir
    require(args.run_dir, "--out RUN_DIR")
    analyze_run(args.run_dir, window=args.window, smooth=args.smooth)
    return 0


def _add_generator_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--generator", required=True, metavar="PATH",
                   help="a dcgan_generator_*.pth or a full checkpoint (checkpoints/*.pt)")
    add_image_arg(p, "image grid")
    add_noise_seed_arg(p)
    add_device_arg(p)


def _add_sample(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="a grid of samples from a trained generator")
    _add_generator_args(p)
    p.add_argument("--n", type=bounded(MAX_GRID), default=64,
                   help=f"number of samples (default 64, at most {MAX_GRID:,})")
    p.add_argument("--nrow", type=positive, default=8, help="images per row (default 8)")
    p.add_argument("--save-tensor", metavar="FILE.pt|FILE.npy",
                   help="also save the raw images (N x 1 x 28 x 28, values in [-1, 1])")
    p.set_defaults(func=_cmd_sample)


def _cmd_sample(args: argparse.Namespace) -> int:
    from dcgan.generation import load_generator, sample, save_grid, save_tensor

    require(args.image, "--image FILE.png")
    _check_suffix(args.image, (".png",), "--image")
    check_writable_file(args.image, "--image")
    if args.save_tensor:
        _check_suffix(args.save_tensor, (".pt", ".npy"), "--save-tensor")
        check_writable_file(args.save_tensor, "--save-tensor")
    g = load_generator(args.generator, _device(args.device))
    images = sample(g, args.n, args.noise_seed)
    save_grid(images, args.image, nrow=args.nrow)
    print(f"Wrote {args.n} samples to {args.image}")
    if args.save_tensor:
        save_tensor(images, args.save_tensor)
        print(f"Wrote the images ({tuple(images.shape)}, values in [-1, 1]) to {args.save_tensor}")
    return 0


def _add_interpolate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("interpolate", help="walks through latent space between noise vectors")
    _add_generator_args(p)
    p.add_argument("--steps", type=bounded(MAX_WALK), default=10,
                   help=f"images per walk (default 10, at most {MAX_WALK})")
    p.add_argument("--pairs", type=bounded(MAX_WALK), default=8,
                   help=f"walks, one per row (default 8, at most {MAX_WALK})")
    p.add_argument("--mode", choices=("lerp", "slerp"), default="slerp",
                   help="straight line or great circle (default slerp)")
    p.add_argument("--gif", metavar="FILE.gif", help="also write an animated GIF")
    p.set_defaults(func=_cmd_interpolate)


def _cmd_interpolate(args: argparse.Namespace) -> int:
    from dcgan.generation import interpolate, load_generator, save_gif, save_grid

    require(args.image, "--image FILE.png")
    _check_suffix(args.image, (".png",), "--image")
    check_writable_file(args.image, "--image")
    if args.gif:
        _check_suffix(args.gif, (".gif",), "--gif")
        check_writable_file(args.gif, "--gif")
    if args.steps < 2:
        raise UsageError("--steps must be >= 2 (a walk has two ends)")
    g = load_generator(args.generator, _device(args.device))
    walks = interpolate(g, args.pairs, args.steps, args.mode, args.noise_seed)
    save_grid(walks.flatten(0, 1), args.image, nrow=args.steps)
    print(f"Wrote {args.pairs} {args.mode} walks of {args.steps} steps to {args.image}")
    if args.gif:
        save_gif(walks.transpose(0, 1), args.gif)
        print(f"Wrote the animation to {args.gif}")
    return 0


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="FID, Inception Score and class coverage of a generator",
                       description="Score N generated images with the fixed MNIST classifier "
                                   "against the MNIST test set (docs/evaluation.md).")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--generator", metavar="PATH",
                      help="a dcgan_generator_*.pth or a full checkpoint")
    what.add_argument("--reference", choices=("real", "noise"),
                      help="score a floor instead: N MNIST training images, or uniform noise")
    p.add_argument("--n", type=bounded(MAX_EVAL_SAMPLES), default=10000,
                   help=f"images to score (default 10000, at most {MAX_EVAL_SAMPLES:,})")
    add_noise_seed_arg(p)
    p.add_argument("--json", metavar="FILE.json", help="also write the results as JSON")
    add_data_dir_arg(p)
    p.add_argument("--classifier", metavar="PATH",
                   help="other classifier weights (default: the packaged, checksummed ones)")
    add_device_arg(p)
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    import torch

    from dcgan.config import TrainConfig
    from dcgan.features import MIN_SAMPLES
    from dcgan.io import atomic_write_text
    from dcgan.quality import QualityError, build_meter

    if args.n < MIN_SAMPLES:
        raise QualityError(f"--n {args.n} is too small: FID needs more samples than its feature "
                           f"dimensions (at least {MIN_SAMPLES}; 10,000 is the standard)")
    if args.json:
        check_writable_file(args.json, "--json")
    data_dir = args.data_dir or TrainConfig().data_dir
    device = _device(args.device)
    if args.generator:
        from dcgan.generation import load_generator, sample

        g = load_generator(args.generator, device)  # a bad file fails before the slow part
        meter = build_meter(data_dir, device, args.classifier)
        images, what = sample(g, args.n, args.noise_seed), args.generator
    else:
        meter = build_meter(data_dir, device, args.classifier)
        if args.reference == "real":
            from dcgan.data import load_mnist, to_model_range

            if args.n > 60000:
                raise QualityError(f"--n {args.n}: MNIST has 60,000 training images")
            train, _ = load_mnist(data_dir, subset=args.n)
            images, what = to_model_range(train), f"{args.n} MNIST training images"
        else:
            gen = torch.Generator().manual_seed(args.noise_seed)
            images = torch.rand(args.n, 1, 28, 28, generator=gen) * 2 - 1
            what = f"{args.n} images of uniform noise"
    q = meter.measure(images)
    print(f"Sample quality of {what} against the MNIST test set (classifier {q.classifier}):")
    rows = [("FID", f"{q.fid:.3f}"),
            ("Inception Score", f"{q.inception_score:.3f} ± {q.inception_score_std:.3f} (max 10)"),
            ("classes covered (> 2%)", f"{q.classes_covered}/10"),
            ("largest class fraction", f"{q.largest_class_fraction:.4f}"),
            ("mean classifier confidence", f"{q.mean_confidence:.4f}"),
            ("class histogram", " ".join(f"{d}:{f:.3f}" for d, f in enumerate(q.class_fractions)))]
    for name, value in rows:
        print(f"  {name:<27} {value}")
    if args.json:
        atomic_write_text(args.json, json.dumps({"what": what, "seed": args.noise_seed,
                                                 **q.to_dict()}, indent=2) + "\n")
        print(f"Wrote {args.json}")
    return 0


def _add_classifier(sub: argparse._SubParsersAction) -> None:
    # "evaluator": the command's name before it was renamed (beside `evaluate` it misled).
    p = sub.add_parser("classifier", help="the fixed MNIST classifier behind FID and IS")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    t = actions.add_parser("train", help="train the classifier deterministically")
    t.add_argument("--weights", metavar="FILE.pt", default=CLASSIFIER_OUT,
                   help=f"weights file to write (default {CLASSIFIER_OUT}; never the packaged, "
                        "checksummed weights that every FID here is measured with)")
    t.add_argument("--out", dest="weights", action=Deprecated, replacement="--weights FILE.pt")
    t.add_argument("--epochs", type=positive, default=5, metavar="N",
                   help="passes over MNIST's 60,000 training images (default 5)")
    add_data_dir_arg(t)
    t.set_defaults(func=_cmd_classifier_train)


def _cmd_classifier_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from dcgan.classifier import WEIGHTS_PATH, save_classifier, train_classifier
    from dcgan.config import TrainConfig

    out = Path(args.weights)
    if out.resolve() == WEIGHTS_PATH.resolve():
        raise UsageError(f"--weights {out} is the packaged classifier that every FID and IS here "
                         "is measured with; write new weights elsewhere (evaluate them with "
                         "dcgan evaluate --classifier FILE)")
    check_writable_file(out, "--weights")
    model, acc = train_classifier(args.data_dir or TrainConfig().data_dir, epochs=args.epochs)
    digest = save_classifier(model, out)
    print(f"Wrote {out}: test accuracy {100 * acc:.2f}%, SHA-256 {digest} (score with them: "
          f"dcgan evaluate --classifier {out})")
    return 0


def _check_suffix(path: str, suffixes: tuple[str, ...], flag: str) -> None:
    if not path.lower().endswith(suffixes):
        raise UsageError(f"{flag} {path} must end in {' or '.join(suffixes)}")


def _device(name: str):
    from dcgan.config import load_config
    from dcgan.device import resolve_device

    return resolve_device(load_config(overrides=[f"device={name}"]))


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line (and status 2), like every other dcgan error."""

    def error(self, message: str):
        self.exit(2, error_line(f"{message} (see: {self.prog} --help)") + "\n")


DESCRIPTION = ("Train a DCGAN that draws MNIST digits: on one device, across Ray workers, or "
               "as a hyperparameter search; score, diagnose and sample what it trained. "
               "'dcgan COMMAND --help' describes each command.")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="dcgan", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"dcgan {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(sub)
    for register in wing_commands():
        register(sub)
    _add_analyze(sub)
    _add_sample(sub)
    _add_interpolate(sub)
    _add_evaluate(sub)
    _add_classifier(sub)
    _add_config(sub)
    return parser


def wing_commands() -> list[Callable[[argparse._SubParsersAction], None]]:
    """The subcommands of the installed wings (train-distributed, tune, the benchmarks),
    registered from outside the core through the ``dcgan.commands`` entry points
    (pyproject.toml): the core names none of them, and imports without Ray."""
    found = sorted(entry_points(group=COMMANDS_GROUP), key=lambda ep: ep.name)
    return [ep.load() for ep in found]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["evaluator"]:  # the command's name before it was renamed
        print("note: dcgan evaluator is deprecated and goes in the next release; use "
              "dcgan classifier", file=sys.stderr)
        argv[0] = "classifier"
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except DCGANError as exc:
        print(error_line(exc), file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        # The file system failed under us (disk full, file too large, a folder removed or
        # made read-only mid-run): files are written atomically, so what was there is intact.
        where = f"{exc.filename}: " if exc.filename else ""
        print(error_line(f"{where}{exc.strerror or exc} (files written before are intact)"),
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except ModuleNotFoundError as exc:
        if exc.name != "ray" and not str(exc.name).startswith("ray."):
            raise
        print(f"error: dcgan {args.command} needs Ray, which is not installed here "
              "(pip install 'ray[default,train,tune]==2.60.0')", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
