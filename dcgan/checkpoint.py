"""Checkpoints: the seed's weight files and one full-state file per save, written atomically.

A full-state checkpoint holds everything a bit-exact resume needs: both models, both
optimizers (and the fp16 grad scaler), the step (which fixes the epoch and the position in
the epoch's data order), every RNG state, the fixed sampling noise, the config and the stats
rows so far. Checkpoints are untrusted input: they are read with ``weights_only=True``.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Protocol

import torch

from dcgan.errors import CheckpointError, first_line
from dcgan.io import atomic_write_bytes
from dcgan.layout import CHECKPOINT_DIR, STATE_RE, STATE_TMP_GLOB, state_file

FORMAT = "dcgan-train-state"
# 2: the model selection's state (best generator, candidates) is its own part, "selection";
# version 1 held them as top-level keys and is upgraded on load.
VERSION = 2
READABLE_VERSIONS = (1, 2)
HEADER_KEYS = ("format", "version")
SELECTION_KEY = "selection"  # the part of dcgan.selection.ModelSelection
# The newest full state and one fallback, should the newest be unreadable: local runs, Ray
# Train's checkpoints (dcgan_cluster.runtime) and a search's trials (dcgan_tune.search).
KEEP_LATEST = 2
REQUIRED_KEYS = ("generator", "discriminator", "opt_g", "opt_d", "step", "rng", "fixed_noise",
                 "config", "stats", "elapsed")


def save_torch(obj: Any, path: str | Path) -> None:
    """``torch.save`` through a temporary file and a rename (never a truncated file)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getbuffer())


def load_torch(path: str | Path, *, what: str = "checkpoint",
               error: type[Exception] = CheckpointError,
               unusable: str = "is corrupt or unreadable") -> Any:
    """``torch.load(weights_only=True)`` of an untrusted file, on the CPU, with a one-line
    ``error`` naming ``what`` and the file: the one place our files are unpickled."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist") from None
    except Exception as exc:  # pickle, zip and torch errors all mean "unusable file"
        raise error(f"{what} {path} {unusable} ({first_line(exc, limit=160)})") from None


def state_cpu(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of a module's weights on the CPU: ``.cpu()`` alone would alias weights that keep
    training."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


state_path = state_file  # the layout's name for it


def list_states(run_dir: str | Path) -> list[Path]:
    """Full-state checkpoints in ``run_dir``, newest (highest step) first."""
    directory = Path(run_dir) / CHECKPOINT_DIR
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := STATE_RE.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def with_header(state: dict[str, Any]) -> dict[str, Any]:
    """A trainer state as a full-state checkpoint (format marker and version)."""
    return {"format": FORMAT, "version": VERSION, **state}


def save_state(run_dir: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` as the newest full-state checkpoint and prune old ones."""
    path = state_path(run_dir, state["step"])
    save_torch(with_header(state), path)
    for old in list_states(run_dir)[KEEP_LATEST:]:
        old.unlink(missing_ok=True)
    for leftover in path.parent.glob(STATE_TMP_GLOB):
        leftover.unlink(missing_ok=True)
    return path


class StateStore(Protocol):
    """Where full states go: ``LocalStore`` here; in distributed workers and search trials,
    a Ray Train or Tune report (``dcgan_cluster.ray_store.RayStore``)."""

    def save(self, state: dict[str, Any], report: dict[str, Any]) -> str:
        """Keep ``state``; ``report`` (step, epoch, a search's metrics) goes with it where
        the store has a use for it. Returns where the state went, for log lines."""
        ...


class LocalStore:
    """``RUN_DIR/checkpoints/state_step_*.pt``, the newest ``KEEP_LATEST`` kept."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)

    def save(self, state: dict[str, Any], report: dict[str, Any]) -> str:
        return str(save_state(self.run_dir, state))


def load_state(path: str | Path) -> dict[str, Any]:
    """Load and sanity-check one full-state checkpoint."""
    state = load_torch(path)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} is not a dcgan full-state checkpoint")
    if state.get("version") not in READABLE_VERSIONS:
        raise CheckpointError(f"checkpoint {path} has format version {state.get('version')}, "
                              f"this dcgan reads versions "
                              f"{', '.join(map(str, READABLE_VERSIONS))}")
    state = upgrade(state)
    missing = incomplete_parts(state)
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete (missing or malformed: "
                              f"{', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''})")
    return state


def upgrade(state: dict[str, Any]) -> dict[str, Any]:
    """A state of an older format version in today's layout."""
    if state.get("version") == 1:
        legacy = {k: state.pop(k) for k in ("best_generator", "candidates") if k in state}
        state[SELECTION_KEY] = legacy or None
        state["version"] = VERSION
    return state


# The parts inside a full state that a resume reads, by where they sit (optional parts: their
# keys, when the part is there at all).
_NESTED = {"rng": ("device_type", "torch", "noise"),
           "opt_g": ("state", "param_groups"), "opt_d": ("state", "param_groups")}
_OPTIONAL = {"ema": ("decay", "updates", "shadow"), "augment": ("p", "generator"),
             SELECTION_KEY: ("best_generator", "candidates")}


def incomplete_parts(state: dict[str, Any]) -> list[str]:
    """What a full state lacks, checked whole before anything is restored from it: every
    top-level key, the parts inside them, and every statistics column with one value per
    step (a state cut short must not resume into empty or shifted statistics rows)."""
    from dcgan.stats import COLUMNS as STATS_COLUMNS
    from dcgan.stats import HOST_COLUMNS

    missing = [k for k in REQUIRED_KEYS if k not in state]
    for key, parts in _NESTED.items():
        if isinstance(state.get(key), dict):
            missing += [f"{key}.{p}" for p in parts if p not in state[key]]
        elif key in state:
            missing.append(key)
    for key, parts in _OPTIONAL.items():
        part = state.get(key)
        if part is not None:
            missing += ([f"{key}.{p}" for p in parts if p not in part]
                        if isinstance(part, dict) else [key])
    for key in ("generator", "discriminator", "config"):
        if key in state and not (isinstance(state[key], dict) and state[key]):
            missing.append(key)
    if "fixed_noise" in state and not isinstance(state["fixed_noise"], torch.Tensor):
        missing.append("fixed_noise")
    stats = state.get("stats")
    if isinstance(stats, dict):
        step = state.get("step")
        for column in STATS_COLUMNS:
            values = stats.get(column)
            if values is None:
                if column not in HOST_COLUMNS:  # older states lack these: unknown, not wrong
                    missing.append(f"stats.{column}")
            elif not isinstance(values, torch.Tensor) or (
                    isinstance(step, int) and len(values) != step):
                missing.append(f"stats.{column} (one value per step)")
    elif "stats" in state:
        missing.append("stats")
    return missing


def load_latest_state(run_dir: str | Path, warn=print) -> tuple[Path, dict[str, Any]]:
    """The newest readable full state. An unreadable newer one is reported and skipped: the
    previous checkpoint (kept for this purpose) is used instead."""
    paths = list_states(run_dir)
    if not paths:
        raise CheckpointError(f"nothing to resume: no checkpoint in "
                              f"{Path(run_dir) / CHECKPOINT_DIR} (start the run without --resume)")
    errors = []
    for path in paths:
        try:
            state = load_state(path)
        except CheckpointError as exc:
            errors.append(str(exc))
            continue
        for err in errors:
            warn(f"warning: {err}; resuming from the previous checkpoint {path.name}")
        return path, state
    raise CheckpointError(errors[0] + (f" (and {len(errors) - 1} older checkpoint(s) too)"
                                       if len(errors) > 1 else ""))
