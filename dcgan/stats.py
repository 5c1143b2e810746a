"""Per-iteration training statistics: one row per step, kept as columns, saved as Parquet.

Step values stay on the device until ``flush``; one transfer then serves many steps, so the
training loop never waits for the device just to record a number.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import torch

from dcgan.io import atomic_write_parquet
from dcgan.step import STEP_VALUES

# Host values the step trained with: g_lr, d_lr, the learning rates (dcgan.schedule may
# change them); augment_p, the augmentation probability, and augment_r, the overfitting
# measure of the controller's latest decision (dcgan.augment; NaN before the first).
HOST_COLUMNS = ("g_lr", "d_lr", "augment_p", "augment_r")
COLUMNS = ("step", "epoch", "batch", *STEP_VALUES, *HOST_COLUMNS, "time")
_INT_COLUMNS = ("step", "epoch", "batch")


class TrainingStats:
    """``reduce`` (distributed mode) turns each rank's pending step values into the mean over
    ranks; it is a collective, so every rank must flush at the same steps."""

    def __init__(self, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        self.reduce = reduce
        self.columns: dict[str, list] = {c: [] for c in COLUMNS}
        self.evals: list[dict] = []  # sample-quality rows (step, epoch, fid, ...), if any
        # This rank's own values before the mean over ranks (distributed mode only; not
        # checkpointed): per-rank monitoring reads them. Otherwise the same as ``columns``.
        self.local_columns: dict[str, list] = self.columns if reduce is None else \
            {c: [] for c in COLUMNS}
        self._pending: list[tuple[int, int, int, float, tuple[float, float], torch.Tensor]] = []

    def __len__(self) -> int:
        return len(self.columns["step"])

    def record(self, step: int, epoch: int, batch: int, elapsed: float,
               values: torch.Tensor,
               rates: tuple[float, ...] = (math.nan,) * len(HOST_COLUMNS)) -> None:
        self._pending.append((step, epoch, batch, elapsed, rates, values))

    def flush(self) -> list[dict]:
        """Move pending rows to the host (one device sync) and return them as dicts."""
        if not self._pending:
            return []
        stacked = torch.stack([p[5] for p in self._pending])
        local = None
        if self.reduce is not None:
            local, stacked = stacked, self.reduce(stacked)
        values = stacked.cpu().tolist()
        rows = self._append(self.columns, values)
        if local is not None:
            self._append(self.local_columns, local.cpu().tolist())
        self._pending.clear()
        return rows

    def _append(self, columns: dict[str, list], values: list[list[float]]) -> list[dict]:
        rows = []
        for (step, epoch, batch, elapsed, rates, _), vals in zip(self._pending, values,
                                                                 strict=True):
            row = {"step": step, "epoch": epoch, "batch": batch,
                   **dict(zip(STEP_VALUES, vals, strict=True)),
                   **dict(zip(HOST_COLUMNS, rates, strict=True)), "time": elapsed}
            for c in COLUMNS:
                columns[c].append(row[c])
            rows.append(row)
        return rows

    def last(self, n: int) -> dict[str, list]:
        return {c: v[-n:] for c, v in self.columns.items()}

    # Checkpoint form: tensors only, so that weights_only loading accepts it.
    def state_dict(self) -> dict[str, torch.Tensor]:
        assert not self._pending, "flush() before saving"
        state: dict = {c: torch.tensor(v, dtype=torch.int64 if c in _INT_COLUMNS else torch.float64)
                       for c, v in self.columns.items()}
        state["evals"] = [dict(row) for row in self.evals]
        return state

    def load_state_dict(self, state: dict) -> None:
        n = len(state["step"])
        # A state from before a rate or augmentation column: its values are unknown (NaN).
        self.columns = {c: state[c].tolist() if c in state else [math.nan] * n
                        for c in COLUMNS}
        if self.reduce is None:
            self.local_columns = self.columns
        self.evals = [dict(row) for row in state.get("evals", [])]
        self._pending.clear()

    def to_table(self) -> pa.Table:
        types = {c: pa.int64() if c in _INT_COLUMNS else pa.float64() for c in COLUMNS}
        for m in STEP_VALUES:
            types[m] = pa.float32()
        # An unknown rate or augmentation value (NaN in memory) is a null in the file.
        return pa.table({c: pa.array(self.columns[c], type=types[c],
                                     from_pandas=c in HOST_COLUMNS) for c in COLUMNS})

    def write_parquet(self, path: str | Path) -> None:
        atomic_write_parquet(self.to_table(), path)


def best_of_latest(evals: list[dict]) -> dict | None:
    """The better-scoring (lower FID) row of the latest evaluation step: with an EMA
    generator every step has a raw and an averaged row."""
    if not evals:
        return None
    latest = [row for row in evals if row["step"] == evals[-1]["step"]]
    return min(latest, key=lambda row: row["fid"])


def best_overall(evals: list[dict]) -> dict | None:
    """The lowest-FID row of the whole run (the one ``dcgan_generator_best.pth`` holds)."""
    return min(evals, key=lambda row: row["fid"]) if evals else None


def write_evals_parquet(evals: list[dict], path: str | Path) -> None:
    atomic_write_parquet(pa.Table.from_pylist(evals), path)
