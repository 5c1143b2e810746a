"""What every driver does before training, written once: ``dcgan train`` (``dcgan.run``),
``dcgan train-distributed`` (``dcgan_cluster.launch``) and ``dcgan tune``
(``dcgan_tune.search``).

1. ``check_target``: the directory it will write is not held by another process, can be
   created and written, and the metrics port (if any) can be bound; all before any slow work,
   so that bad input fails in a second and leaves nothing behind;
2. the configuration: defaults < a saved run's config < ``--config`` < ``--set``
   (``dcgan.config.load_config``);
3. ``holding``: the directory is locked for the whole run and the config it trains with is
   written into it (``config.yaml``) only then.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from dcgan.config import TrainConfig, save_config
from dcgan.layout import CONFIG_FILE
from dcgan.monitoring import check_metrics_args
from dcgan.paths import check_writable_dir
from dcgan.runlock import check_unlocked, hold_run_dir


@dataclass(frozen=True)
class MetricsAddress:
    """Where a run serves Prometheus metrics (port 0: nowhere)."""

    host: str = "127.0.0.1"
    port: int = 0


def check_target(out: str | Path, metrics: MetricsAddress = MetricsAddress(),
                 flag: str = "--out") -> Path:
    """The checks every driver makes on the directory it writes and on its metrics port."""
    path = Path(out)
    check_unlocked(path)  # first: say who is writing it, before anything else about it
    check_writable_dir(path, flag)
    check_metrics_args(metrics.host, metrics.port)
    return path


@contextlib.contextmanager
def holding(run_dir: Path, command: str, cfg: TrainConfig | None = None) -> Iterator[None]:
    """Hold ``run_dir`` against other writers for the run; write ``cfg`` into it once held."""
    with hold_run_dir(run_dir, command):
        if cfg is not None:
            save_config(cfg, run_dir / CONFIG_FILE)
        yield
