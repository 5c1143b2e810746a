"""Local mode: a training run in a run directory, from config to artifacts.

The order matters for "never lose existing results": everything that can fail on bad input
(config, device, data, checkpoint) is checked before anything in the run directory changes.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from dcgan.assembly import assemble
from dcgan.callbacks import ProgressBar
from dcgan.checkpoint import LocalStore, list_states, load_latest_state
from dcgan.config import TrainConfig
from dcgan.device import resolve_device
from dcgan.errors import NonFiniteLossError
from dcgan.monitoring import MetricsExporter
from dcgan.prepare import (
    MetricsAddress,
    check_target,
    holding,
    record_changes,
    remove_artifacts,
    request_config,
)
from dcgan.step import StepFn, gan_step
from dcgan.trainer import Callback, Outcome, Trainer


@contextlib.contextmanager
def stop_on_signals(trainer: Trainer) -> Iterator[None]:
    """SIGINT/SIGTERM ask the loop to stop after the current step, or at once during an
    evaluation (state is then saved); a second signal stops at once."""

    def handler(signum, frame):
        if trainer.stop_requested:
            raise KeyboardInterrupt
        name = signal.Signals(signum).name
        print(f"\n{name} received: saving state (send it again to stop at once)",
              file=sys.stderr, flush=True)
        trainer.request_stop(name)

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
    run_dir = check_target(run_dir, MetricsAddress(metrics_host, metrics_port),
                           request=(resume, overwrite))

    restore: tuple[str, dict[str, Any]] | None = None
    if resume:
        state_file, state = load_latest_state(run_dir)
        restore = (str(state_file), state)
    cfg, changes = request_config(restore[1]["config"] if restore else None, config_path,
                                  list(overrides))
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
        return _train(run_dir, cfg, trainer, overwrite=overwrite, changes=changes, write=write)


def _train(run_dir: Path, cfg: TrainConfig, trainer: Trainer, *, overwrite: bool,
           changes: dict[str, list[Any]], write) -> tuple[Trainer, Outcome]:
    # Inputs are good: only now touch the run directory, holding it against other writers.
    with holding(run_dir, "dcgan train", before=remove_artifacts if overwrite else None,
                 cfg=cfg), stop_on_signals(trainer):
        record_changes(run_dir, changes, trainer.step, write)
        try:
            outcome = trainer.fit()
        except NonFiniteLossError as exc:
            good = list_states(run_dir)
            keep = f"last good checkpoint: {good[0]}" if good else "no checkpoint was written"
            raise NonFiniteLossError(f"{exc}; training stopped ({keep}). Try lower learning "
                                     "rates or precision=fp32") from None
    return trainer, outcome
