"""What every driver does before training, written once: ``dcgan train`` (``dcgan.run``),
``dcgan train-distributed`` (``dcgan_cluster.launch``) and ``dcgan tune``
(``dcgan_tune.search``) each open their directory with ``open_run``, which takes these
steps in this order:

1. ``check_target``: the directory it will write is not held by another process, can be
   created and written, and its sinks' inputs are good (a metrics port can be bound); all
   before any slow work, so that bad input fails in a second and leaves nothing behind;
2. ``check_request``: one resume convention for every mode: a directory that holds a run
   is continued only with ``--resume`` and replaced only with ``--overwrite``;
3. the configuration: defaults < the run's saved config (on ``--resume``) < ``--config`` <
   ``--set`` (``dcgan.config.load_config``); a change on resume is recorded
   (``record_changes``), so the run's files always say how its weights were trained;
4. the driver's own checks (devices, Ray, data, the search space): the slow ones too, since
   nothing has been written yet;
5. ``holding``: the directory is locked for the whole run, what ``--overwrite`` replaces is
   removed, and the config it trains with is written into it (``config.yaml``) only then;
6. ``record_changes``.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from dcgan.config import TrainConfig, load_config, note_ignored_settings, save_config
from dcgan.errors import ConfigError, RunDirError
from dcgan.io import atomic_write_text
from dcgan.layout import CONFIG_CHANGES, CONFIG_FILE, run_artifacts
from dcgan.paths import check_writable_dir
from dcgan.runlock import check_unlocked, hold_run_dir
from dcgan.sinks import Sink, check_sinks

T = TypeVar("T")


@dataclass(frozen=True)
class Previous:
    """What a resumed run was: the config it trained with (as saved) and the step its newest
    state holds (None: unknown to the driver, e.g. a remote storage)."""

    config: dict[str, Any]
    step: int | None = None
    state: tuple[str, dict[str, Any]] | None = None  # (where from, full state), if loaded
    extra: Any = None  # what else the driver read of it (a search: its saved settings)


@dataclass(frozen=True)
class Opened(Generic[T]):
    """A run directory held for this run, and what the driver's checks built for it."""

    run_dir: Path
    ready: T


@contextlib.contextmanager
def open_run(out: str | Path, command: str, *, resume: bool, overwrite: bool,
             previous: Callable[[Path], Previous | None],
             check: Callable[[TrainConfig, Previous | None], T],
             config_path: str | Path | None = None, overrides: list[str] | None = None,
             sinks: Sequence[Sink] = (),
             configure: Callable[[Previous | None], tuple[TrainConfig, dict]] | None = None,
             artifacts: Callable[[Path], list[Path]] = run_artifacts, what: str = "a run",
             replace: Callable[[Path], None] | None = None, save: bool = True,
             write: Callable[[str], None] = print) -> Iterator[Opened[T]]:
    """The one way a driver opens the directory it writes (the module's steps 1-6).

    ``previous(run_dir)``: what the run was, read on ``--resume`` only; ``check(cfg,
    previous)``: the driver's checks, returning what it needs to run (a trainer, a plan).
    ``configure``: how the config is made when it is not defaults < the saved config <
    --config < --set (a search resumes with its saved settings); ``artifacts``: what the
    directory holds of ours (the resume and --overwrite convention), ``what``: what to call
    it; ``replace``: what ``--overwrite`` removes once the directory is held (default: those
    artifacts); ``save``: write ``config.yaml`` (a search writes its own settings instead)."""
    run_dir = check_target(out, sinks, request=(resume, overwrite), artifacts=artifacts,
                           what=what)
    before = previous(run_dir) if resume else None
    if configure is not None:
        cfg, changes = configure(before)
    else:
        cfg, changes = request_config(before.config if before else None, config_path,
                                      list(overrides or []))
    ready = check(cfg, before)
    replace = replace or (lambda held: remove_paths(artifacts(held)))
    with holding(run_dir, command, cfg if save else None,
                 before=replace if overwrite else None):
        record_changes(run_dir, changes, before.step if before else None, write)
        yield Opened(run_dir, ready)


