"""``dcgan bench-quality`` end to end on a tiny budget: every configuration trains for its
wall-clock budget, its best generator is scored again, the table, the JSON and the figure
are written."""

from __future__ import annotations

import json
import os
import signal
import time

import pyarrow.parquet as pq
import pytest

from dcgan import layout
from dcgan_benchmarks.quality import summarize

from .conftest import HANG_GUARD_S, ROOT, background, one_line_error, run_cli

pytestmark = pytest.mark.slow


def test_tiny_bench_quality(tmp_path, data_dir):
    out = tmp_path / "bench"
    tiny = ["--set", "train_subset=256", "--set", "batch_size=32", "--set", "eval_samples=200",
            "--set", "device=cpu", "--set", "sample_every=0", "--set", "log_every=4",
            "--set", "precision=fp32"]
    proc = run_cli(["bench-quality", "--out", str(out), "--budget-minutes", "0.25",
                    "--final-samples", "300", "--data-dir", data_dir, *tiny,
                    "--configs", f"seed={ROOT / 'configs/seed.yaml'}",
                    f"recommended={ROOT / 'configs/recommended.yaml'}"], timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert results["budget_s"] == 15 and results["final_samples"] == 300
    by_name = {r["config"]: r for r in results["runs"]}
    assert set(by_name) == {"seed", "recommended"}
    for name, r in by_name.items():
        assert r["outcome"] == "completed"  # ended by the budget, like a step cap
        assert r["training_s"] >= 15 and r["steps"] >= 8  # the budget, past one epoch
        # Scored at the step the budget ended on, as a run is at its end.
        assert max(e["step"] for e in r["evaluations"]) == r["steps"]
        assert (out / name / layout.GENERATOR_EMA_FINAL).exists()
        assert r["final"]["n"] == 300 and r["final"]["fid"] > 0
        best = r["best"]
        if "rescored" in best:  # its best evaluations, scored again at the final N
            assert best["rescore_samples"] == 300
            assert best["rescored_fid"] == min(c["fid"] for c in best["rescored"])
        else:
            assert best["fid"] == min(e["fid"] for e in r["evaluations"])
        assert {e["generator"] for e in r["evaluations"]} == {"raw", "ema"}
        assert (out / name / layout.BEST_GENERATOR).exists()
        assert f"{name} + EMA" in proc.stdout and f"{name} best, N=300" in proc.stdout
    assert (out / "quality_vs_time.png").stat().st_size > 10_000
    assert (out / "quality_vs_steps.png").stat().st_size > 10_000
    # Each configuration over its seeds (here one run each): its best generator's figures.
    assert results["summary"] == summarize(results["runs"])
    summary = proc.stdout.split("Each configuration over its seeds")[1]
    for name, r in by_name.items():
        assert r["settings"]["seed"] == r["seed"] and r["final_n"] == 300
        row = next(line for line in summary.splitlines() if line.startswith(name + " "))
        assert f"{r['fid']:.2f}" in row and "1/1" in row or "0/1" in row
    # G against its average at every evaluation: one line per configuration and step.
    pairs = proc.stdout.split("G and its moving average at every evaluation")[1]
    pairs = pairs.split("Each configuration over its seeds")[0]
    for name, r in by_name.items():
        steps = sorted({e["step"] for e in r["evaluations"]})
        lines = [line for line in pairs.splitlines() if line.startswith(name + " ")]
        assert [int(line.split()[1]) for line in lines] == steps


def test_bench_quality_refuses_a_missing_config(tmp_path):
    proc = run_cli(["bench-quality", "--out", str(tmp_path / "b"),
                    "--configs", f"x={tmp_path / 'nope.yaml'}"], timeout=60)
    assert proc.returncode == 2
    assert "x: no such file" in one_line_error(proc)


STUDY = ["--steps", "24", "--seeds", "1", "2", "--final-samples", "300",
         "--set", "train_subset=256", "--set", "batch_size=32", "--set", "eval_samples=200",
         "--set", "device=cpu", "--set", "sample_every=0", "--set", "log_every=4",
         "--set", "precision=fp32", "--set", "checkpoint_every_steps=4"]


def test_a_killed_study_skips_its_finished_runs_and_continues_the_stopped_one(tmp_path,
                                                                             data_dir):
    """A study killed with SIGKILL (a stopped machine) in its second run: the first run's
    result is on disk; the same command skips it, continues the second from its latest
    checkpoint (every step in its stats once) and rebuilds results.json from both."""
    from dcgan.checkpoint import list_states

    out = tmp_path / "study"
    args = ["bench-quality", "--out", str(out), "--data-dir", data_dir, *STUDY,
            "--configs", f"seed={ROOT / 'configs/seed.yaml'}"]
    log = tmp_path / "study.log"
    with background(args, log) as proc:
        second = out / "seed-seed2"
        deadline = time.monotonic() + HANG_GUARD_S
        while not (second.is_dir() and list_states(second)):
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    first = json.loads((out / "runs" / "seed-seed1.json").read_text())
    assert first["steps"] == 24 and first["seed"] == 1 and first["final_n"] == 300
    assert not (out / "runs" / "seed-seed2.json").exists()
    stopped_at = int(layout.STATE_RE.match(list_states(second)[0].name).group(1))
    assert 0 < stopped_at < 24

    again = run_cli(args, timeout=600)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "seed-seed1: finished before (24 steps" in again.stdout
    assert "seed-seed2: continuing from its latest checkpoint" in again.stdout
    # Only the second run trained, from where it stopped (a restart would say "starting").
    assert again.stdout.count("Training on cpu") == 1
    assert f"resuming at step {stopped_at}" in again.stdout
    stats = pq.read_table(second / layout.STATS_FILE).to_pydict()
    assert stats["step"] == list(range(24))  # continued, not restarted, nothing twice
    results = json.loads((out / "results.json").read_text())
    assert sorted((r["run"], r["steps"]) for r in results["runs"]) == \
        [("seed-seed1", 24), ("seed-seed2", 24)]
    assert results["runs"][0]["fid"] == first["fid"]  # the finished run was not retrained
    assert [e["config"] for e in results["summary"]] == ["seed"]
    assert "NaN" not in (out / "results.json").read_text()

    # A third time: nothing to train. Another budget in the same folder: refused in a line.
    third = run_cli(args, timeout=600)
    assert third.returncode == 0 and third.stdout.count("finished before") == 2
    other = run_cli([*args[:-2], "--steps", "16", *args[-2:]], timeout=60)
    assert other.returncode == 2
    assert "holds a study with other settings (budget_steps, overrides)" in \
        one_line_error(other)


def test_runs_no_study_started_are_replaced_only_with_overwrite(tmp_path, data_dir):
    """bench-quality follows train's convention: a run in --out that no study here started is
    refused, untouched; --overwrite replaces it (and nothing of the user's)."""
    from .conftest import tiny_train_args

    out = tmp_path / "study"
    assert run_cli(tiny_train_args(out / "mine", data_dir, epochs=1, max_steps=2,
                                   eval_every=0, sample_every=0)).returncode == 0
    (out / "notes.txt").write_text("mine")
    before = sorted(p.name for p in (out / "mine").iterdir())
    args = ["bench-quality", "--out", str(out), "--configs", "mine=configs/seed.yaml",
            "--data-dir", data_dir, *STUDY[:2], "--final-samples", "300",
            *STUDY[7:], "--set", "eval_every=0", "--set", "rescore_top=0"]
    proc = run_cli(args, timeout=600)
    assert proc.returncode == 2
    assert "holds runs that no study here started (mine)" in one_line_error(proc)
    assert sorted(p.name for p in (out / "mine").iterdir()) == before
    proc = run_cli([*args, "--overwrite"], timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "runs" / "mine.json").exists()
