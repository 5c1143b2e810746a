"""``dcgan tune``: the search space, the objective and its guard, and a real Ray Tune search."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from dcgan.checkpoint import load_state
from dcgan.config import TrainConfig
from dcgan.diagnostics import balance_score, window_stats
from dcgan_tune.objective import COLLAPSE_PENALTY, guard, objective, trial_metrics
from dcgan_tune.space import DEFAULT_SPACE, SpaceError, load_space, to_tune, validate_space

from .conftest import one_line_error, run_cli, sets

BASE = TrainConfig()


def columns(n: int = 150) -> dict[str, list]:
    return {"step": list(range(n)), "epoch": [0] * n,
            "d_loss": [0.5 + 0.002 * i for i in range(n)],
            "g_loss": [1.2 - 0.001 * i for i in range(n)],
            "d_real_acc": [0.7] * n, "d_fake_acc": [0.95] * n}


# -- the search space --------------------------------------------------------------------


def test_default_space_is_valid_and_converts():
    space = validate_space(dict(DEFAULT_SPACE), BASE)
    tuned = to_tune(space)
    assert set(tuned) == {"g_lr", "d_lr", "dropout", "label_smoothing", "label_smoothing_mode"}
    assert (tuned["g_lr"].lower, tuned["g_lr"].upper) == (1e-5, 1e-3)
    assert tuned["label_smoothing_mode"].categories == ["two-sided", "one-sided"]


def test_space_file_with_constants_choices_and_yaml_exponents(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("g_lr: {loguniform: [1e-5, 1e-3]}\nbatch_size: {choice: [32, 64]}\n"
                    "precision: bf16\n")
    space = validate_space(load_space(path), BASE)
    assert space["g_lr"] == {"loguniform": [1e-5, 1e-3]}  # "1e-5" is a string to PyYAML
    assert to_tune(space)["precision"] == "bf16"


@pytest.mark.parametrize("space, message", [
    ({}, "empty"),
    ({"g_lr": {"loguniform": [1e-3, 1e-5]}}, "low 0.001 must be below high 1e-05"),
    ({"learning_rate": {"uniform": [0, 1]}}, "'learning_rate' is not a config key"),
    ({"dropout": {"uniform": [0.0, 1.5]}}, "dropout: the value 1.5 breaks the config rule"),
    ({"label_smoothing": {"uniform": [0.1, 0.7]}}, "label_smoothing: the value 0.7"),
    ({"g_lr": {"loguniform": [0, 1e-3]}}, "loguniform needs low > 0"),
    ({"g_lr": {"normal": [0, 1]}}, "give one of loguniform, uniform, randint, choice"),
    ({"data_dir": {"choice": ["a", "b"]}}, "data_dir cannot be searched"),
    ({"precision": "bf16"}, "only constants"),
    ({"batch_size": {"choice": [32, 0]}}, "batch_size: the value 0 breaks the config rule"),
])
def test_invalid_spaces_are_refused(space, message):
    with pytest.raises(SpaceError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate_space(space, BASE)


def test_space_file_must_be_a_mapping(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("[1, 2]\n")
    with pytest.raises(SpaceError, match="must map config keys to distributions"):
        load_space(path)
    with pytest.raises(SpaceError, match="space.yaml: No such file"):
        load_space(tmp_path / "missing" / "space.yaml")


# -- the objective -------------------------------------------------------------------------


def test_reported_balance_is_the_diagnostics_balance_score():
    cols = columns()
    row = trial_metrics(cols, [], "balance")
    assert row["balance_score"] == balance_score(window_stats(cols))
    assert row["objective"] == row["balance_score"]


def test_objectives_and_collapse_penalty():
    evals = [{"step": 150, "fid": 40.0, "inception_score": 7.0, "classes_covered": 10}]
    row = trial_metrics(columns(), evals, "combined")
    assert row["objective"] == pytest.approx(row["balance_score"] + math.log(40.0))
    assert trial_metrics(columns(), evals, "fid")["objective"] == 40.0
    collapsed = [{**evals[0], "classes_covered": 3}]
    row = trial_metrics(columns(), collapsed, "balance")
    assert row["objective"] == pytest.approx(row["balance_score"] + COLLAPSE_PENALTY + 70
                                             + math.log(40.0))
    # Among penalised trials, more digits first, then lower FID.
    nine = trial_metrics(columns(), [{**evals[0], "classes_covered": 9, "fid": 900.0}],
                         "balance")
    eight = trial_metrics(columns(), [{**evals[0], "classes_covered": 8, "fid": 50.0}],
                          "balance")
    better_fid = trial_metrics(columns(), [{**evals[0], "classes_covered": 9, "fid": 300.0}],
                               "balance")
    assert better_fid["objective"] < nine["objective"] < eight["objective"]
    assert objective({"balance_score": math.inf}, "balance") == 1e9  # finite for schedulers


def test_guard_fails_degenerate_and_incomplete_trials():
    ok = {"status": "TERMINATED", "objective": 0.5, "fid": 30.0, "classes_covered": 10,
          "step": 100}
    rows = [ok,
            {**ok, "objective": 0.1, "classes_covered": 6},   # "balanced" but collapsed
            {**ok, "objective": 0.2, "fid": 70.0},            # > 2x the best FID
            {**ok, "objective": 0.05, "step": 25},            # stopped early by ASHA
            {**ok, "status": "ERROR"},
            {**ok, "fid": 55.0}]
    verdicts = guard(rows, budget_steps=100)
    assert verdicts[0] == "" and verdicts[5] == ""
    assert "covers 6/10" in verdicts[1]
    assert "FID 70.0 > 2x the best (30.0)" in verdicts[2]
    assert "stopped early at step 25" in verdicts[3]
    assert "error" in verdicts[4]


# -- the command line ------------------------------------------------------------------------


@pytest.mark.parametrize("changes, message", [
    ({"trials": 0}, "--trials: must be >= 1"),
    ({"budget_steps": 0}, "--budget-steps: must be >= 1"),
    ({"min_classes": 11}, "--min-classes: must be in 1-10"),
    ({"max_concurrent": 0}, "--max-concurrent: must be >= 1"),
    ({"scheduler": "pbt", "workers_per_trial": 2}, "pbt restores trials"),
    ({"overrides": ("dropout=2",)}, "config: dropout: must be in [0, 1)"),
    ({"overrides": ("batch_size=63",), "workers_per_trial": 2}, "does not divide evenly"),
    ({"resume": True}, "nothing to resume"),
])
def test_bad_options_are_refused_before_ray_starts(tmp_path, data_dir, changes, message):
    from dcgan.errors import DCGANError
    from dcgan_tune.search import SearchOptions, check_options

    opts = SearchOptions(out=tmp_path / "search", overrides=(f"data_dir={data_dir}",))
    for key, value in changes.items():
        if key == "overrides":
            value = opts.overrides + value
        setattr(opts, key, value)
    with pytest.raises(DCGANError, match=re.escape(message)):
        check_options(opts)


@pytest.mark.parametrize("args, text, message", [
    (["--trials", "0"], None, "--trials: must be >= 1"),
    ([], "", "is empty"),
    ([], "g_lr: {loguniform: [1e-3, 1e-5]}\n", "low 0.001 must be below high 1e-05"),
    ([], "lr: {uniform: [0, 1]}\n", "'lr' is not a config key"),
    ([], "dropout: {uniform: [0.0, 1.2]}\n", "dropout: the value 1.2 breaks the config rule"),
])
def test_cli_refuses_bad_input_in_one_line(tmp_path, data_dir, args, text, message):
    out = tmp_path / "search"
    if text is not None:
        (tmp_path / "space.yaml").write_text(text)
        args = [*args, "--space", str(tmp_path / "space.yaml")]
    proc = run_cli(["tune", "--out", str(out), *args, *sets({"data_dir": data_dir})],
                   timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert message in one_line_error(proc)
    assert not (out / "ray").exists()


# A tiny budget: 4 trials x 120 steps of batch 16 take about 80 s here (2 CPU cores).
SEARCH = {"train_subset": 2048, "batch_size": 16, "device": "cpu", "precision": "bf16",
          "eval_samples": 300, "log_every": 10}
# Learning rates and regularisation that learn quickly: the seed's need ~1000 steps before
# the generator draws digits, more than a test can afford on 2 CPU cores.
FAST_SPACE = ("g_lr: {loguniform: [1.0e-3, 3.0e-3]}\nd_lr: {loguniform: [3.0e-4, 8.0e-4]}\n"
              "dropout: {uniform: [0.0, 0.1]}\nlabel_smoothing: {uniform: [0.0, 0.1]}\n")


@pytest.fixture(scope="module")
def search(tmp_path_factory, data_dir):
    """4 trials with a small budget on this machine's CPUs, through the CLI."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    root = tmp_path_factory.mktemp("tune")
    out = root / "search"
    (root / "space.yaml").write_text(FAST_SPACE)
    start = time.monotonic()
    try:
        # 120 steps draw blurry strokes the classifier reads as about 8 of the digits: the
        # guard asks for 6 here (10 by default). The sampled hyperparameters are seeded.
        proc = run_cli(["tune", "--out", str(out), "--trials", "4", "--max-concurrent", "2",
                        "--budget-steps", "120", "--space", str(root / "space.yaml"),
                        "--min-classes", "6", *sets({**SEARCH, "data_dir": data_dir})],
                       timeout=400)
    finally:
        subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "stop", "--force"],
                       capture_output=True, timeout=60, env=env)
    seconds = time.monotonic() - start
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return out, proc, seconds


