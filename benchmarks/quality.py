"""``dcgan bench-quality`` (``make bench-quality``): sample quality against wall-clock time.

Each configuration trains on this machine for the same wall-clock budget of training time
(default 30 minutes on a CPU; on a GPU, its full epochs; the evaluations count against the
budget, as they would in a real run), scoring G and its moving average at every evaluation
(``eval_every`` epochs, ``eval_samples`` images). At the end the run's best
generator (``dcgan_generator_best.pth``) is scored again with ``--final-samples`` images
(10,000: the figure to compare). The seed's run gives both "the seed's" and "the seed's +
EMA" rows: the average does not change how G trains, it is scored beside it.

With ``--steps`` and ``--seeds`` it is a study at a fixed step budget (machine-independent):
every configuration once per seed, then each configuration summarized over its seeds (the
median, min and max of its best generators' scores and how many runs ended healthy). Runs
of one study trained apart (several machines, or one process per seed) are joined with
``--merge DIR...``, which recomputes the summary from their ``runs`` and redraws the charts.

Prints the best of each configuration and, step by step, G beside its moving average.
Outputs in OUT: one run directory per configuration, ``results.json`` (``runs``: one entry
per run; ``summary``: one per configuration and step budget), ``quality_vs_time.png`` (FID
of every evaluation against training time) and ``quality_vs_steps.png`` (the moving
average's FID and IS against the step, one line per run).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from dcgan.diagnostics import health_by_epoch
from dcgan.errors import ConfigError
from dcgan.io import atomic_write_text, results_json
from dcgan.layout import BEST_GENERATOR, run_artifacts
from dcgan.selection import read_best_info
from dcgan.stats import best_overall
from dcgan.trainer import Callback, Trainer

DEFAULT_CONFIGS = {"seed": "configs/seed.yaml", "recommended": "configs/recommended.yaml"}
RESULTS_FILE = "results.json"
FIGURE_FILE = "quality_vs_time.png"
STEPS_FIGURE_FILE = "quality_vs_steps.png"
# The scores a study summarizes over its seeds (each run's best generator at the final N).
SUMMARY_SCORES = ("fid", "inception_score", "classes_covered", "largest_class_fraction")
# Keys every run of a study carries: what the committed results promise their readers.
RUN_KEYS = ("config", "seed", "steps", "fid", "inception_score", "final_n", "evaluations")


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


def run_name(name: str, seed: int | None) -> str:
    return name if seed is None else f"{name}-seed{seed}"


def bench_one(name: str, config: str, out: Path, *, overrides: list[str],
              budget_s: float | None, final_samples: int, seed: int | None = None,
              resume: bool = False) -> dict | None:
    """Train (or, with ``resume``, continue) one run of the study and score it; None when a
    signal stopped it (its state is saved: the same command continues it)."""
    from dcgan.generation import load_generator, sample
    from dcgan.quality import build_meter
    from dcgan.run import train_local
    from dcgan.trainer import Outcome

    run = out / run_name(name, seed)
    seeded = [] if seed is None else [f"seed={seed}"]
    started = time.perf_counter()
    trainer, outcome = train_local(run, None if resume else config, [*overrides, *seeded],
                                   resume=resume, overwrite=not resume, progress=False,
                                   callbacks=[WallClock(budget_s)])
    wall = time.perf_counter() - started
    if outcome is Outcome.INTERRUPTED:
        return None
    evals = trainer.stats.evals
    best_info = read_best_info(run) if evals else None
    health = health_by_epoch(trainer.stats.columns, trainer.loss.profile)
    result = {"config": name, "run": run.name, "file": config, "seed": trainer.cfg.seed,
              "settings": trainer.cfg.to_dict(),
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
        result.update(final_n=final_samples,
                      **{k: result["final"][k] for k in SUMMARY_SCORES})
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


def summarize(runs: list[dict]) -> list[dict]:
    """One entry per configuration and step budget: its seeds, how many of its runs ended
    healthy, and the median, min and max over them of each best generator's scores. The
    median of three is the study's figure: one lucky seed does not move it."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in runs:
        if r.get("fid") is not None:
            groups.setdefault((r["config"], r["steps"]), []).append(r)
    out = []
    for (config, steps), rows in groups.items():
        entry = {"config": config, "steps": steps, "seeds": [r["seed"] for r in rows],
                 "final_n": rows[0]["final_n"],
                 "healthy_at_end": sum(bool(r.get("healthy_at_end")) for r in rows)}
        for key in SUMMARY_SCORES:
            values = [r[key] for r in rows]
            entry[key] = {"median": statistics.median(values), "min": min(values),
                          "max": max(values)}
        out.append(entry)
    return out


