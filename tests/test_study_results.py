"""Studies at a fixed step budget (``dcgan bench-quality --steps --seeds``): the summary over
seeds, ``--merge`` of studies trained apart, its refusals, and the studies committed in
docs/results/ with the chart docs/evaluation.md shows."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from dcgan_benchmarks.quality import RUN_KEYS, merge, summarize

from .conftest import ROOT, one_line_error, run_cli

RESULTS = ROOT / "docs" / "results"
STUDIES = sorted(RESULTS.glob("sharper-digits-*.json"))


def a_run(config: str, seed: int, fid: float, score: float, *, steps: int = 100,
          healthy: bool = True) -> dict:
    evals = [{"step": s, "epoch": s / 50, "generator": g, "fid": fid + 10 - s / 10,
              "inception_score": score - 1 + s / 100, "classes_covered": 10,
              "largest_class_fraction": 0.12, "time": s / 10.0}
             for s in (50, steps) for g in ("raw", "ema")]
    return {"config": config, "run": f"{config}-seed{seed}", "seed": seed, "steps": steps,
            "fid": fid, "inception_score": score, "classes_covered": 10,
            "largest_class_fraction": 0.11, "final_n": 10000, "healthy_at_end": healthy,
            "evaluations": evals, "best": {"step": steps, "generator": "ema", "fid": fid}}


def test_the_summary_is_the_median_over_seeds_per_configuration_and_budget():
    runs = [a_run("a", 1, 6.0, 8.5), a_run("a", 2, 5.0, 8.9, healthy=False),
            a_run("a", 3, 9.0, 8.7), a_run("b", 1, 7.0, 8.0),
            a_run("a", 1, 12.0, 8.0, steps=50)]
    by = {(e["config"], e["steps"]): e for e in summarize(runs)}
    assert set(by) == {("a", 100), ("b", 100), ("a", 50)}
    a = by[("a", 100)]
    assert a["seeds"] == [1, 2, 3] and a["healthy_at_end"] == 2 and a["final_n"] == 10000
    assert a["fid"] == {"median": 6.0, "min": 5.0, "max": 9.0}
    assert a["inception_score"] == {"median": 8.7, "min": 8.5, "max": 8.9}
    assert by[("b", 100)]["fid"]["median"] == 7.0


def test_a_run_without_a_final_score_is_not_summarized():
    unscored = dict(a_run("a", 1, 6.0, 8.5), fid=None)
    assert summarize([unscored]) == []


def test_merge_joins_runs_and_refuses_mixed_final_n_or_a_run_twice():
    one = {"final_samples": 10000, "runs": [a_run("a", 1, 6.0, 8.5)]}
    two = {"final_samples": 10000, "runs": [a_run("a", 2, 5.0, 8.9)]}
    header, runs = merge([one, two])
    assert [r["seed"] for r in runs] == [1, 2] and header["final_samples"] == 10000
    from dcgan.errors import ConfigError
    with pytest.raises(ConfigError, match="different N"):
        merge([one, dict(two, final_samples=2000)])
    with pytest.raises(ConfigError, match="in two of the files"):
        merge([one, one])


def write(path: Path, study) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "results.json").write_text(json.dumps(study))
    return path


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", head[16:24])


@pytest.mark.slow
def test_merge_writes_one_study_with_its_summary_and_charts(tmp_path):
    a = write(tmp_path / "s1", {"final_samples": 10000, "runs": [a_run("a", 1, 6.0, 8.5)]})
    b = write(tmp_path / "s2", {"final_samples": 10000,
                                "runs": [a_run("a", 2, 5.0, 8.9), a_run("a", 3, 9.0, 8.7)]})
    out = tmp_path / "merged"
    proc = run_cli(["bench-quality", "--merge", str(a), str(b / "results.json"),
                    "--out", str(out)], timeout=120)
    assert proc.returncode == 0, proc.stderr
    study = json.loads((out / "results.json").read_text())
    assert [r["seed"] for r in study["runs"]] == [1, 2, 3]
    assert study["summary"] == summarize(study["runs"])
    assert study["summary"][0]["fid"]["median"] == 6.0
    assert "a " in proc.stdout and "6.00" in proc.stdout  # the summary table
    assert png_size(out / "quality_vs_steps.png") == (1320, 550)
    assert (out / "quality_vs_time.png").stat().st_size > 10_000


@pytest.mark.slow
@pytest.mark.parametrize("make, expect", [
    (lambda d: d / "nowhere", "no results.json at"),
    (lambda d: write(d / "j", None) and (d / "j" / "results.json").write_text("{trunc") and
     d / "j", "is not JSON"),
    (lambda d: write(d / "l", None) and (d / "l" / "results.json").write_bytes(
        "{\"runs\": \"\xe9\"}".encode("latin-1")) and d / "l", "cannot read"),
    (lambda d: write(d / "e", {"runs": []}), "holds no runs"),
    (lambda d: write(d / "k", {"runs": [{"config": "a"}]}), "a run lacks seed"),
])
def test_merge_refuses_what_is_not_a_study_in_one_line(tmp_path, make, expect):
    proc = run_cli(["bench-quality", "--merge", str(make(tmp_path)),
                    "--out", str(tmp_path / "out")], timeout=120)
    assert proc.returncode == 2
    assert "--merge" in one_line_error(proc) and expect in one_line_error(proc)
    assert not (tmp_path / "out" / "results.json").exists()


@pytest.mark.slow
def test_merge_trains_nothing_so_it_refuses_training_options(tmp_path):
    a = write(tmp_path / "s1", {"final_samples": 10000, "runs": [a_run("a", 1, 6.0, 8.5)]})
    proc = run_cli(["bench-quality", "--merge", str(a), "--steps", "100", "--seeds", "1",
                    "--out", str(tmp_path / "out")], timeout=120)
    assert proc.returncode == 2
    assert "--steps, --seeds cannot go with it" in one_line_error(proc)


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.name)
def test_a_committed_study_holds_every_run_with_its_evaluations(path):
    study = json.loads(path.read_text())
    assert study["final_samples"] == 10000
    assert study["runs"], path
    for r in study["runs"]:
        assert all(k in r for k in RUN_KEYS), sorted(set(RUN_KEYS) - set(r))
        assert r["final_n"] == 10000 and r["steps"] == study["budget_steps"]
        # G and its moving average at every evaluation step.
        steps = {e["step"] for e in r["evaluations"]}
        for step in steps:
            assert {e["generator"] for e in r["evaluations"] if e["step"] == step} == \
                {"raw", "ema"}, (r["run"], step)
        assert max(steps) == r["steps"]
    assert study["summary"] == summarize(study["runs"])
    for entry in study["summary"]:  # every scored run of a configuration is in its summary
        runs = [r for r in study["runs"] if r["config"] == entry["config"]
                and r["steps"] == entry["steps"] and r.get("fid") is not None]
        assert sorted(entry["seeds"]) == sorted(r["seed"] for r in runs), entry["config"]


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.name)
def test_a_committed_study_has_its_chart_in_the_evaluation_page(path):
    chart = path.with_suffix(".png")
    assert png_size(chart) == (1320, 550)
    assert f"results/{chart.name}" in (ROOT / "docs" / "evaluation.md").read_text()
