"""``dcgan`` command line. Every user error is one line on stderr and a non-zero status."""

from __future__ import annotations

import argparse
import sys

from dcgan.config import MAX_EVAL_SAMPLES
from dcgan.errors import DCGANError
from dcgan.paths import check_writable_file

EXIT_INTERRUPTED = {"SIGINT": 130, "SIGTERM": 143}
# Upper bounds on sizes (a typo's extra zeros must fail at once, not fill the memory):
MAX_GRID = 10_000  # images in one sample grid (a 1,250-row PNG at 8 per row)
MAX_WALK = 100  # interpolation steps per walk, and walks


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train the DCGAN on one device (GPU if any, else CPU)",
                       description="Train the seed's DCGAN on MNIST in RUN_DIR.")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory")
    _add_config_args(p, "YAML file of config keys",
                     "override one config key (repeatable), e.g. --set epochs=5")
    p.add_argument("--resume", action="store_true",
                   help="continue from the latest full-state checkpoint in RUN_DIR")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run already in RUN_DIR")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_metrics_args(p)
    p.set_defaults(func=_cmd_train)


def _add_config_args(p: argparse.ArgumentParser, config_help: str, set_help: str) -> None:
    p.add_argument("--config", metavar="FILE", help=config_help)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help=set_help)


def _add_metrics_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metrics-port", type=int, default=0, metavar="PORT",
                   help="serve Prometheus metrics on this port (default 0: off)")
    p.add_argument("--metrics-host", default="127.0.0.1", metavar="HOST",
                   help="address the metrics endpoint listens on (default 127.0.0.1; "
                        "0.0.0.0 in containers)")


def _cmd_train(args: argparse.Namespace) -> int:
    from dcgan.run import train_local
    from dcgan.trainer import Outcome

    trainer, outcome = train_local(args.out, args.config, args.overrides, resume=args.resume,
                                   overwrite=args.overwrite,
                                   progress=False if args.no_progress else None,
                                   metrics_host=args.metrics_host,
                                   metrics_port=args.metrics_port)
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
    from dcgan_benchmarks.throughput import main as bench_main

    return bench_main(args)


def _add_bench_gpu(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench-gpu", help="the GPU fast path: speed per setting, then the "
                                         "seed's 30 epochs timed and evaluated",
                       description="Needs a CUDA GPU; about 8 minutes (docs/benchmarks.md).")
    p.add_argument("--data-dir", help="MNIST folder (default: config default / DCGAN_DATA_DIR)")
    p.add_argument("--out", default="runs/bench-gpu", help="results folder")
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
    p.add_argument("--steps", type=_positive, default=None, metavar="N",
                   help="a fixed budget of N training steps per run instead of minutes (the "
                        "same figure on any machine)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, metavar="SEED",
                   help="train each configuration once per seed (default: its config's seed)")
    p.add_argument("--final-samples", type=_bounded(MAX_EVAL_SAMPLES), default=10000,
                   help="samples scoring each best generator (default 10000)")
    p.add_argument("--out", default="runs/bench-quality", help="results folder")
    p.add_argument("--data-dir", help="MNIST folder (default: config default / DCGAN_DATA_DIR)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key of every configuration (repeatable)")
    p.set_defaults(func=_cmd_bench_quality)


def _cmd_bench_quality(args: argparse.Namespace) -> int:
    from dcgan_benchmarks.quality import main as bench_quality_main

    return bench_quality_main(args)


