"""Local mode: a training run in a run directory, from config to artifacts.

The order matters for "never lose existing results": everything that can fail on bad input
(config, device, data, checkpoint) is checked before anything in the run directory changes.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from dcgan.assembly import assemble
from dcgan.callbacks import ProgressBar
from dcgan.checkpoint import LocalStore, list_states, load_latest_state
from dcgan.config import TrainConfig, load_config, save_config
from dcgan.device import resolve_device
from dcgan.errors import NonFiniteLossError, RunDirError
from dcgan.layout import ARTIFACT_PATTERNS, CHECKPOINT_DIR, CONFIG_FILE
from dcgan.monitoring import MetricsExporter
from dcgan.prepare import MetricsAddress, check_target
from dcgan.runlock import hold_run_dir
from dcgan.step import StepFn, gan_step
from dcgan.trainer import Callback, Outcome, Trainer


def run_artifacts(run_dir: Path) -> list[Path]:
    """Files and folders of ours in ``run_dir`` (what --overwrite removes; nothing else)."""
    found = [p for pattern in ARTIFACT_PATTERNS for p in run_dir.glob(pattern)]
    if (run_dir / CHECKPOINT_DIR).is_dir():
        found.append(run_dir / CHECKPOINT_DIR)
    return sorted(set(found))


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
                overrides: Sequence[str] = (), *, resume: bool = False, overwrite: bool = False,
                progress: bool | None = None, step_fn: StepFn = gan_step,
                metrics_host: str = "127.0.0.1", metrics_port: int = 0,
                callbacks: Sequence[Callback] = ()) -> tuple[Trainer, Outcome]:
    """``callbacks`` run before the mode's own (a benchmark's stop rule, say)."""
    run_dir = check_target(run_dir, MetricsAddress(metrics_host, metrics_port))
    _check_run_dir(run_dir, resume, overwrite)

    restore: tuple[str, dict[str, Any]] | None = None
    if resume:
        if not run_dir.is_dir():
            raise RunDirError(f"nothing to resume: {run_dir} does not exist")
        state_file, state = load_latest_state(run_dir)
        restore = (str(state_file), state)
        cfg = load_config(config_path, list(overrides), base=state["config"])
    else:
        cfg = load_config(config_path, list(overrides))
    device = resolve_device(cfg)

    bar = ProgressBar(progress)
    write = bar.writer()
    with contextlib.ExitStack() as stack:
        push = None
        if metrics_port:
            exporter = MetricsExporter(run_dir.resolve().name, "local", cfg.to_dict())
            port = exporter.start(metrics_host, metrics_port)
            stack.callback(exporter.stop)
            write(f"Prometheus metrics on http://{metrics_host}:{port}/metrics")
            push = exporter.apply
        trainer = assemble(cfg, device, LocalStore(run_dir), run_dir=run_dir, write=write,
                           resume_hint=f"Resume with: dcgan train --out {run_dir} --resume",
                           metrics_push=push, callbacks=[bar, *callbacks], step_fn=step_fn,
                           restore=restore)
        return _train(run_dir, cfg, trainer, overwrite)


def _train(run_dir: Path, cfg: TrainConfig, trainer: Trainer,
           overwrite: bool) -> tuple[Trainer, Outcome]:
    # Inputs are good: only now touch the run directory, holding it against other writers.
    with hold_run_dir(run_dir, "dcgan train"), stop_on_signals(trainer):
        if overwrite:  # removed only now, with the lock held and every input checked
            for path in run_artifacts(run_dir):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        save_config(cfg, run_dir / CONFIG_FILE)
        try:
            outcome = trainer.fit()
        except NonFiniteLossError as exc:
            good = list_states(run_dir)
            keep = f"last good checkpoint: {good[0]}" if good else "no checkpoint was written"
            raise NonFiniteLossError(f"{exc}; training stopped ({keep}). Try lower learning "
                                     "rates or precision=fp32") from None
    return trainer, outcome