@pytest.mark.slow
def test_search_end_to_end(search, tmp_path, data_dir):
    out, proc, seconds = search
    assert seconds < 180, f"4 trials took {seconds:.0f}s"
    table = pq.read_table(out / "trials.parquet").to_pylist()
    assert len(table) == 4
    assert (out / "trials.csv").read_text().count("\n") == 5
    for row in table:
        for key in ("g_lr", "d_lr", "dropout", "label_smoothing", "balance_score", "verdict"):
            assert key in row
    assert "Trials (4, objective: balance; best first)" in proc.stdout
    summary = json.loads((out / "search.json").read_text())
    best = table[0]
    assert best["verdict"] == "ok" and best["trial_id"] == summary["best_trial"]
    assert (out / "best_generator.pth").exists()
    # The best config trains with `dcgan train --config`.
    run = tmp_path / "from-best"
    train = run_cli(["train", "--out", str(run), "--config", str(out / "best_config.yaml"),
                     "--no-progress", *sets({"max_steps": 4, "train_subset": 256,
                                             "eval_every": 0, "data_dir": data_dir})])
    assert train.returncode == 0, train.stderr
    assert f"g_lr: {best['g_lr']}" in (run / "config.yaml").read_text()
    sample = run_cli(["sample", "--generator", str(out / "best_generator.pth"),
                      "--out", str(tmp_path / "best.png")])
    assert sample.returncode == 0, sample.stderr


