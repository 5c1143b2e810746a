"""``dcgan bench-quality`` end to end on a tiny budget: every configuration trains for its
wall-clock budget, its best generator is scored again, the table, the JSON and the figure
are written."""

from __future__ import annotations

import json

import pytest

from dcgan import layout

from .conftest import ROOT, one_line_error, run_cli

pytestmark = pytest.mark.slow


def test_tiny_bench_quality(tmp_path, data_dir):
    out = tmp_path / "bench"
    tiny = ["--set", "train_subset=256", "--set", "batch_size=32", "--set", "eval_samples=200",
            "--set", "device=cpu", "--set", "sample_every=0", "--set", "log_every=4",
            "--set", "precision=fp32"]
    proc = run_cli(["bench-quality", "--out", str(out), "--budget-minutes", "0.5",
                    "--final-samples", "300", "--data-dir", data_dir, *tiny,
                    "--configs", f"seed={ROOT / 'configs/seed.yaml'}",
                    f"recommended={ROOT / 'configs/recommended.yaml'}"], timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert results["budget_s"] == 30 and results["final_samples"] == 300
    by_name = {r["config"]: r for r in results["results"]}
    assert set(by_name) == {"seed", "recommended"}
    for name, r in by_name.items():
        assert r["outcome"] == "completed"  # ended by the budget, like a step cap
        assert r["training_s"] >= 30 and r["steps"] >= 8  # the budget, past one epoch
        # Scored at the step the budget ended on, as a run is at its end.
        assert max(e["step"] for e in r["evaluations"]) == r["steps"]
        assert (out / name / layout.GENERATOR_EMA_FINAL).exists()
        assert r["final"]["n"] == 300 and r["final"]["fid"] > 0
        assert r["best"]["fid"] == min(e["fid"] for e in r["evaluations"])
        assert {e["generator"] for e in r["evaluations"]} == {"raw", "ema"}
        assert (out / name / layout.BEST_GENERATOR).exists()
        assert f"{name} + EMA" in proc.stdout and f"{name} best, N=300" in proc.stdout
    assert (out / "quality_vs_time.png").stat().st_size > 10_000
    # G against its average at every evaluation: one line per configuration and step.
    pairs = proc.stdout.split("G and its moving average at every evaluation")[1]
    for name, r in by_name.items():
        steps = sorted({e["step"] for e in r["evaluations"]})
        lines = [line for line in pairs.splitlines() if line.startswith(name + " ")]
        assert [int(line.split()[1]) for line in lines] == steps


def test_bench_quality_refuses_a_missing_config(tmp_path):
    proc = run_cli(["bench-quality", "--out", str(tmp_path / "b"),
                    "--configs", f"x={tmp_path / 'nope.yaml'}"], timeout=60)
    assert proc.returncode == 2
    assert "x: no such file" in one_line_error(proc)
