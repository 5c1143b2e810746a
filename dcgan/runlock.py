"""One writer per run directory: ``dcgan train``, ``train-distributed`` and ``tune`` hold an
exclusive lock on ``RUN_DIR/.dcgan.lock`` while they run; a second writer of the same folder
refuses with a one-line error naming the holder. Readers (``analyze``, ``sample``,
``evaluate``) take no lock.

The lock is the kernel's ``flock`` on the file, so it dies with its process: a lock left by
a killed process (``kill -9``, a crash, a reboot) is free again and the next writer takes it
over, replacing the holder note in the file. (On NFS, Linux maps ``flock`` to POSIX byte-range
locks, which NFS servers honour across clients.) The file is never removed: removing a lock
file that another process has just opened would let two writers hold two different files.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from dcgan.errors import RunDirError
from dcgan.layout import LOCK_FILE


class RunLockedError(RunDirError):
    """Another process is writing this run directory."""


def _describe(note: dict) -> str:
    started = note.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if started else "?"
    return (f"{note.get('command', 'a dcgan command')} (pid {note.get('pid', '?')} on host "
            f"{note.get('host', '?')}, started {when})")


def _read_note(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        note = json.loads(os.read(fd, 4096).decode() or "{}")
    except (OSError, ValueError):
        return {}
    return note if isinstance(note, dict) else {}


def _refuse(run_dir: Path, fd: int) -> RunLockedError:
    return RunLockedError(f"{run_dir} is in use by {_describe(_read_note(fd))}; wait for it "
                          "to finish, or stop it, before writing this run directory")


def check_unlocked(run_dir: str | Path) -> None:
    """Refuse early (before slow set-up) when another process holds ``run_dir``'s lock.
    Creates nothing."""
    path = Path(run_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # no lock file (or unreadable: ``hold`` will say)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _refuse(Path(run_dir), fd) from None
    finally:
        os.close(fd)  # also releases the shared lock


@contextlib.contextmanager
def hold_run_dir(run_dir: str | Path, command: str) -> Iterator[None]:
    """Create ``run_dir`` if needed and hold its lock for the block."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _refuse(run_dir, fd) from None
        note = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                "command": command}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, (json.dumps(note) + "\n").encode())
        yield
    finally:
        os.close(fd)  # releases the lock; the note stays for the record
