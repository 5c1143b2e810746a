"""Diagnostics of a run: the once-per-epoch status line, the end-of-run report, the JSON and
the analysis figure, during training (``DiagnosticsReporter``) or afterwards (``analyze_run``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from dcgan.analysis import save_analysis, save_quality_figure
from dcgan.config import TrainConfig, load_config
from dcgan.data import as_model_input
from dcgan.diagnostics import (
    DEFAULT_WINDOW,
    REQUIRED_COLUMNS,
    Diagnosis,
    diagnose,
    report,
    status_line,
)
from dcgan.errors import ConfigError, DCGANError, first_line
from dcgan.generation import generate
from dcgan.io import atomic_write_text, results_json
from dcgan.layout import (
    ANALYSIS_FILE,
    BEST_GENERATOR,
    BEST_SAMPLES,
    CONFIG_FILE,
    DIAGNOSTICS_FILE,
    EVAL_FILE,
    GENERATOR_EPOCH_GLOB,
    GENERATOR_FINAL,
    QUALITY_FILE,
    STATS_FILE,
    run_artifacts,
)
from dcgan.losses import build_loss
from dcgan.quality import quality_summary
from dcgan.selection import read_best_info
from dcgan.stats import best_of_latest
from dcgan.trainer import Callback, Outcome, Trainer

DIVERSITY_SAMPLES = 64


def best_generator_line(run_dir: Path) -> str | None:
    """Names the run's best generator (``dcgan_generator_best.pth``), if it has one."""
    try:
        info = read_best_info(run_dir)
        which = "the moving average of G" if info.get("generator") == "ema" else "G"
        line = (f"Best generator: {run_dir / BEST_GENERATOR} ({which} at step {info['step']}, "
                f"{info['n']} samples): {quality_summary(info)}")
        if "rescored_fid" in info:  # chosen among the best evaluations at a larger N
            line += (f"; rescored with {info['rescore_samples']:,} samples against "
                     f"{len(info['rescored']) - 1} runner(s)-up: FID "
                     f"{info['rescored_fid']:.2f}, IS {info['rescored_inception_score']:.2f}")
        if (run_dir / BEST_SAMPLES).is_file():
            line += f"\nIts samples: {run_dir / BEST_SAMPLES}"
        return line + (f"\nUse it: dcgan sample --generator {run_dir / BEST_GENERATOR} "
                       "--image samples.png")
    except (OSError, ValueError, KeyError, TypeError):
        return None


class StatsError(DCGANError):
    """The statistics file is missing, empty, corrupt or lacks columns."""


def real_reference(images: torch.Tensor, n: int = DIVERSITY_SAMPLES) -> torch.Tensor:
    """``n`` real images at evenly spaced indices: deterministic and draws on no RNG."""
    idx = torch.linspace(0, images.shape[0] - 1, min(n, images.shape[0])).long()
    return as_model_input(images[idx.to(images.device)])


def write_diagnostics(run_dir: Path, diag: Diagnosis, columns: dict, smooth: int | None = None,
                      extra: dict | None = None) -> None:
    info = {"iterations": len(columns["step"]), "last_step": int(columns["step"][-1]),
            "last_epoch": int(columns["epoch"][-1]), **(extra or {}), **diag.to_dict()}
    atomic_write_text(run_dir / DIAGNOSTICS_FILE, results_json(info))
    save_analysis(columns, diag, run_dir / ANALYSIS_FILE, smooth,
                  title=f"DCGAN training analysis: {run_dir.name}")
    evals = (extra or {}).get("evaluations")
    if evals:
        save_quality_figure(evals, run_dir / QUALITY_FILE,
                            title=f"Sample quality: {run_dir.name}")


