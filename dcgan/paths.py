"""Checks of user-supplied paths, run before any work: a directory we will write into, or a
file we will write, must be creatable and writable, proven by creating (and removing) a
probe in the nearest folder that exists. Catches: a parent that is a file, a read-only or
virtual file system (/proc, /sys), missing permissions."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from dcgan.errors import DCGANError


class PathError(DCGANError):
    """A path the user gave cannot be used as asked (status 2, a usage error)."""

    exit_code = 2


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate):
            return candidate
    return Path(path.anchor or ".")


def _probe(folder: Path, flag: str, path: Path) -> None:
    try:
        probe = tempfile.mkdtemp(prefix=".dcgan-probe-", dir=folder)
    except OSError as exc:
        raise PathError(f"{flag} {path}: cannot write in {folder} "
                        f"({exc.strerror or exc})") from None
    with contextlib.suppress(OSError):
        os.rmdir(probe)


def check_writable_dir(path: str | Path, flag: str = "--out") -> Path:
    """``path`` is (or can be made) a directory we can write into. Creates nothing that
    stays behind."""
    path = Path(path).expanduser()
    found = _nearest_existing(path.absolute())
    if not found.is_dir():
        what = "exists and is not a directory" if found == path.absolute() else (
            f"cannot be created: {found} is not a directory")
        raise PathError(f"{flag} {path} {what}")
    _probe(found, flag, path)
    return path


def name_max(folder: str | Path) -> int:
    """The longest file name the file system holding ``folder`` (or its nearest existing
    parent) takes."""
    try:
        return os.pathconf(_nearest_existing(Path(folder).absolute()), "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def check_writable_file(path: str | Path, flag: str) -> Path:
    """``path`` is a file we can (over)write: not a directory, its folder writable, its name
    within the file system's limit (checked before the work, not found at its end)."""
    path = Path(path).expanduser()
    limit = name_max(path.parent)
    if len(os.fsencode(path.name)) > limit:  # first: the OS refuses even to look it up
        raise PathError(f"{flag}: the file name is {len(os.fsencode(path.name))} bytes long; "
                        f"this file system takes at most {limit}")
    if path.is_dir():
        raise PathError(f"{flag} {path} is a directory; give a file name")
    check_writable_dir(path.parent, f"{flag} {path}: its folder")
    return path
