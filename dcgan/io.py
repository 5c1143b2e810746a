"""Atomic file writes: a temporary file in the same directory, fsync, then rename.

A reader (or a resumed run) sees either the previous complete file or the new complete file,
never a truncated one, even if the process is killed in the middle of a write.

The file gets the permissions a plain ``open(path, "w")`` would give it: an existing file
keeps its mode, a new one gets 0666 minus the umask (0644 under the usual 022), so a run
written by a container's user on a shared volume is readable by the host's users, other
nodes and dashboards. (``mkstemp`` alone would leave every file 0600.)
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

# mkstemp adds 8 random characters; with the leading dot, the dot before them and ".tmp",
# the temporary name is 14 bytes longer than the file's own.
_TEMP_EXTRA = 14


def _temp_prefix(path: Path) -> str:
    """The temporary file's prefix: ``.NAME.``, with NAME cut short when the whole temporary
    name would pass the file system's limit (a name the file system takes must stay
    writable: the limit applies to the temporary name first)."""
    try:
        limit = os.pathconf(path.parent, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    name = os.fsencode(path.name)
    if len(name) + _TEMP_EXTRA > limit:
        name = name[:max(1, limit - _TEMP_EXTRA)]
    return "." + os.fsdecode(name) + "."


@contextlib.contextmanager
def atomic_open(path: str | Path) -> Iterator[BinaryIO]:
    """Yield a binary file object; on success it replaces ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = _mode_for(path)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            # Before any data: no reader ever sees the file with other permissions.
            os.fchmod(fh.fileno(), mode)
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        # A failed write (disk full, file too large) names no file: name the one we wrote.
        raise OSError(exc.errno, f"cannot write it ({exc.strerror or exc})", str(path)) from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


_umask_lock = threading.Lock()


def current_umask() -> int:
    """The process's umask, read without changing it where Linux allows (/proc); elsewhere
    set and restored (another thread creating a file in that instant would get 022)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _mode_for(path: Path) -> int:
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return 0o666 & ~current_umask()


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not every filesystem allows opening a directory.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str | Path, writer: Callable[[BinaryIO], None]) -> None:
    with atomic_open(path) as fh:
        writer(fh)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, inf) replaced by None, at any depth: JSON
    has no such numbers, and a string in their place is not a number either."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def results_json(value: Any) -> str:
    """A results file's text: indented JSON, one final newline, a non-finite number as null
    (JSON has no NaN or inf: never a non-standard token), any other value JSON cannot hold
    (a Path, say) as its str."""
    return json.dumps(json_safe(value), indent=2, default=str, allow_nan=False) + "\n"


def atomic_write_parquet(table, path: str | Path) -> None:
    """A pyarrow table as a Parquet file, written atomically like every other file."""
    import io

    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf)
    atomic_write_bytes(path, buf.getvalue())
