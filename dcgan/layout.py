"""The run directory's layout: every file and folder a run writes or reads, named once.

Writers (local mode, rank 0 of a distributed run, the search), readers (``dcgan analyze``,
``dcgan sample``, resume), the wings, the benchmarks and the tests all take names from here.
``RUN_ENTRIES`` lists them all, each with what it holds: ``--overwrite`` removes exactly what
matches it (``run_artifacts``), ``dcgan analyze`` recognises a run by it, docs/reference.md's
table of run files is checked against it, and a test finds every file of a full run in it.
``.dcgan.lock`` (``LOCK_FILE``) is the one file of ours outside it: the lock of the process
writing the run, which ``--overwrite`` holds, never removes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

CONFIG_FILE = "config.yaml"
STATS_FILE = "dcgan_training_stats.parquet"
EVAL_FILE = "dcgan_eval_stats.parquet"
GENERATOR_FINAL = "dcgan_generator_final.pth"
DISCRIMINATOR_FINAL = "dcgan_discriminator_final.pth"
GENERATOR_EMA_FINAL = "dcgan_generator_ema_final.pth"
BEST_GENERATOR = "dcgan_generator_best.pth"
BEST_INFO = "dcgan_generator_best.json"
FINAL_SAMPLES = "dcgan_final_samples.png"
ANALYSIS_FILE = "dcgan_training_analysis.png"
QUALITY_FILE = "dcgan_quality.png"
DIAGNOSTICS_FILE = "dcgan_diagnostics.json"
CONFIG_CHANGES = "dcgan_config_changes.json"
TIMING_FILE = "dcgan_timing.json"
WORKERS_FILE = "dcgan_workers.json"
CHECKPOINT_DIR = "checkpoints"
RAY_STORAGE_DIR = "ray"
LOCK_FILE = ".dcgan.lock"
# A full state inside a Ray Train / Tune checkpoint directory.
RAY_STATE_FILE = "state.pt"

BEST_SAMPLES = "dcgan_best_samples.png"

STATE_RE = re.compile(r"^state_step_(\d+)\.pt$")
STATE_TMP_GLOB = ".state_step_*.tmp"  # left by a writer killed mid-write
GENERATOR_EPOCH_GLOB = "dcgan_generator_epoch_*.pth"


@dataclass(frozen=True)
class Entry:
    """A file or folder a run writes: ``name`` as the docs write it (``{E}``, ``{B}``: numbers
    that vary), ``what`` it holds and when it is written."""

    name: str
    what: str
    folder: bool = False

    @property
    def pattern(self) -> str:
        """The glob that finds it in a run directory."""
        return re.sub(r"\{[A-Z]\}", "*", self.name)


RUN_ENTRIES = (
    Entry(CONFIG_FILE, "the configuration the weights were trained with"),
    Entry(CONFIG_CHANGES, "config changes made on resume, from the step each applies"),
    Entry(STATS_FILE, "one row per step (d_loss, g_loss, accuracies, rates, ...)"),
    Entry(EVAL_FILE, "one row per evaluation (FID, IS, ... of G and its moving average)"),
    Entry("dcgan_samples_epoch_{E}_batch_{B}.png", "the seed's sample grid every sample_every "
          "batches"),
    Entry("dcgan_generator_epoch_{E}.pth", "G's weights every checkpoint_every epochs"),
    Entry("dcgan_discriminator_epoch_{E}.pth", "D's weights every checkpoint_every epochs"),
    Entry(GENERATOR_FINAL, "G's weights at the end"),
    Entry(DISCRIMINATOR_FINAL, "D's weights at the end"),
    Entry(GENERATOR_EMA_FINAL, "the moving average of G's weights at the end"),
    Entry(BEST_GENERATOR, "the best generator the run saw (lowest FID)"),
    Entry(BEST_INFO, "the best generator's step and scores"),
    Entry(BEST_SAMPLES, "64 samples of the best generator, at the end"),
    Entry(FINAL_SAMPLES, "64 samples of the final G (the seed's file)"),
    Entry(ANALYSIS_FILE, "the analysis figure"),
    Entry(QUALITY_FILE, "FID and IS by step and by time"),
    Entry(DIAGNOSTICS_FILE, "the final report as data"),
    Entry(TIMING_FILE, "distributed mode: start-up time"),
    Entry(WORKERS_FILE, "distributed mode: each worker group's hosts and ranks"),
    Entry(CHECKPOINT_DIR, "full states (resume): state_step_{N}.pt", folder=True),
    Entry(RAY_STORAGE_DIR, "distributed mode: Ray Train's storage by default", folder=True),
)


def run_artifacts(run_dir: str | Path) -> list[Path]:
    """Every file and folder of ``RUN_ENTRIES`` in ``run_dir``, and the temporary files a
    writer killed mid-write left beside them (what --overwrite removes; nothing else)."""
    run_dir = Path(run_dir)
    found: set[Path] = set()
    for entry in RUN_ENTRIES:
        found.update(p for p in run_dir.glob(entry.pattern) if p.is_dir() == entry.folder)
        if not entry.folder:  # dcgan.io.atomic_open's name for a file being written
            found.update(run_dir.glob(f".{entry.pattern}.*.tmp"))
    return sorted(found)

# A search directory (dcgan tune --out).
TRIALS_TABLE = "trials.parquet"
TRIALS_CSV = "trials.csv"
BEST_CONFIG = "best_config.yaml"
SEARCH_BEST_GENERATOR = "best_generator.pth"
SEARCH_SUMMARY = "search.json"
SEARCH_SETTINGS = "search_settings.json"
# Every file and folder a search writes (what tune --overwrite removes; nothing else).
SEARCH_ENTRIES = (TRIALS_TABLE, TRIALS_CSV, BEST_CONFIG, SEARCH_BEST_GENERATOR, SEARCH_SUMMARY,
                  SEARCH_SETTINGS, RAY_STORAGE_DIR)


def search_artifacts(out: str | Path) -> list[Path]:
    """The files and folders of ``SEARCH_ENTRIES`` in ``out``."""
    return sorted(p for name in SEARCH_ENTRIES if (p := Path(out) / name).exists())


def state_file(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"state_step_{step:08d}.pt"


def samples_file(epoch: int, batch: int) -> str:
    return f"dcgan_samples_epoch_{epoch}_batch_{batch}.png"


def epoch_weights(network: str, epoch: int) -> str:
    """``network``: generator or discriminator."""
    return f"dcgan_{network}_epoch_{epoch}.pth"