def summary_table(summary: list[dict]) -> str:
    lines = [f"{'configuration':<24} {'steps':>7} {'runs':>5} {'healthy':>8} {'FID median':>11} "
             f"{'(min-max)':>14} {'IS median':>10} {'(min-max)':>12} {'classes':>8} "
             f"{'largest':>8}"]
    for e in summary:
        fid, score = e["fid"], e["inception_score"]
        lines.append(f"{e['config']:<24} {e['steps']:>7} {len(e['seeds']):>5} "
                     f"{e['healthy_at_end']:>4}/{len(e['seeds']):<3} {fid['median']:>11.2f} "
                     f"{fid['min']:>6.2f}-{fid['max']:<7.2f} {score['median']:>10.2f} "
                     f"{score['min']:>5.2f}-{score['max']:<6.2f} "
                     f"{e['classes_covered']['median']:>6g}/10 "
                     f"{e['largest_class_fraction']['median']:>8.3f}")
    return "\n".join(lines)


def save_steps_figure(runs: list[dict], path: Path) -> None:
    """The moving average's FID and IS at every evaluation against the step, one line per
    run (a configuration's seeds share a colour); a star marks each run's chosen best."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_fid, ax_is) = plt.subplots(1, 2, figsize=(12, 5))
    colours = {}
    for r in runs:
        colour = colours.setdefault(r["config"], f"C{len(colours) % 10}")
        rows = sorted((e for e in r.get("evaluations", []) if e.get("generator") == "ema"),
                      key=lambda e: e["step"])
        if not rows:
            continue
        label = f"{r['config']} (seed {r['seed']})"
        steps = [e["step"] for e in rows]
        ax_fid.plot(steps, [e["fid"] for e in rows], "-", color=colour, alpha=0.8,
                    label=label, linewidth=1.2)
        ax_is.plot(steps, [e["inception_score"] for e in rows], "-", color=colour, alpha=0.8,
                   linewidth=1.2)
        best = r.get("best")
        if best is not None and r.get("fid") is not None:
            ax_fid.plot([best["step"]], [r["fid"]], "*", color=colour, markersize=10)
            ax_is.plot([best["step"]], [r["inception_score"]], "*", color=colour,
                       markersize=10)
    ax_fid.set_yscale("log")
    ax_fid.set_ylabel("FID of G's moving average (mnist-cnn-v1, lower is better)")
    ax_is.set_ylabel("Inception Score of G's moving average (higher is better)")
    for ax in (ax_fid, ax_is):
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3, which="both")
    ax_fid.legend(fontsize=7)
    fig.suptitle("Sample quality against the step (every evaluation; stars: each run's best "
                 "generator at the final N)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_study(out: Path, header: dict, runs: list[dict]) -> dict:
    """``results.json`` (the runs and their summary) and both charts in OUT."""
    study = {**header, "runs": runs, "summary": summarize(runs)}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / RESULTS_FILE, results_json(study))  # never half-written
    save_figure(runs, out / FIGURE_FILE)
    save_steps_figure(runs, out / STEPS_FIGURE_FILE)
    return study


def read_results(path: Path) -> dict:
    """One study's results.json (a file or its folder), refused in one line when it is not."""
    file = path / RESULTS_FILE if path.is_dir() else path
    try:
        study = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("--merge", f"no {RESULTS_FILE} at {file}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError("--merge", f"cannot read {file}: {e}") from None
    except json.JSONDecodeError as e:
        raise ConfigError("--merge", f"{file} is not JSON ({e.msg}, line {e.lineno})") from None
    runs = study.get("runs") if isinstance(study, dict) else None
    if not isinstance(runs, list) or not runs or not all(isinstance(r, dict) for r in runs):
        raise ConfigError("--merge", f"{file} holds no runs (not a bench-quality result)")
    for r in runs:
        missing = [k for k in RUN_KEYS if k not in r]
        if missing:
            raise ConfigError("--merge", f"{file}: a run lacks {', '.join(missing)}")
        # Files written before the flat record held every score keep them in "final".
        final = r.get("final") if isinstance(r.get("final"), dict) else {}
        for key in SUMMARY_SCORES:
            if key not in r and key in final:
                r[key] = final[key]
    study.pop("results", None)  # the old name of "runs", in files written before it
    return study


def merge(studies: list[dict]) -> tuple[dict, list[dict]]:
    """The runs of several results files as one study: one final N for all (their scores
    are compared), a run present twice (same configuration, seed and steps) refused."""
    finals = {s.get("final_samples") for s in studies}
    if len(finals) != 1:
        raise ConfigError("--merge", "the studies scored their best generators with "
                          f"different N ({', '.join(map(str, sorted(finals, key=str)))})")
    runs, seen = [], set()
    for s in studies:
        for r in s["runs"]:
            key = (r["config"], r["seed"], r["steps"])
            if key in seen:
                raise ConfigError("--merge", f"run {r['config']} seed {r['seed']} at "
                                  f"{r['steps']} steps is in two of the files")
            seen.add(key)
            runs.append(r)
    first = studies[0]
    header = {k: first.get(k) for k in ("budget_s", "budget_steps", "final_samples", "device",
                                        "torch", "threads")}
    header["merged_from"] = len(studies)
    return header, runs


def merge_main(args: argparse.Namespace) -> int:
    from dcgan.paths import check_writable_dir

    given = [o for o, v in (("--configs", args.configs), ("--steps", args.steps),
                            ("--seeds", args.seeds), ("--budget-minutes", args.budget_minutes),
                            ("--set", args.overrides)) if v]
    if given:
        raise ConfigError("--merge", f"joins finished studies; it trains nothing, so "
                          f"{', '.join(given)} cannot go with it")
    studies = [read_results(Path(p)) for p in args.merge]
    header, runs = merge(studies)
    out = check_writable_dir(Path(args.out))
    study = write_study(out, header, runs)
    print(summary_table(study["summary"]))
    print(f"Merged {len(runs)} runs from {len(studies)} files into {out / RESULTS_FILE} "
          f"(charts: {out / FIGURE_FILE}, {out / STEPS_FIGURE_FILE})")
    return 0


# Each finished run's result, written the moment it is scored: a study stopped at any point
# keeps every run it finished, and the same command skips them and continues the rest.
RUNS_DIR = "runs"
STUDY_FILE = "study.json"  # what the study is (its settings): a rerun must be the same study
# A study's runs save their full state this often, so an interruption costs minutes at most.
STUDY_CHECKPOINT_STEPS = 500


def file_digest(path: str | Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def read_json(path: Path, what: str) -> dict | None:
    """A study's own JSON file, or None when it is absent; one line when it is damaged."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError("--out", f"{what} {path} cannot be read ({e}); move it away, or "
                          "start the study again with --overwrite") from None
    if not isinstance(data, dict):
        raise ConfigError("--out", f"{what} {path} is not a JSON object; move it away, or "
                          "start the study again with --overwrite")
    return data


def open_study(out: Path, settings: dict, overwrite: bool) -> None:
    """Start the study in OUT, or check that OUT holds this same study (the settings that
    decide what a run means: overrides, budget, final N); configurations and seeds may be
    added to it. ``--overwrite`` starts it again."""

    existing = read_json(out / STUDY_FILE, "the study file")
    runs = sorted(d for d in out.iterdir() if d.is_dir() and run_artifacts(d)) \
        if out.is_dir() else []
    if existing is None and runs and not overwrite:  # train's convention: never replace silently
        raise ConfigError("--out", f"{out} holds runs that no study here started "
                          f"({', '.join(d.name for d in runs[:3])}); give --overwrite to "
                          "replace them, or another --out")
    if existing is not None and not overwrite and existing != settings:
        changed = sorted(k for k in set(existing) | set(settings)
                         if existing.get(k) != settings.get(k))
        raise ConfigError("--out", f"{out} holds a study with other settings "
                          f"({', '.join(changed)}); rerun it as it was, or give --overwrite "
                          "to start it again, or another --out")
    if overwrite:  # the study's files and its runs' (each run's own files only)
        from dcgan.prepare import remove_artifacts, remove_paths
        from dcgan.runlock import check_unlocked

        for run in runs:
            check_unlocked(run)  # not while another process writes it
            remove_artifacts(run)
        remove_paths([out / entry for entry in (RUNS_DIR, STUDY_FILE, RESULTS_FILE,
                                                FIGURE_FILE, STEPS_FIGURE_FILE)
                      if (out / entry).exists()])
    (out / RUNS_DIR).mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / STUDY_FILE, json.dumps(settings, indent=2) + "\n")


def main(args: argparse.Namespace) -> int:
    if getattr(args, "merge", None):
        return merge_main(args)
    from dcgan.checkpoint import list_states
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
    # A full state every few minutes, unless the user chose: the study survives a stop.
    if not any(o.startswith("checkpoint_every_steps=") for o in args.overrides):
        overrides.append(f"checkpoint_every_steps={STUDY_CHECKPOINT_STEPS}")
    overrides += list(args.overrides) + (["max_steps=0"] if budget_s else [])
    if budget_s or steps:  # the budget decides when to stop, not the epochs
        overrides.append("epochs=1000")
    if steps:  # steps, not minutes: the same figure on any machine
        overrides.append(f"max_steps={steps}")
    settings = {"overrides": [o for o in overrides if not o.startswith("data_dir=")],
                "budget_s": budget_s, "budget_steps": steps,
                "final_samples": args.final_samples}
    open_study(out, settings, getattr(args, "overwrite", False))
    where = (f"{steps:,} steps each" if steps else "its full epochs on the GPU"
             if budget_s is None else
             f"{budget_s / 60:g} minutes of training each on this machine")
    seeds = list(getattr(args, "seeds", None) or [None])
    print(f"dcgan bench-quality: {', '.join(configs)}; {where}; the best generator then "
          f"scored with {args.final_samples:,} samples; each run's result in "
          f"{out / RUNS_DIR} as it ends (rerun the same command to continue)", flush=True)
    header = {"budget_s": budget_s, "budget_steps": steps, "final_samples": args.final_samples,
              "device": torch.cuda.get_device_name(0) if gpu else "cpu",
              "torch": torch.__version__, "threads": torch.get_num_threads()}
    # Every run this study has finished, also those of configurations not asked for now.
    results = [r for f in sorted((out / RUNS_DIR).glob("*.json"))
               if (r := read_json(f, "the run result")) is not None]
    done = {r["run"]: r for r in results}
    study = None  # written after each run that trains; once at the end if none did
    for name, path in configs.items():
        digest = file_digest(path)
        for seed in seeds:
            label = run_name(name, seed)
            finished = done.get(label)
            if finished is not None and finished.get("config_digest") == digest:
                print(f"  {label}: finished before ({finished['steps']} steps, FID "
                      f"{finished.get('fid', float('nan')):.2f}); skipped", flush=True)
                continue
            if finished is not None:
                raise ConfigError("--configs", f"{path} changed since run {label} of this "
                                  "study finished; give --overwrite to start the study again, "
                                  "or another --out")
            resume = bool(list_states(out / label))
            if resume:
                print(f"  {label}: continuing from its latest checkpoint", flush=True)
            r = bench_one(name, path, out, overrides=overrides, budget_s=budget_s,
                          final_samples=args.final_samples, seed=seed, resume=resume)
            if r is None:
                print(f"stopped during {label} (its state is saved); the same command "
                      "continues the study", file=sys.stderr)
                return 143
            r["config_digest"] = digest
            atomic_write_text(out / RUNS_DIR / f"{label}.json", results_json(r))
            results = [x for x in results if x["run"] != label] + [r]
            study = write_study(out, header, results)  # the study so far, after every run
            print(f"  {label} (seed {r['seed']}): {r['steps']} steps in "
                  f"{r['training_s']:.0f} s" + (f", FID {r['fid']:.2f}, IS "
                                                f"{r['inception_score']:.2f}"
                                                if "fid" in r else ""), flush=True)
    if not results:
        return 0
    print(table(results, args.final_samples))
    pairs = ema_table(results)
    if pairs:
        print("\nG and its moving average at every evaluation (eval_samples images each):")
        print(pairs)
    if study is None:
        study = write_study(out, header, results)
    if study["summary"]:
        print("\nEach configuration over its seeds (best generator at the final N):")
        print(summary_table(study["summary"]))
    print(f"Wrote {out / RESULTS_FILE}, {out / FIGURE_FILE} and {out / STEPS_FIGURE_FILE}")
    return 0
