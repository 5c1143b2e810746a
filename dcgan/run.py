"""Local mode: a training run in a run directory, from config to artifacts.

The order matters for "never lose existing results": everything that can fail on bad input
(config, device, data, checkpoint) is checked before anything in the run directory changes.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from dcgan.callbacks import (
    Checkpointer,
    ConsoleLogger,
    FinalArtifacts,
    ProgressBar,
    QualityEvaluator,
    SampleWriter,
    StatsWriter,
)
from dcgan.checkpoint import CHECKPOINT_DIR, list_states, load_latest_state
from dcgan.config import TrainConfig, load_config, save_config
from dcgan.data import load_mnist
from dcgan.device import resolve_device
from dcgan.errors import NonFiniteLossError, RunDirError
from dcgan.metrics import MetricsCallback, MetricsExporter, check_metrics_args
from dcgan.quality import build_meter
from dcgan.report import DiagnosticsReporter
from dcgan.stats import STATS_FILE
from dcgan.trainer import Callback, Outcome, Trainer

CONFIG_FILE = "config.yaml"
_ARTIFACT_PATTERNS = (CONFIG_FILE, STATS_FILE, "dcgan_*.png", "dcgan_*.pth", "dcgan_*.json")


def run_artifacts(run_dir: Path) -> list[Path]:
    """Files and folders of ours in ``run_dir`` (what --overwrite removes; nothing else)."""
    found = [p for pattern in _ARTIFACT_PATTERNS for p in run_dir.glob(pattern)]
    if (run_dir / CHECKPOINT_DIR).is_dir():
        found.append(run_dir / CHECKPOINT_DIR)
    return sorted(set(found))


def file_writing_callbacks(run_dir: Path, cfg: TrainConfig, device: torch.device,
                           write: Callable[[str], None], checkpointer: Callback) -> list[Callback]:
    """The side effects of the process that writes RUN_DIR (local mode; rank 0 of a
    distributed run), in the order they must run: quality before the checkpoint that keeps
    it, diagnostics after both. Builds the quality meter now, so its inputs fail early."""
    meter = build_meter(cfg.data_dir, device) if cfg.eval_every else None
    quality = [QualityEvaluator(run_dir, meter, write)] if meter is not None else []
    return [ConsoleLogger(write), SampleWriter(run_dir, cfg.sample_every), *quality,
            checkpointer, StatsWriter(run_dir), DiagnosticsReporter(run_dir, write),
            FinalArtifacts(run_dir)]


def _check_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    if resume and overwrite:
        raise RunDirError("--resume and --overwrite contradict each other; pick one")
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"--out {run_dir} exists and is not a directory")
    if not resume and not overwrite and run_dir.is_dir() and run_artifacts(run_dir):
        raise RunDirError(f"{run_dir} already holds a run; pass --resume to continue it or "
                          "--overwrite to replace it")


@contextlib.contextmanager
def stop_on_signals(trainer: Trainer) -> Iterator[None]:
    """SIGINT/SIGTERM ask the loop to stop after the current step (state is then saved);
    a second signal stops at once."""

    def handler(signum, frame):
        if trainer.stop_requested:
            raise KeyboardInterrupt
        trainer.stop_requested = signal.Signals(signum).name
        print(f"\n{trainer.stop_requested} received: saving state after this step "
              "(send it again to stop at once)", file=sys.stderr, flush=True)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def train_local(run_dir: str | Path, config_path: str | Path | None = None,
                overrides: Sequence[str] = (), resume: bool = False, overwrite: bool = False,
                extra_callbacks: Sequence[Callback] = (), progress: bool | None = None,
                step_fn=None, metrics_host: str = "127.0.0.1",
                metrics_port: int = 0) -> tuple[Trainer, Outcome]:
    run_dir = Path(run_dir)
    _check_run_dir(run_dir, resume, overwrite)
    check_metrics_args(metrics_host, metrics_port)

    state: dict[str, Any] | None = None
    state_file: Path | None = None
    if resume:
        if not run_dir.is_dir():
            raise RunDirError(f"nothing to resume: {run_dir} does not exist")
        state_file, state = load_latest_state(run_dir)
        cfg = load_config(config_path, list(overrides), base=state["config"])
    else:
        cfg = load_config(config_path, list(overrides))
    device = resolve_device(cfg)

    images, _ = load_mnist(cfg.data_dir, train=True, subset=cfg.train_subset)
    bar = ProgressBar(progress)
    write = bar.writer()
    checkpointer = Checkpointer(run_dir, write)
    callbacks: list[Callback] = [
        bar, *file_writing_callbacks(run_dir, cfg, device, write, checkpointer),
        *extra_callbacks]
    with contextlib.ExitStack() as stack:
        if metrics_port:
            exporter = MetricsExporter(run_dir.resolve().name, "local", cfg.to_dict())
            port = exporter.start(metrics_host, metrics_port)
            stack.callback(exporter.stop)
            write(f"Prometheus metrics on http://{metrics_host}:{port}/metrics")
            callbacks.append(MetricsCallback(exporter.apply))
        return _train(run_dir, cfg, images, device, callbacks, state, state_file, overwrite,
                      step_fn)


def _train(run_dir: Path, cfg: TrainConfig, images: torch.Tensor, device: torch.device,
           callbacks: list[Callback], state: dict[str, Any] | None, state_file: Path | None,
           overwrite: bool, step_fn) -> tuple[Trainer, Outcome]:
    kwargs = {"step_fn": step_fn} if step_fn is not None else {}
    trainer = Trainer(cfg, images, device, callbacks=callbacks, **kwargs)
    if state is not None:
        trainer.load_state_dict(state, source=str(state_file))

    # Inputs are good: only now touch the run directory.
    if overwrite:
        for path in run_artifacts(run_dir):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / CONFIG_FILE)

    with stop_on_signals(trainer):
        try:
            outcome = trainer.fit()
        except NonFiniteLossError as exc:
            good = list_states(run_dir)
            keep = f"last good checkpoint: {good[0]}" if good else "no checkpoint was written"
            raise NonFiniteLossError(f"{exc}; training stopped ({keep}). Try lower learning "
                                     "rates or precision=fp32") from None
    return trainer, outcome