def _add_train_distributed(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-distributed", help="train with Ray Train + DDP across N workers",
                       description="The same training loop under Ray Train's TorchTrainer "
                                   "with DistributedDataParallel (gloo on CPUs, NCCL on GPUs).")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory")
    p.add_argument("--workers", type=int, required=True, metavar="N", help="training workers")
    p.add_argument("--use-gpu", default="auto", choices=("auto", "true", "false"),
                   help="one GPU per worker (auto: if this machine has CUDA)")
    p.add_argument("--address", help="an existing Ray cluster (default: RAY_ADDRESS, else a "
                                     "fresh local instance)")
    p.add_argument("--storage", metavar="PATH_OR_URI",
                   help="where Ray keeps checkpoints (default RUN_DIR/ray; shared storage such "
                        "as NFS or s3:// on multi-node clusters)")
    p.add_argument("--name", help="run name; rerunning with the same name resumes "
                                  "(default: RUN_DIR's name)")
    p.add_argument("--cpus-per-worker", type=float, default=None,
                   help="CPUs reserved per worker (default: local instance: cores / workers; "
                        "cluster: 1)")
    p.add_argument("--gpus-per-worker", type=float, default=1.0,
                   help="GPUs per worker when using GPUs (default 1)")
    _add_config_args(p, "YAML file of config keys", "override one config key (repeatable)")
    _add_metrics_args(p)
    p.set_defaults(func=_cmd_train_distributed)


def _cmd_train_distributed(args: argparse.Namespace) -> int:
    from dcgan_cluster.launch import train_distributed

    out = train_distributed(args.out, args.workers, use_gpu=args.use_gpu, address=args.address,
                            storage=args.storage, name=args.name, config_path=args.config,
                            overrides=args.overrides, cpus_per_worker=args.cpus_per_worker,
                            gpus_per_worker=args.gpus_per_worker,
                            metrics_host=args.metrics_host, metrics_port=args.metrics_port)
    print(f"Distributed run {out['name']} finished in {out['seconds']:.1f}s at step "
          f"{out['metrics'].get('step')}; checkpoints in {out['storage']}; artifacts in "
          f"{args.out}")
    return 0


def _add_tune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune", help="hyperparameter search with Ray Tune (balance objective)",
                       description="Search learning rates, dropout and label smoothing (or "
                                   "any config keys) against the balance objective, guarded "
                                   "by sample quality (docs/tuning.md).")
    p.add_argument("--out", required=True, metavar="DIR", help="search directory")
    p.add_argument("--trials", type=int, default=8, help="trials to run (default 8)")
    p.add_argument("--max-concurrent", type=int, default=None, metavar="K",
                   help="trials at once (default: CPU cores / workers per trial)")
    p.add_argument("--workers-per-trial", type=int, default=1, metavar="W",
                   help="1: each trial trains in its own process; W > 1: a TorchTrainer "
                        "with W DDP workers per trial")
    p.add_argument("--scheduler", default="asha", choices=("asha", "pbt", "fifo"),
                   help="early stopping (asha, default), population-based training (pbt), "
                        "or none (fifo)")
    p.add_argument("--budget-steps", type=int, default=1000, metavar="S",
                   help="training steps per trial (default 1000); 4 reports per trial")
    p.add_argument("--metric", default="balance", choices=("balance", "fid", "combined"),
                   help="objective to minimise (default balance, guarded by quality)")
    p.add_argument("--min-classes", type=int, default=10, metavar="N",
                   help="quality guard: a trial must draw at least N of the 10 digits "
                        "(default 10; only very short smoke searches need less)")
    p.add_argument("--space", metavar="FILE.yaml", help="search space (default: g_lr, d_lr "
                   "log-uniform in [1e-5, 1e-3], dropout in [0, 0.5], label_smoothing in "
                   "[0, 0.3], label_smoothing_mode two-sided or one-sided)")
    p.add_argument("--baseline", action="store_true",
                   help="make trial 0 the base config's own values (the seed's by default), "
                        "measured the same way as the others")
    p.add_argument("--address", help="an existing Ray cluster (default: RAY_ADDRESS, else a "
                                     "fresh local instance)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted search with its saved settings")
    p.add_argument("--use-gpu", default="auto", choices=("auto", "true", "false"),
                   help="one GPU per trial worker (auto: if this machine has CUDA)")
    _add_config_args(p, "base config (YAML) for every trial",
                     "override one base config key (repeatable)")
    _add_metrics_args(p)
    p.set_defaults(func=_cmd_tune)


