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

from dcgan.assembly import assemble
from dcgan.callbacks import ProgressBar
from dcgan.checkpoint import LocalStore, list_states, load_latest_state
from dcgan.config import TrainConfig
from dcgan.device import resolve_device
from dcgan.errors import NonFiniteLossError
from dcgan.prepare import Previous, open_run
from dcgan.sinks import RunInfo, Sink, open_sinks
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
                sinks: Sequence[Sink] = (),
                callbacks: Sequence[Callback] = ()) -> tuple[Trainer, Outcome]:
    """``callbacks`` run before the mode's own (a benchmark's stop rule, say); ``sinks``
    (``dcgan.sinks``) are fed after them."""
    run_dir = Path(run_dir)
    bar = ProgressBar(progress)
    write = bar.writer()
    with contextlib.ExitStack() as stack:

        def check(cfg: TrainConfig, before: Previous | None) -> Trainer:
            device = resolve_device(cfg)
            feeds = open_sinks(sinks, RunInfo(run_dir.resolve().name, "local", cfg.to_dict()),
                               stack, write)
            return assemble(cfg, device, LocalStore(run_dir), run_dir=run_dir, write=write,
                            resume_hint=f"Resume with: dcgan train --out {run_dir} --resume",
                            feeds=feeds, callbacks=[bar, *callbacks], step_fn=step_fn,
                            restore=before.state if before else None)

        with open_run(run_dir, "dcgan train", resume=resume, overwrite=overwrite,
                      previous=latest_state, check=check, config_path=config_path,
                      overrides=list(overrides), sinks=sinks,
                      write=write) as run, stop_on_signals(run.ready):
            return run.ready, _fit(run.ready, run.run_dir)


def latest_state(run_dir: Path) -> Previous:
    """A local run's newest full state (the one a resume continues)."""
    state_file, state = load_latest_state(run_dir)
    return Previous(state["config"], int(state["step"]), (str(state_file), state))


def _fit(trainer: Trainer, run_dir: Path) -> Outcome:
    try:
        return trainer.fit()
    except NonFiniteLossError as exc:
        good = list_states(run_dir)
        keep = f"last good checkpoint: {good[0]}" if good else "no checkpoint was written"
        raise NonFiniteLossError(f"{exc}; training stopped ({keep}). Try lower learning "
                                 "rates or precision=fp32") from None