@pytest.mark.slow
def test_reported_objective_equals_diagnostics_on_the_trial_stats(search):
    """The best trial's last checkpoint holds the stats its last report was computed from."""
    out, _, _ = search
    summary = json.loads((out / "search.json").read_text())
    state = load_state(Path(summary["best_checkpoint"]) / "state.pt")
    cols = {k: v.tolist() for k, v in state["stats"].items() if k != "evals"}
    assert summary["balance_score"] == balance_score(window_stats(cols))
    assert summary["objective"] == summary["balance_score"]


@pytest.mark.slow
def test_existing_search_is_not_overwritten(search, data_dir):
    out, _, _ = search
    before = (out / "trials.csv").read_text()
    proc = run_cli(["tune", "--out", str(out), *sets({"data_dir": data_dir})], timeout=60)
    assert proc.returncode == 2
    assert "already holds a search; pass --resume" in one_line_error(proc)
    assert (out / "trials.csv").read_text() == before


def test_restored_trial_keeps_its_own_mutated_hyperparameters(data_dir):
    """PBT: a trial restores another trial's state but trains with its own (mutated)
    learning rates, dropout and label smoothing."""
    import torch

    from dcgan.data import load_mnist, to_model_range
    from dcgan.trainer import Trainer
    from dcgan_tune.trial import trial_config

    images, _ = load_mnist(data_dir, subset=64)
    base = {**TrainConfig(data_dir=data_dir, device="cpu", batch_size=32,
                          train_subset=64).to_dict()}
    donor = Trainer(trial_config(base, {"g_lr": 1e-4, "dropout": 0.1}, 2),
                    to_model_range(images), torch.device("cpu"))
    state = donor.state_dict()
    clone_cfg = trial_config(base, {"g_lr": 7e-4, "dropout": 0.4, "label_smoothing": 0.2}, 2)
    clone = Trainer(clone_cfg, to_model_range(images), torch.device("cpu"))
    clone.load_state_dict(state, source="donor")
    assert clone.opt_g.param_groups[0]["lr"] == 7e-4
    assert clone.parts.label_smoothing == 0.2
    drops = [m.p for m in clone.discriminator.modules() if isinstance(m, torch.nn.Dropout2d)]
    assert drops and all(p == 0.4 for p in drops)
    weights = zip(clone.generator.state_dict().values(), donor.generator.state_dict().values(),
                  strict=True)
    assert all(torch.equal(a, b) for a, b in weights)


@pytest.mark.slow
def test_trial_with_two_workers_reports_metrics_by_trial_and_rank(tmp_path, data_dir):
    """--workers-per-trial 2: a TorchTrainer per trial (Train-in-Tune), every rank's series
    at the search's one metrics endpoint, labelled by trial."""
    from .test_monitoring import background, free_port, watch_ranks

    port = free_port()
    out = tmp_path / "search"
    args = ["tune", "--out", str(out), "--trials", "1", "--workers-per-trial", "2",
            "--scheduler", "fifo", "--budget-steps", "40", "--min-classes", "1",
            "--metrics-port", str(port),
            *sets({"train_subset": 640, "batch_size": 32, "device": "cpu", "eval_samples": 200,
                   "log_every": 4, "data_dir": data_dir})]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    try:
        with background(args, tmp_path / "tune.log") as proc:
            seen = watch_ranks(proc, port, timeout=200, stop_at=2)
            log = (tmp_path / "tune.log").read_text()
            assert set(seen) == {"0", "1"}, log[-3000:]
            assert all(s["mode"] == "tune" and s["run"] == "search" and s["trial"]
                       for s in seen.values()), seen
            assert proc.wait(timeout=200) == 0, log[-3000:]
    finally:
        subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "stop", "--force"],
                       capture_output=True, timeout=60, env=env)
    table = pq.read_table(out / "trials.parquet").to_pylist()
    assert len(table) == 1 and table[0]["step"] == 40 and table[0]["trial_id"] == seen["0"]["trial"]
    assert (out / "best_generator.pth").exists()  # from the Ray Train checkpoint