def _cmd_tune(args: argparse.Namespace) -> int:
    from dcgan_cluster.preflight import resolve_use_gpu
    from dcgan_tune.search import SearchOptions, run_search

    run_search(SearchOptions(
        out=args.out, trials=args.trials, max_concurrent=args.max_concurrent,
        workers_per_trial=args.workers_per_trial, scheduler=args.scheduler,
        budget_steps=args.budget_steps, metric=args.metric, min_classes=args.min_classes,
        baseline=args.baseline,
        space_file=args.space,
        address=args.address, resume=args.resume, config_path=args.config,
        overrides=tuple(args.overrides), use_gpu=resolve_use_gpu(args.use_gpu),
        metrics_host=args.metrics_host, metrics_port=args.metrics_port))
    return 0


def _bounded(most: int):
    def parse(text: str) -> int:
        value = _positive(text)
        if value > most:
            raise argparse.ArgumentTypeError(f"must be at most {most:,} (got {value:,})")
        return value

    return parse


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (got {value})")
    return value


def _add_analyze(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("analyze", help="diagnostics report and 6-panel figure of a run",
                       description="Read RUN_DIR's statistics (also while it trains or after a "
                                   "stop), print the seed's report, write "
                                   "dcgan_training_analysis.png and dcgan_diagnostics.json.")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--window", type=_positive, default=100,
                   help="iterations the report averages over (default 100)")
    p.add_argument("--smooth", type=_positive, default=None,
                   help="moving-average window of the smoothed panels (default: ~5%% of the run)")
    p.set_defaults(func=_cmd_analyze)


def _cmd_analyze(args: argparse.Namespace) -> int:
    from dcgan.report import analyze_run

    analyze_run(args.run_dir, window=args.window, smooth=args.smooth)
    return 0


def _add_generator_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--generator", required=True, metavar="PATH",
                   help="a dcgan_generator_*.pth or a full checkpoint (checkpoints/*.pt)")
    p.add_argument("--out", required=True, metavar="FILE.png", help="image grid to write")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N")


def _add_sample(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="a grid of samples from a trained generator")
    _add_generator_args(p)
    p.add_argument("--n", type=_bounded(MAX_GRID), default=64,
                   help=f"number of samples (default 64, at most {MAX_GRID:,})")
    p.add_argument("--nrow", type=_positive, default=8, help="images per row (default 8)")
    p.add_argument("--save-tensor", metavar="FILE.pt|FILE.npy",
                   help="also save the raw images (N x 1 x 28 x 28, values in [-1, 1])")
    p.set_defaults(func=_cmd_sample)


def _cmd_sample(args: argparse.Namespace) -> int:
    from dcgan.generation import load_generator, sample, save_grid, save_tensor

    _check_suffix(args.out, (".png",), "--out")
    check_writable_file(args.out, "--out")
    if args.save_tensor:
        _check_suffix(args.save_tensor, (".pt", ".npy"), "--save-tensor")
        check_writable_file(args.save_tensor, "--save-tensor")
    g = load_generator(args.generator, _device(args.device))
    images = sample(g, args.n, args.seed)
    save_grid(images, args.out, nrow=args.nrow)
    print(f"Wrote {args.n} samples to {args.out}")
    if args.save_tensor:
        save_tensor(images, args.save_tensor)
        print(f"Wrote the images ({tuple(images.shape)}, values in [-1, 1]) to {args.save_tensor}")
    return 0


def _add_interpolate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("interpolate", help="walks through latent space between noise vectors")
    _add_generator_args(p)
    p.add_argument("--steps", type=_bounded(MAX_WALK), default=10,
                   help=f"images per walk (default 10, at most {MAX_WALK})")
    p.add_argument("--pairs", type=_bounded(MAX_WALK), default=8,
                   help=f"walks, one per row (default 8, at most {MAX_WALK})")
    p.add_argument("--mode", choices=("lerp", "slerp"), default="slerp",
                   help="straight line or great circle (default slerp)")
    p.add_argument("--gif", metavar="FILE.gif", help="also write an animated GIF")
    p.set_defaults(func=_cmd_interpolate)


