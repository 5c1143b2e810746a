"""``dcgan tune``: the search driver. Checks every input, starts (or joins) Ray, runs the
Tuner, then writes the trials table, the best config, and the best trial's generator.

Outputs in OUT (docs/tuning.md):
  trials.parquet, trials.csv  one row per trial: hyperparameters, final metrics, verdict
  best_config.yaml            the base config with the best hyperparameters (dcgan train --config)
  best_generator.pth          the best trial's best evaluated generator (G or its moving
                              average; dcgan sample --generator)
  search.json                 the best trial and a summary of the search
  search_settings.json        the settings --resume reuses
  ray/                        Ray Tune's experiment (checkpoints; what --resume continues)
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from dcgan.checkpoint import KEEP_LATEST, load_state, save_torch
from dcgan.config import TrainConfig, load_config, note_ignored_settings, save_config
from dcgan.errors import ConfigError, DCGANError, RunDirError
from dcgan.features import CLASSES
from dcgan.io import atomic_write_parquet, atomic_write_text
from dcgan.layout import (
    BEST_CONFIG,
    RAY_STATE_FILE,
    RAY_STORAGE_DIR,
    SEARCH_BEST_GENERATOR,
    SEARCH_SETTINGS,
    SEARCH_SUMMARY,
    TRIALS_CSV,
    TRIALS_TABLE,
    search_artifacts,
)
from dcgan.prepare import Previous, open_run
from dcgan.selection import best_weights
from dcgan.sinks import RunInfo, open_sinks
from dcgan.trainer import RESUME_LOCKED_KEYS, derive_seed
from dcgan_cluster.driver_actor import on_driver_node
from dcgan_cluster.preflight import check_local_processes, check_ray_run, decide_gpu
from dcgan_tune.objective import guard, is_finite_number
from dcgan_tune.options import OBJECTIVES, SCHEDULERS, SearchOptions
from dcgan_tune.space import load_space, mutations, to_tune, validate_space
from dcgan_tune.trial import run_trial, with_params

# What --resume takes from the interrupted search rather than from its command line.
SAVED_OPTIONS = ("trials", "max_concurrent", "workers_per_trial", "scheduler", "budget_steps",
                 "metric", "min_classes", "use_gpu", "baseline")
EXPERIMENT = "search"
REPORTS_PER_TRIAL = 4  # ASHA's rungs and PBT's perturbation points
# Columns of the trials table besides the hyperparameters.
RESULT_COLUMNS = ("trial_id", "status", "verdict", "objective", "balance_score", "fid",
                  "inception_score", "classes_covered", "d_loss", "g_loss", "loss_ratio",
                  "d_real_acc", "d_fake_acc", "step", "seconds")


class SearchError(DCGANError):
    """The search could not run or produced no usable trial."""


def _positive(flag: str, value: int) -> None:
    if value < 1:
        raise ConfigError(flag, f"must be >= 1 (got {value})")


def _saved_settings(opts: SearchOptions
                    ) -> tuple[SearchOptions, TrainConfig, dict[str, Any]] | None:
    """On --resume, the interrupted search's own settings win over the command line's: the
    options with them, the base config and the space."""
    path = opts.out / SEARCH_SETTINGS
    if not (opts.resume and path.exists()):
        return None
    try:
        saved = json.loads(path.read_text())
        options = {key: saved[key] for key in SAVED_OPTIONS}
        base, space = TrainConfig(**saved["base"]), dict(saved["space"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else f"{type(exc).__name__}: {exc}"
        raise RunDirError(f"cannot resume: {path} is unreadable or corrupt ({reason[:120]}); "
                          f"remove it to resume with this command line's settings") from None
    print(f"Resuming the search in {opts.out} with its saved settings ({path.name})")
    return dataclasses.replace(opts, **options), base, space


def _save_settings(opts: SearchOptions, base: TrainConfig, space: dict[str, Any]) -> None:
    settings = {key: getattr(opts, key) for key in SAVED_OPTIONS}
    settings.update(base=base.to_dict(), space=space)
    atomic_write_text(opts.out / SEARCH_SETTINGS, json.dumps(settings, indent=2) + "\n")


@contextlib.contextmanager
def open_search(opts: SearchOptions
                ) -> Iterator[tuple[SearchOptions, TrainConfig, dict[str, Any]]]:
    """The search directory opened the way every driver opens its run
    (``dcgan.prepare.open_run``): everything that can be wrong is checked in seconds, before
    Ray starts a trial, then the directory is held for the search. Yields the options it runs
    with (on --resume, the saved ones), its base config and space."""

    def previous(out: Path) -> Previous:
        experiment = out / RAY_STORAGE_DIR / EXPERIMENT
        if not experiment.is_dir():
            raise RunDirError(f"nothing to resume: {experiment} does not exist")
        saved = _saved_settings(opts)
        return Previous(saved[1].to_dict() if saved else {}, extra=saved)

    def configure(before: Previous | None) -> tuple[TrainConfig, dict]:
        if before is not None and before.extra is not None:
            return before.extra[1], {}
        base = load_config(opts.config_path, list(opts.overrides))
        note_ignored_settings(base)
        return base.replace(max_steps=opts.budget_steps), {}

    def check(base: TrainConfig, before: Previous | None
              ) -> tuple[SearchOptions, TrainConfig, dict[str, Any]]:
        run, space = opts, None
        if before is not None and before.extra is not None:
            run, _, space = before.extra
        _check_options(run)
        if space is None:
            space = validate_space(load_space(run.space_file), base)
        varied_locks = [k for k in RESUME_LOCKED_KEYS if isinstance(space.get(k), dict)]
        if run.scheduler == "pbt" and varied_locks:
            raise ConfigError("--space", f"pbt hands one trial's checkpoint to another, which "
                                         f"cannot resume with another {varied_locks[0]}: make "
                                         "it a constant, or use --scheduler asha")
        if not (run.address or os.environ.get("RAY_ADDRESS")):
            concurrent = run.max_concurrent or 1
            check_local_processes(concurrent * run.workers_per_trial,
                                  "--max-concurrent x --workers-per-trial")
        base = check_ray_run(base, run.workers_per_trial, run.use_gpu, run.address, "trials")
        return run, base, space

    with open_run(opts.out, "dcgan tune", resume=opts.resume, overwrite=opts.overwrite,
                  previous=previous, check=check, configure=configure,
                  sinks=opts.sinks,
                  artifacts=search_artifacts, what="a search", save=False) as opened:
        yield opened.ready


def _check_options(opts: SearchOptions) -> None:
    _positive("--trials", opts.trials)
    _positive("--workers-per-trial", opts.workers_per_trial)
    _positive("--budget-steps", opts.budget_steps)
    if not 1 <= opts.min_classes <= CLASSES:
        raise ConfigError("--min-classes", f"must be in 1-{CLASSES} (got {opts.min_classes})")
    if opts.max_concurrent is not None:
        _positive("--max-concurrent", opts.max_concurrent)
    if opts.scheduler not in SCHEDULERS:
        raise ConfigError("--scheduler", f"must be one of {', '.join(SCHEDULERS)}")
    if opts.metric not in OBJECTIVES:
        raise ConfigError("--metric", f"must be one of {', '.join(OBJECTIVES)}")
    if opts.scheduler == "pbt" and opts.workers_per_trial > 1:
        raise ConfigError("--scheduler", "pbt restores trials from Tune checkpoints, which "
                                         "needs --workers-per-trial 1")


def _scheduler(name: str, space: dict[str, Any], reports: int):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

    if name == "asha":
        return ASHAScheduler(time_attr="training_iteration", max_t=reports, grace_period=1,
                             reduction_factor=2)
    if name == "pbt":
        return PopulationBasedTraining(time_attr="training_iteration", perturbation_interval=1,
                                       hyperparam_mutations=mutations(space))
    return FIFOScheduler()


def run_search(opts: SearchOptions) -> dict[str, Any]:
    started = time.perf_counter()
    opts = dataclasses.replace(opts, out=Path(opts.out).resolve())
    # Before Ray's imports: bad input fails at once.
    with open_search(opts) as (opts, base, space):
        return _search(opts, base, space, started)


def _search(opts: SearchOptions, base: TrainConfig, space: dict[str, Any],
            started: float) -> dict[str, Any]:
    import ray
    from ray import tune
    from ray.tune.search import BasicVariantGenerator

    from dcgan_cluster.runtime import init_ray

    if not opts.resume:
        _save_settings(opts, base, space)
    w = opts.workers_per_trial
    report_every = max(1, math.ceil(opts.budget_steps / REPORTS_PER_TRIAL))
    reports = math.ceil(opts.budget_steps / report_every)
    address = opts.address or os.environ.get("RAY_ADDRESS")
    if address:
        init_ray(address)
        # Sized by the cluster's CPUs, not the driver's; one torch thread per trial worker
        # fits on any node.
        cores = int(ray.cluster_resources().get("CPU", 1))
        concurrent = opts.max_concurrent or max(1, cores // w)
        threads = 1
    else:
        cores = os.cpu_count() or 1
        concurrent = opts.max_concurrent or max(1, cores // w)
        threads = max(1, cores // (concurrent * w))
        # Logical CPUs for every concurrent trial, its workers and Ray Train's controllers.
        init_ray(None, num_cpus=max(cores, concurrent * (w * threads + 1) + 1))
    stack = contextlib.ExitStack()  # the sinks opened for the search
    try:
        use_gpu = decide_gpu(opts.use_gpu, base, "trials")
        feeds = open_sinks(opts.sinks, RunInfo(opts.out.name, "tune", base.to_dict(),
                                               host=on_driver_node), stack)
        storage = str(opts.out / RAY_STORAGE_DIR)
        trainable = tune.with_parameters(
            run_trial, base=base.to_dict(), workers=w, metric=opts.metric,
            min_classes=opts.min_classes, report_every=report_every, threads=threads,
            use_gpu=use_gpu, storage=str(opts.out / RAY_STORAGE_DIR / "trials"), feeds=feeds)
        # W = 1: the trial trains in its own process. W > 1: the trial only drives a
        # TorchTrainer, whose workers and controller request their own resources.
        resources = ({"cpu": threads, "gpu": 1 if use_gpu else 0} if w == 1
                     else {"cpu": 0.01})
        trainable = tune.with_resources(trainable, resources)
        experiment = opts.out / RAY_STORAGE_DIR / EXPERIMENT
        if opts.resume:
            tuner = tune.Tuner.restore(str(experiment), trainable=trainable,
                                       resume_unfinished=True, resume_errored=True)
        else:
            # --baseline: the base config's own values are trial 0, measured the same way.
            first = [{k: getattr(base, k) for k in space}] if opts.baseline else []
            tuner = tune.Tuner(
                trainable, param_space=to_tune(space),
                tune_config=tune.TuneConfig(
                    metric="objective", mode="min", num_samples=opts.trials,
                    # Seeded by the config's seed: the same command samples the same trials.
                    search_alg=BasicVariantGenerator(
                        points_to_evaluate=first, max_concurrent=concurrent,
                        random_state=derive_seed(base.seed, "search") % 2**32),
                    max_concurrent_trials=concurrent,
                    scheduler=_scheduler(opts.scheduler, space, reports)),
                run_config=tune.RunConfig(
                    name=EXPERIMENT, storage_path=storage, verbose=1,
                    callbacks=[_resume_points()],
                    # PBT clones other trials' older checkpoints: keep them all (a few).
                    checkpoint_config=tune.CheckpointConfig(
                        num_to_keep=None if opts.scheduler == "pbt" else KEEP_LATEST),
                    failure_config=tune.FailureConfig(max_failures=base.max_failures)))
        with _sigterm_as_ctrl_c():
            grid = tuner.fit()
        return _write_outputs(opts, base, space, grid, time.perf_counter() - started)
    finally:
        stack.close()
        ray.shutdown()


@contextlib.contextmanager
def _sigterm_as_ctrl_c() -> Iterator[None]:
    """SIGTERM (a process manager, ``timeout``) stops the search as Ctrl-C does: Tune's own
    graceful stop, which saves the experiment for --resume and writes the table. Ray's driver
    handler would exit in the middle of a step, the process aborting on its way out."""

    def handler(signum, frame):
        print("\nSIGTERM received: stopping the search as Ctrl-C does (send it again to stop "
              "at once)", file=sys.stderr, flush=True)
        signal.signal(signal.SIGTERM, previous)
        signal.raise_signal(signal.SIGINT)  # Tune's handler, installed by fit

    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers belong to the main thread (a caller embedding the search)
        return
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _resume_points():
    """A Tune callback that says, once the driver has recorded a trial's checkpoint, the step
    an interrupted search would continue that trial from (the checkpoint is written before
    the driver knows of it: one on disk is not yet a resume point)."""
    from ray import tune

    class ResumePoints(tune.Callback):
        def on_trial_save(self, iteration, trials, trial, **info):
            step = (trial.last_result or {}).get("step")
            if trial.checkpoint is not None and step is not None:
                print(f"[tune] trial {trial.trial_id}: resume point at step {step}", flush=True)

    return ResumePoints()


def _row(result, space: dict[str, Any]) -> dict[str, Any]:
    metrics = result.metrics or {}
    config = result.config or {}
    status = "ERROR" if result.error else "TERMINATED"
    row: dict[str, Any] = {"trial_id": metrics.get("trial_id") or config.get("trial_id"),
                           "status": status}
    for key in space:
        row[key] = config.get(key)
    for col in RESULT_COLUMNS[3:]:
        row[col] = metrics.get(col if col != "seconds" else "time_total_s")
    row["_checkpoint"] = _checkpoint_dir(result)
    return row


def _checkpoint_dir(result) -> str | None:
    if result.checkpoint is not None:
        return result.checkpoint.path
    path = (result.metrics or {}).get("checkpoint_path")  # TuneReportCallback (W > 1)
    return path


def _write_outputs(opts: SearchOptions, base: TrainConfig, space: dict[str, Any], grid,
                   seconds: float) -> dict[str, Any]:
    rows = [_row(grid[i], space) for i in range(len(grid))]
    for row, verdict in zip(rows, guard(rows, opts.budget_steps, opts.min_classes), strict=True):
        row["verdict"] = verdict or "ok"
    rows.sort(key=lambda r: (r["verdict"] != "ok", _num(r["objective"])))
    columns = [*RESULT_COLUMNS[:4], *space, *RESULT_COLUMNS[4:]]
    table = [{c: r.get(c) for c in columns} for r in rows]
    _write_table(table, columns, opts.out)
    print(_summary(table, columns, opts.metric))
    winners = [r for r in rows if r["verdict"] == "ok"]
    if not winners:
        raise SearchError(f"no trial passed the quality guard (see {opts.out / TRIALS_CSV}); "
                          "raise --budget-steps (a generator needs several hundred steps to "
                          "draw every digit) or widen the search space; an interrupted "
                          "search continues with --resume")
    best = winners[0]
    params = {k: best[k] for k in space}
    # The user's config with the winning values; the search's step budget is not part of it.
    best_cfg = with_params(base, params).replace(max_steps=TrainConfig().max_steps)
    save_config(best_cfg, opts.out / BEST_CONFIG)
    generator = _save_best_generator(best, opts.out)
    summary = {"best_trial": best["trial_id"], "objective": best["objective"],
               "metric": opts.metric, "params": params,
               "balance_score": best["balance_score"], "fid": best["fid"],
               "classes_covered": best["classes_covered"], "trials": len(rows),
               "failed": len(rows) - len(winners), "scheduler": opts.scheduler,
               "budget_steps": opts.budget_steps, "workers_per_trial": opts.workers_per_trial,
               "seconds": round(seconds, 1), "best_generator": generator,
               "best_checkpoint": best.get("_checkpoint")}
    atomic_write_text(opts.out / SEARCH_SUMMARY, json.dumps(summary, indent=2) + "\n")
    print(f"Best trial {best['trial_id']}: objective {best['objective']:.4f}, balance "
          f"{best['balance_score']:.4f}, FID {best['fid']:.2f}; config in "
          f"{opts.out / BEST_CONFIG} (dcgan train --config), generator in {generator}")
    return summary


def _save_best_generator(best: dict[str, Any], out: Path) -> str | None:
    directory = best.get("_checkpoint")
    if not directory or not (Path(directory) / RAY_STATE_FILE).exists():
        return None
    state = load_state(Path(directory) / RAY_STATE_FILE)
    path = out / SEARCH_BEST_GENERATOR
    # The trial's best evaluated generator (G or its average), as its objective reported; a
    # state with no evaluation kept holds only the last G.
    save_torch(best_weights(state) or state["generator"], path)
    return str(path)


def _num(value) -> float:
    return float(value) if is_finite_number(value) else math.inf


def _write_table(table: list[dict], columns: list[str], out: Path) -> None:
    atomic_write_parquet(pa.Table.from_pylist(table), out / TRIALS_TABLE)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(table)
    atomic_write_text(out / TRIALS_CSV, text.getvalue())


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def _summary(table: list[dict], columns: list[str], metric: str) -> str:
    shown = [c for c in columns if c not in ("status", "step", "seconds", "d_loss", "g_loss",
                                             "d_real_acc", "d_fake_acc")]
    cells = [[_fmt(r[c]) for c in shown] for r in table]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(shown)]
    lines = [f"Trials ({len(table)}, objective: {metric}; best first):",
             "  ".join(c.ljust(w) for c, w in zip(shown, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


# What the search module owns (SearchOptions: dcgan_tune.options; SpaceError: dcgan_tune.space).
__all__ = ["run_search", "SearchError"]