class DiagnosticsReporter(Callback):
    """A status line per epoch; at the end, the seed's report, the JSON and the figure."""

    def __init__(self, run_dir: Path, write: Callable[[str], None] = print,
                 window: int = DEFAULT_WINDOW):
        self.run_dir, self.write, self.window = Path(run_dir), write, window

    def _diagnose(self, trainer: Trainer, with_samples: bool) -> Diagnosis:
        kwargs = {}
        if with_samples:
            kwargs = {"samples": generate(trainer.generator, trainer.fixed_noise),
                      "real": real_reference(trainer.sampler.images)}
        return diagnose(trainer.stats.columns, trainer.loss.profile, self.window,
                        quality=best_of_latest(trainer.stats.evals), **kwargs)

    def on_epoch_end(self, trainer: Trainer) -> None:
        trainer.flush()
        self.write(f"[Epoch {trainer.epoch}] {status_line(self._diagnose(trainer, False))}")

    def on_train_end(self, trainer: Trainer, outcome: Outcome) -> None:
        if outcome is Outcome.DIVERGED or len(trainer.stats) == 0:
            return
        diag = self._diagnose(trainer, True)
        self.write(report(diag))
        best = best_generator_line(self.run_dir)
        if best:
            self.write(best)
        write_diagnostics(self.run_dir, diag, trainer.stats.columns,
                          extra={"outcome": str(outcome),
                                 "evaluations": list(trainer.stats.evals)})


def read_stats_file(path: Path) -> dict[str, list]:
    if not path.exists():
        raise StatsError(f"no statistics at {path}: the run has not saved any yet (they are "
                         "written with each checkpoint and at every epoch end)")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise StatsError(f"statistics file {path} is corrupt or unreadable "
                         f"({first_line(exc, limit=160)})") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise StatsError(f"statistics file {path} lacks column(s) {', '.join(missing)}")
    if table.num_rows == 0:
        raise StatsError(f"statistics file {path} holds no rows yet")
    return table.to_pydict()


def _read_evals(path: Path) -> list[dict]:
    if not path.exists():
        return []
    try:
        return pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError):
        return []  # quality rows are optional; the stats file is what analyze needs


def _newest_generator(run_dir: Path) -> Path | None:
    final = run_dir / GENERATOR_FINAL
    if final.exists():
        return final
    from dcgan.checkpoint import list_states

    states = list_states(run_dir)
    epochs = sorted(run_dir.glob(GENERATOR_EPOCH_GLOB), key=lambda p: p.stat().st_mtime)
    candidates = states[:1] + epochs[-1:]
    return max(candidates, key=lambda p: p.stat().st_mtime) if candidates else None


def analyze_run(run_dir: str | Path, window: int = DEFAULT_WINDOW, smooth: int | None = None,
                write: Callable[[str], None] = print) -> Diagnosis:
    """Diagnose a run from its files; works while it is still training or after a stop."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise StatsError(f"{run_dir} is not a run directory")
    if not run_artifacts(run_dir):
        raise StatsError(f"{run_dir} holds no run: none of the files a run writes is there")
    columns = read_stats_file(run_dir / STATS_FILE)
    cfg, config_note = read_run_config(run_dir)
    kwargs, note = _diversity_inputs(run_dir, cfg)
    evals = _read_evals(run_dir / EVAL_FILE)
    diag = diagnose(columns, build_loss(cfg).profile, window, quality=best_of_latest(evals),
                    **kwargs)
    for line in (config_note, note):
        if line:
            write(line)
    write(report(diag))
    best = best_generator_line(run_dir)
    if best:
        write(best)
    write_diagnostics(run_dir, diag, columns, smooth, extra={"evaluations": evals})
    write(f"Wrote {run_dir / ANALYSIS_FILE} and {run_dir / DIAGNOSTICS_FILE}")
    return diag


def read_run_config(run_dir: Path) -> tuple[TrainConfig, str]:
    """The configuration the run was trained with (its saved ``config.yaml``, read by the
    same rules as training's), and a note when there is none to read."""
    path = run_dir / CONFIG_FILE
    if not path.exists():
        return TrainConfig(), f"note: no {CONFIG_FILE} in {run_dir}; assuming the defaults"
    try:
        return load_config(path), ""
    except ConfigError as exc:
        raise StatsError(f"{path} is not a usable run config ({exc})") from None


def _diversity_inputs(run_dir: Path, cfg: TrainConfig) -> tuple[dict, str]:
    """Samples of the newest generator and real images for the mode-collapse check, if any."""
    from dcgan.data import load_mnist
    from dcgan.generation import load_generator, sample

    path = _newest_generator(run_dir)
    if path is None:
        return {}, "note: no generator weights in the run yet; mode-collapse check skipped"
    try:
        g = load_generator(path)
        images, _ = load_mnist(cfg.data_dir, subset=cfg.train_subset)
    except DCGANError as exc:
        return {}, f"note: mode-collapse check skipped ({exc})"
    return {"samples": sample(g, DIVERSITY_SAMPLES, seed=0),
            "real": real_reference(images)}, ""
