"""One convention per flag across the subcommands (docs/reference.md): --out is the
directory a command writes or reads as its run, --image the one PNG, --weights the one .pt,
--device defaults to auto, --noise-seed is the sampling noise and --seed only the training
seed, --data-dir works wherever MNIST is read. Old spellings work for one release with a
one-line note on stderr, and stay out of the help."""

from __future__ import annotations

import pytest

from dcgan import layout
from dcgan.cli import build_parser

from .conftest import one_line_error, run_cli


def _help(*command: str) -> str:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        build_parser().parse_args([*command, "--help"])
    return out.getvalue()


@pytest.mark.parametrize("command", [("sample",), ("interpolate",), ("evaluate",),
                                     ("bench",), ("train",), ("classifier", "train")])
def test_same_flag_same_meaning(command):
    text = _help(*command)
    if command[0] in ("sample", "interpolate", "evaluate", "bench"):
        assert "auto (default" in text  # --device
    if command[0] in ("sample", "interpolate", "evaluate"):
        assert "--noise-seed" in text and "--seed" not in text.replace("--noise-seed", "")
    if command[0] in ("sample", "interpolate"):
        assert "--image FILE.png" in text and "--out" not in text
    if command == ("classifier", "train"):
        assert "--weights FILE.pt" in text and "--out" not in text
    assert "--data-dir" in text or command[0] in ("sample", "interpolate")


def test_the_old_alias_is_out_of_the_top_level_help():
    assert "evaluator" not in _help()


def test_old_spellings_work_with_one_note(finished_run, tmp_path):
    gen = finished_run.out / layout.GENERATOR_FINAL
    old = run_cli(["sample", "--generator", str(gen), "--out", str(tmp_path / "a.png"),
                   "--seed", "3", "--n", "4"])
    assert old.returncode == 0, old.stderr
    notes = old.stderr.strip().splitlines()
    assert notes == [
        "note: --out is deprecated and goes in the next release; use --image FILE.png",
        "note: --seed is deprecated and goes in the next release; use --noise-seed N"]
    new = run_cli(["sample", "--generator", str(gen), "--image", str(tmp_path / "b.png"),
                   "--noise-seed", "3", "--n", "4"])
    assert new.returncode == 0 and new.stderr == ""
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    import shutil

    copy = shutil.copytree(finished_run.out, tmp_path / "run")  # analyze writes into a run
    analyzed = run_cli(["analyze", str(copy)])
    assert analyzed.returncode == 0
    assert analyzed.stderr.strip().splitlines() == [
        "note: a positional RUN_DIR is deprecated and goes in the next release; use "
        "--out RUN_DIR"]


def test_a_missing_required_flag_is_one_line(finished_run):
    proc = run_cli(["sample", "--generator", str(finished_run.out / layout.GENERATOR_FINAL)])
    assert proc.returncode == 2 and "--image FILE.png is required" in one_line_error(proc)
    proc = run_cli(["analyze"])
    assert proc.returncode == 2 and "--out RUN_DIR is required" in one_line_error(proc)


@pytest.mark.slow  # trains: outside make test-fast
def test_data_dir_flag_on_training(tmp_path, data_dir):
    from .conftest import TINY, sets

    proc = run_cli(["train", "--out", str(tmp_path / "run"), "--no-progress",
                    *sets({**TINY, "max_steps": 1}), "--data-dir", data_dir])
    assert proc.returncode == 0, proc.stderr
    from dcgan.config import load_config

    assert load_config(tmp_path / "run" / layout.CONFIG_FILE).data_dir == data_dir
