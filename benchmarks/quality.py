"""``dcgan bench-quality`` (``make bench-quality``): sample quality against wall-clock time.

Each configuration trains on this machine for the same wall-clock budget of training time
(default 30 minutes on a CPU; on a GPU, its full epochs; the evaluations count against the
budget, as they would in a real run), scoring G and its moving average at every evaluation
(``eval_every`` epochs, ``eval_samples`` images). At the end the run's best
generator (``dcgan_generator_best.pth``) is scored again with ``--final-samples`` images
(10,000: the figure to compare). The seed's run gives both "the seed's" and "the seed's +
EMA" rows: the average does not change how G trains, it is scored beside it.

Prints the best of each configuration and, step by step, G beside its moving average.
Outputs in OUT: one run directory per configuration, ``results.json``, and
``quality_vs_time.png`` (FID of every evaluation against training time).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from dcgan.diagnostics import health_by_epoch
from dcgan.errors import ConfigError
from dcgan.layout import BEST_GENERATOR, BEST_INFO
from dcgan.stats import best_overall
from dcgan.trainer import Callback, Trainer

DEFAULT_CONFIGS = {"seed": "configs/seed.yaml", "recommended": "configs/recommended.yaml"}
RESULTS_FILE = "results.json"
FIGURE_FILE = "quality_vs_time.png"


class WallClock(Callback):
    """Ends the run once ``budget_s`` seconds of training have passed, as if its step budget
    ended there: a completed run, so G and its average are scored at that last step and the
    final files are written (the training after the last epoch-end evaluation counts)."""

    def __init__(self, budget_s: float | None):
        self.budget_s = budget_s

    def on_step_end(self, trainer: Trainer) -> None:
        if self.budget_s is not None and trainer.elapsed() >= self.budget_s:
            trainer.total_steps = trainer.step


def parse_configs(pairs: list[str] | None) -> dict[str, str]:
    if not pairs:
        return dict(DEFAULT_CONFIGS)
    configs = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise ConfigError("--configs", f"give NAME=FILE.yaml (got {pair!r})")
        configs[name] = path
    return configs


def bench_one(name: str, config: str, out: Path, *, overrides: list[str],
              budget_s: float | None, final_samples: int, seed: int | None = None) -> dict:
    from dcgan.generation import load_generator, sample
    from dcgan.quality import build_meter
    from dcgan.run import train_local

    run = out / (name if seed is None else f"{name}-seed{seed}")
    seeded = [] if seed is None else [f"seed={seed}"]
    started = time.perf_counter()
    trainer, outcome = train_local(run, config, [*overrides, *seeded], overwrite=True,
                                   progress=False, callbacks=[WallClock(budget_s)])
    wall = time.perf_counter() - started
    evals = trainer.stats.evals
    best_info = json.loads((run / BEST_INFO).read_text()) if evals else None
    health = health_by_epoch(trainer.stats.columns, trainer.loss.profile)
    result = {"config": name, "run": run.name, "file": config, "seed": trainer.cfg.seed,
              "loss": trainer.cfg.loss, "outcome": str(outcome), "steps": trainer.step,
              "epochs": round(trainer.step / trainer.batches_per_epoch, 3),
              "training_s": round(trainer.elapsed(), 1), "wall_s": round(wall, 1),
              "evaluations": evals, "best": best_info, "final": None,
              # The product's own status assessment at every epoch end: the whole run's
              # health, not only its last window's.
              "healthy_at_end": bool(health) and health[-1]["healthy"],
              "healthy_epochs": sum(h["healthy"] for h in health), "health": health,
              "balance_changes": trainer.balance.log if trainer.balance is not None else []}
    for generator in ("raw", "ema"):
        rows = [r for r in evals if r.get("generator", "raw") == generator]
        result[f"best_{generator}"] = best_overall(rows)
    if best_info is not None:
        device = trainer.device
        g = load_generator(run / BEST_GENERATOR, device)
        meter = build_meter(trainer.cfg.data_dir, device)
        result["final"] = meter.measure(sample(g, final_samples, seed=0)).to_dict()
        # The study's flat record of this run: its best generator at the final N.
        result.update(fid=result["final"]["fid"],
                      inception_score=result["final"]["inception_score"],
                      final_n=final_samples)
    return result


def table(results: list[dict], final_samples: int) -> str:
    lines = [f"{'configuration':<26} {'steps':>7} {'train s':>8} {'best of':>8} "
             f"{'at step':>8} {'FID':>8} {'IS':>6} {'classes':>8} {'largest':>8}"]
    for r in results:
        rows = [(f"{r['run']} (G)", r["best_raw"]), (f"{r['run']} + EMA", r["best_ema"])]
        for label, row in rows:
            if row is None:
                continue
            lines.append(f"{label:<26} {r['steps']:>7} {r['training_s']:>8.0f} "
                         f"{'eval':>8} {row['step']:>8} {row['fid']:>8.2f} "
                         f"{row['inception_score']:>6.2f} {row['classes_covered']:>6}/10 "
                         f"{row['largest_class_fraction']:>8.3f}")
        if r["final"] is not None:
            q, b = r["final"], r["best"]
            lines.append(f"{r['run'] + ' best, N=' + str(final_samples):<26} {r['steps']:>7} "
                         f"{r['training_s']:>8.0f} {b['generator']:>8} {b['step']:>8} "
                         f"{q['fid']:>8.2f} {q['inception_score']:>6.2f} "
                         f"{q['classes_covered']:>6}/10 {q['largest_class_fraction']:>8.3f}")
    return "\n".join(lines)


def ema_table(results: list[dict]) -> str:
    """G against its moving average at every evaluation (the same step, the same noise):
    the measurement behind the default ``ema_decay``."""
    lines = [f"{'configuration':<22} {'step':>7} {'epoch':>6} {'train s':>8} {'FID G':>8} "
             f"{'FID EMA':>8} {'IS G':>6} {'IS EMA':>6}"]
    for r in results:
        by_step: dict[int, dict[str, dict]] = {}
        for e in r["evaluations"]:
            by_step.setdefault(e["step"], {})[e.get("generator", "raw")] = e
        for step, pair in sorted(by_step.items()):
            raw, ema = pair.get("raw"), pair.get("ema")
            if raw is None or ema is None:
                continue
            lines.append(f"{r['run']:<22} {step:>7} {raw['epoch']:>6.2f} "
                         f"{raw.get('time') or 0:>8.0f} {raw['fid']:>8.2f} {ema['fid']:>8.2f} "
                         f"{raw['inception_score']:>6.2f} {ema['inception_score']:>6.2f}")
    return "\n".join(lines) if len(lines) > 1 else ""


def save_figure(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    for r in results:
        for generator, style in (("raw", "o-"), ("ema", "s--")):
            rows = [e for e in r["evaluations"] if e.get("generator", "raw") == generator
                    and e.get("time") is not None]
            if rows:
                label = r["run"] + (" + EMA" if generator == "ema" else " (G)")
                ax.plot([e["time"] / 60 for e in rows], [e["fid"] for e in rows], style,
                        label=label, markersize=3)
    ax.set_yscale("log")
    ax.set_xlabel("training time (minutes)")
    ax.set_ylabel("FID (mnist-cnn-v1, lower is better)")
    ax.set_title("Sample quality against wall-clock training time")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(args: argparse.Namespace) -> int:
    from dcgan.paths import check_writable_dir

    configs = parse_configs(args.configs)
    for name, path in configs.items():
        if not Path(path).is_file():
            raise ConfigError("--configs", f"{name}: no such file {path}")
    out = check_writable_dir(Path(args.out))
    steps = getattr(args, "steps", None)
    gpu = torch.cuda.is_available() and args.budget_minutes is None
    budget_s = None if gpu or steps else 60 * (args.budget_minutes or 30)
    overrides = [f"data_dir={args.data_dir}"] if args.data_dir else []
    # The run's own choice of its best generator rescores its best evaluations at the final N.
    overrides.append(f"rescore_samples={args.final_samples}")
    overrides += list(args.overrides) + (["max_steps=0"] if budget_s else [])
    if budget_s or steps:  # the budget decides when to stop, not the epochs
        overrides.append("epochs=1000")
    if steps:  # steps, not minutes: the same figure on any machine
        overrides.append(f"max_steps={steps}")
    where = (f"{steps:,} steps each" if steps else "its full epochs on the GPU"
             if budget_s is None else
             f"{budget_s / 60:g} minutes of training each on this machine")
    seeds = list(getattr(args, "seeds", None) or [None])
    print(f"dcgan bench-quality: {', '.join(configs)}; {where}; the best generator then "
          f"scored with {args.final_samples:,} samples", flush=True)
    results = []
    for name, path in configs.items():
        for seed in seeds:
            results.append(bench_one(name, path, out, overrides=overrides, budget_s=budget_s,
                                     final_samples=args.final_samples, seed=seed))
            r = results[-1]
            print(f"  {name} (seed {r['seed']}): {r['steps']} steps in "
                  f"{r['training_s']:.0f} s" + (f", FID {r['fid']:.2f}, IS "
                                                f"{r['inception_score']:.2f}"
                                                if "fid" in r else ""), flush=True)
    print(table(results, args.final_samples))
    pairs = ema_table(results)
    if pairs:
        print("\nG and its moving average at every evaluation (eval_samples images each):")
        print(pairs)
    (out / RESULTS_FILE).write_text(json.dumps(
        {"budget_s": budget_s, "budget_steps": steps, "final_samples": args.final_samples, "device":
         torch.cuda.get_device_name(0) if gpu else "cpu", "torch": torch.__version__,
         "threads": torch.get_num_threads(), "results": results, "runs": results},
        indent=2, default=lambda x: None if isinstance(x, float) and not math.isfinite(x)
        else str(x)) + "\n")
    save_figure(results, out / FIGURE_FILE)
    print(f"Wrote {out / RESULTS_FILE} and {out / FIGURE_FILE}")
    return 0