def _cmd_interpolate(args: argparse.Namespace) -> int:
    from dcgan.generation import interpolate, load_generator, save_gif, save_grid

    _check_suffix(args.out, (".png",), "--out")
    check_writable_file(args.out, "--out")
    if args.gif:
        _check_suffix(args.gif, (".gif",), "--gif")
        check_writable_file(args.gif, "--gif")
    if args.steps < 2:
        raise UsageError("--steps must be >= 2 (a walk has two ends)")
    g = load_generator(args.generator, _device(args.device))
    walks = interpolate(g, args.pairs, args.steps, args.mode, args.seed)
    save_grid(walks.flatten(0, 1), args.out, nrow=args.steps)
    print(f"Wrote {args.pairs} {args.mode} walks of {args.steps} steps to {args.out}")
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
    p.add_argument("--n", type=_bounded(MAX_EVAL_SAMPLES), default=10000,
                   help=f"images to score (default 10000, at most {MAX_EVAL_SAMPLES:,})")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    p.add_argument("--json", metavar="OUT", help="also write the results as JSON")
    p.add_argument("--data-dir", help="MNIST folder (default: config default / DCGAN_DATA_DIR)")
    p.add_argument("--classifier", metavar="PATH",
                   help="other classifier weights (default: the packaged, checksummed ones)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N")
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    import torch

    from dcgan.config import TrainConfig
    from dcgan.io import atomic_write_text
    from dcgan.quality import MIN_SAMPLES, QualityError, build_meter

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
        images, what = sample(g, args.n, args.seed), args.generator
    else:
        meter = build_meter(data_dir, device, args.classifier)
        if args.reference == "real":
            from dcgan.data import load_mnist, to_model_range

            if args.n > 60000:
                raise QualityError(f"--n {args.n}: MNIST has 60,000 training images")
            train, _ = load_mnist(data_dir, subset=args.n)
            images, what = to_model_range(train), f"{args.n} MNIST training images"
        else:
            gen = torch.Generator().manual_seed(args.seed)
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
        atomic_write_text(args.json, json.dumps({"what": what, "seed": args.seed,
                                                 **q.to_dict()}, indent=2) + "\n")
        print(f"Wrote {args.json}")
    return 0


def _add_classifier(sub: argparse._SubParsersAction) -> None:
    # "evaluator": the command's name before it was renamed (beside `evaluate` it misled).
    p = sub.add_parser("classifier", aliases=["evaluator"],
                       help="the fixed MNIST classifier behind FID and IS")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    t = actions.add_parser("train", help="train the classifier deterministically")
    t.add_argument("--out", metavar="PATH", help="weights file (default: the packaged one)")
    t.add_argument("--epochs", type=_positive, default=5)
    t.add_argument("--data-dir", help="MNIST folder (default: config default / DCGAN_DATA_DIR)")
    t.set_defaults(func=_cmd_classifier_train)


def _cmd_classifier_train(args: argparse.Namespace) -> int:
    from dcgan.classifier import WEIGHTS_PATH, save_classifier, train_classifier
    from dcgan.config import TrainConfig

    model, acc = train_classifier(args.data_dir or TrainConfig().data_dir, epochs=args.epochs)
    out = args.out or WEIGHTS_PATH
    digest = save_classifier(model, out)
    print(f"Wrote {out}: test accuracy {100 * acc:.2f}%, SHA-256 {digest}")
    return 0


class UsageError(DCGANError):
    exit_code = 2


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
        self.exit(2, f"error: {message} (see: {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="dcgan", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(sub)
    _add_train_distributed(sub)
    _add_tune(sub)
    _add_analyze(sub)
    _add_sample(sub)
    _add_interpolate(sub)
    _add_evaluate(sub)
    _add_classifier(sub)
    _add_bench(sub)
    _add_bench_gpu(sub)
    _add_bench_quality(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except DCGANError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        # The file system failed under us (disk full, file too large, a folder removed or
        # made read-only mid-run): files are written atomically, so what was there is intact.
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc} (files written before are intact)",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
