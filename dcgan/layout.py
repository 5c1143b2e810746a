"""The run directory's layout: every file a run writes or reads, named once.

Writers (local mode, rank 0 of a distributed run, the search), readers (``dcgan analyze``,
``dcgan sample``, resume), the wings, the benchmarks and the tests all take names from here::

    RUN_DIR/
      config.yaml                       the configuration the weights were trained with
      dcgan_training_stats.parquet      one row per step (d_loss, g_loss, accuracies, ...)
      dcgan_eval_stats.parquet          one row per evaluation (FID, IS, ... of G and its EMA)
      dcgan_samples_epoch_E_batch_B.png the seed's sample grid every sample_every batches
      dcgan_generator_epoch_N.pth       weights every checkpoint_every epochs
      dcgan_discriminator_epoch_N.pth
      dcgan_generator_final.pth         weights at the end
      dcgan_discriminator_final.pth
      dcgan_generator_ema_final.pth     the moving average of G's weights at the end
      dcgan_generator_best.pth / .json  the lowest-FID generator evaluated, and its scores
      dcgan_final_samples.png           64 samples of the final G
      dcgan_training_analysis.png       the 6-panel figure
      dcgan_quality.png                 FID and IS by step and by time
      dcgan_diagnostics.json            the final report as data
      dcgan_config_changes.json         config changes made on resume, from the step each applies
      dcgan_timing.json                 distributed mode: start-up time
      dcgan_workers.json                distributed mode: each worker group's hosts and ranks
      checkpoints/state_step_NNNNNNNN.pt full states (resume)
      ray/                              distributed mode: Ray Train's storage by default
      .dcgan.lock                       held by the process writing the run
"""

from __future__ import annotations

import re
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

STATE_RE = re.compile(r"^state_step_(\d+)\.pt$")
STATE_TMP_GLOB = ".state_step_*.tmp"  # left by a writer killed mid-write
GENERATOR_EPOCH_GLOB = "dcgan_generator_epoch_*.pth"
# What --overwrite removes (and nothing else), besides CHECKPOINT_DIR: every file above
# (the evaluations' table too: left behind, analyze would report the old run's FIDs).
ARTIFACT_PATTERNS = (CONFIG_FILE, "dcgan_*.parquet", "dcgan_*.png", "dcgan_*.pth",
                     "dcgan_*.json")

# A search directory (dcgan tune --out).
TRIALS_TABLE = "trials.parquet"
TRIALS_CSV = "trials.csv"
BEST_CONFIG = "best_config.yaml"
SEARCH_BEST_GENERATOR = "best_generator.pth"
SEARCH_SUMMARY = "search.json"
SEARCH_SETTINGS = "search_settings.json"


def state_file(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"state_step_{step:08d}.pt"


def samples_file(epoch: int, batch: int) -> str:
    return f"dcgan_samples_epoch_{epoch}_batch_{batch}.png"


def epoch_weights(network: str, epoch: int) -> str:
    """``network``: generator or discriminator."""
    return f"dcgan_{network}_epoch_{epoch}.pth"
