"""Atomic writes give files ordinary permissions (the umask's, or the existing file's), so a
run written by one user (a container's uid 1000 on a shared volume) is readable by others."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from dcgan import layout
from dcgan.io import atomic_open, atomic_write_bytes, atomic_write_text, current_umask

from .conftest import ROOT, sets


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask():
    """Set a umask for one test, restored afterwards."""
    saved = os.umask(0o022)
    os.umask(saved)
    yield os.umask
    os.umask(saved)


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o027, 0o640),
                                                 (0o077, 0o600), (0o002, 0o664)])
def test_new_files_get_the_umask_mode(tmp_path, umask, mask, expected):
    umask(mask)
    assert current_umask() == mask
    path = tmp_path / "sub" / "stats.json"
    atomic_write_text(path, "{}\n")
    assert mode(path) == expected
    assert path.read_text() == "{}\n"


def test_an_existing_file_keeps_its_mode(tmp_path, umask):
    umask(0o022)
    private, shared = tmp_path / "private.bin", tmp_path / "shared.bin"
    atomic_write_bytes(private, b"old")
    private.chmod(0o600)
    atomic_write_bytes(shared, b"old")
    shared.chmod(0o664)
    atomic_write_bytes(private, b"new")
    atomic_write_bytes(shared, b"new")
    assert (mode(private), mode(shared)) == (0o600, 0o664)
    assert private.read_bytes() == shared.read_bytes() == b"new"


def test_still_atomic_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path, umask):
    umask(0o022)
    path = tmp_path / "weights.pth"
    atomic_write_bytes(path, b"complete")
    with pytest.raises(RuntimeError), atomic_open(path) as fh:
        fh.write(b"half")
        raise RuntimeError("killed mid-write")
    assert path.read_bytes() == b"complete"
    assert mode(path) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["weights.pth"]


def test_the_mode_is_set_before_the_rename(tmp_path, umask):
    # A reader that finds the temporary file (or the renamed file) never sees 0600.
    umask(0o022)
    path = tmp_path / "a.txt"
    with atomic_open(path) as fh:
        temps = [p for p in tmp_path.iterdir() if p.name.startswith(".a.txt.")]
        assert len(temps) == 1 and mode(temps[0]) == 0o644
        fh.write(b"x")


@pytest.mark.slow
def test_a_real_runs_files_are_readable_by_other_users(tmp_path, data_dir):
    """A short training run under umask 022: every file 0644, every directory 0755."""
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "dcgan", "train", "--out", str(out), "--no-progress",
         *sets({"train_subset": 128, "batch_size": 32, "device": "cpu", "epochs": 1,
                "log_every": 2, "sample_every": 2, "checkpoint_every": 1, "eval_every": 0,
                "data_dir": data_dir})],
        capture_output=True, text=True, timeout=300, cwd=ROOT, umask=0o022,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = [p for p in out.rglob("*") if p.is_file()]
    dirs = [out, *(p for p in out.rglob("*") if p.is_dir())]
    names = {p.name for p in files}
    for name in (layout.GENERATOR_FINAL, layout.DISCRIMINATOR_FINAL, layout.CONFIG_FILE,
                 layout.FINAL_SAMPLES, layout.ANALYSIS_FILE):
        assert name in names, sorted(names)
    assert any(p.parent.name == "checkpoints" for p in files), sorted(names)
    wrong = {str(p.relative_to(out)): oct(mode(p)) for p in files if mode(p) != 0o644}
    wrong |= {str(p.relative_to(out)) + "/": oct(mode(p)) for p in dirs if mode(p) != 0o755}
    assert not wrong, wrong


def test_first_line_of_an_exception():
    from dcgan.errors import first_line

    assert first_line(ValueError("bad thing\nwith a traceback-ish tail")) == "bad thing"
    assert first_line(ValueError("")) == "ValueError"
    assert first_line(RuntimeError("  \n"), "training failed") == "training failed"
    assert first_line(ValueError("x" * 500), limit=10) == "x" * 10


def test_parquet_is_written_atomically_with_the_umask_mode(tmp_path):
    import os

    import pyarrow as pa
    import pyarrow.parquet as pq

    from dcgan.io import atomic_write_parquet

    path = tmp_path / "t.parquet"
    old = os.umask(0o022)
    try:
        atomic_write_parquet(pa.table({"a": [1, 2]}), path)
    finally:
        os.umask(old)
    assert pq.read_table(path).to_pydict() == {"a": [1, 2]}
    assert path.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]  # no temporary left


def test_a_name_at_the_file_systems_limit_is_written(tmp_path):
    """The temporary name of an atomic write is cut short rather than passing the limit: a
    name the file system takes stays writable, and no temporary file is left."""
    import os

    from dcgan.io import atomic_write_text

    longest = "x" * (os.pathconf(tmp_path, "PC_NAME_MAX") - 4) + ".png"
    atomic_write_text(tmp_path / longest, "done")
    assert [p.name for p in tmp_path.iterdir()] == [longest]
    assert (tmp_path / longest).read_text() == "done"


def test_a_name_past_the_limit_is_refused_before_any_work(tmp_path):
    import os

    from .conftest import one_line_error, run_cli

    too_long = "y" * (os.pathconf(tmp_path, "PC_NAME_MAX") + 1) + ".png"
    proc = run_cli(["sample", "--generator", str(tmp_path / "missing.pth"),
                    "--image", str(tmp_path / too_long)])
    assert proc.returncode == 2
    assert "the file name is" in one_line_error(proc) and "takes at most" in one_line_error(proc)
