"""The options of a search, their choices and their defaults, named once: ``dcgan tune``'s flags
(``dcgan_tune.commands``) take their defaults from ``SearchOptions`` and the search
(``dcgan_tune.search``) runs with it. No Ray, torch or pyarrow here: building the command's
parser must stay light (tests/test_startup.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dcgan.features import CLASSES

SCHEDULERS = ("asha", "pbt", "fifo")
OBJECTIVES = ("balance", "fid", "combined")  # --metric: dcgan_tune.objective computes each


@dataclass
class SearchOptions:
    out: Path
    trials: int = 8
    max_concurrent: int | None = None
    workers_per_trial: int = 1
    scheduler: str = "asha"
    budget_steps: int = 1600  # less fails the quality guard on full MNIST (docs/tuning.md)
    metric: str = "balance"
    min_classes: int = CLASSES
    baseline: bool = False
    space_file: str | None = None
    address: str | None = None
    resume: bool = False
    overwrite: bool = False
    config_path: str | None = None
    overrides: tuple[str, ...] = ()
    use_gpu: bool | None = False  # None: auto, decided from the cluster once Ray is up
    sinks: tuple = ()  # dcgan.sinks: Prometheus's, if --metrics-port