def check_target(out: str | Path, sinks: Sequence[Sink] = (),
                 flag: str = "--out", request: tuple[bool, bool] | None = None,
                 artifacts: Callable[[Path], list[Path]] = run_artifacts,
                 what: str = "a run") -> Path:
    """The checks every driver makes on the directory it writes and on its sinks (a metrics
    port that can be bound);
    ``request`` (resume, overwrite): also the resume convention (``check_request``)."""
    path = Path(out)
    check_unlocked(path)  # first: say who is writing it, before anything else about it
    if request is not None:
        check_request(path, *request, artifacts=artifacts, what=what)
    check_writable_dir(path, flag)
    check_sinks(sinks)
    return path


@contextlib.contextmanager
def holding(run_dir: Path, command: str, cfg: TrainConfig | None = None, *,
            before=None) -> Iterator[None]:
    """Hold ``run_dir`` against other writers for the run; once held, run ``before(run_dir)``
    (``remove_artifacts`` for --overwrite), then write ``cfg`` into it."""
    with hold_run_dir(run_dir, command):
        if before is not None:
            before(run_dir)
        if cfg is not None:
            save_config(cfg, run_dir / CONFIG_FILE)
        yield


def check_request(run_dir: Path, resume: bool, overwrite: bool,
                  artifacts: Callable[[Path], list[Path]] = run_artifacts,
                  what: str = "a run") -> None:
    """One resume convention for every driver (``artifacts``: what it finds of its own)."""
    if resume and overwrite:
        raise RunDirError("--resume and --overwrite contradict each other; pick one")
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"--out {run_dir} exists and is not a directory")
    if not resume and not overwrite and run_dir.is_dir() and artifacts(run_dir):
        raise RunDirError(f"{run_dir} already holds {what}; pass --resume to continue it or "
                          "--overwrite to replace it")
    if resume and not run_dir.is_dir():
        raise RunDirError(f"nothing to resume: {run_dir} does not exist")


def remove_artifacts(run_dir: Path) -> None:
    """--overwrite: only now, with the lock held and every input checked."""
    remove_paths(run_artifacts(run_dir))


def remove_paths(paths: list[Path]) -> None:
    """Remove each file or folder (what an --overwrite found to be ours)."""
    for path in paths:
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def saved_config(run_dir: Path) -> dict[str, Any] | None:
    """The run's saved ``config.yaml`` as a mapping (None when there is none)."""
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        return load_config(path).to_dict()  # refuses a corrupt file in one line
    except ConfigError as exc:
        raise RunDirError(f"cannot resume: {path} is not a usable run config ({exc.rule})"
                          ) from None


def request_config(saved: dict[str, Any] | None, config_path: str | Path | None,
                   overrides: list[str]) -> tuple[TrainConfig, dict[str, list[Any]]]:
    """The config a run trains with and what it changes: a fresh run's is defaults < --config
    < --set; a resumed run's (``saved``: what it was trained with) starts from ``saved``."""
    cfg = load_config(config_path, overrides, base=saved)
    note_ignored_settings(cfg)
    return cfg, (config_changes(saved, cfg) if saved is not None else {})


def config_changes(saved: dict[str, Any], cfg: TrainConfig) -> dict[str, list[Any]]:
    """key -> [before, after] for every key a resume changes (a key missing from an older
    run had its default)."""
    before = {**TrainConfig().to_dict(), **saved}
    return {k: [before.get(k), v] for k, v in cfg.to_dict().items() if before.get(k) != v}


def record_changes(run_dir: Path, changes: dict[str, list[Any]], step: int | None,
                   write=print) -> None:
    """Append a resume's config changes to ``dcgan_config_changes.json``, the run's history of
    how its weights were trained (``config.yaml`` holds the latest values)."""
    if not changes:
        return
    path = run_dir / CONFIG_CHANGES
    history: list = []
    if path.is_file():
        with contextlib.suppress(OSError, ValueError):
            loaded = json.loads(path.read_text())
            history = loaded if isinstance(loaded, list) else []
    history.append({"from_step": step, "changes": changes})
    atomic_write_text(path, json.dumps(history, indent=2) + "\n")
    where = f"from step {step}" if step is not None else "from the step it resumes at"
    write("Config changed on resume " + where + ": " + ", ".join(
        f"{k} {a!r} -> {b!r}" for k, (a, b) in changes.items()) + f" (recorded in {path.name})")
