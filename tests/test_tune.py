"""``dcgan tune``: the search space, the objective and its guard, and a real Ray Tune search."""

from __future__ import annotations

import contextlib
import json
import math
import re
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest

from dcgan import layout
from dcgan.checkpoint import load_state
from dcgan.config import TrainConfig, load_config
from dcgan.diagnostics import balance_score, window_stats
from dcgan_tune.objective import COLLAPSE_PENALTY, guard, objective, trial_metrics
from dcgan_tune.space import DEFAULT_SPACE, SpaceError, load_space, to_tune, validate_space
from dcgan_tune.trial import trial_config

from .conftest import (
    HANG_GUARD_S,
    background,
    finish,
    free_port,
    one_line_error,
    run_before_ray,
    run_cli,
    sets,
    wait_for_text,
)

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
    ({"resume": True, "overwrite": True}, "--resume and --overwrite contradict each other"),
])
def test_bad_options_are_refused_before_ray_starts(tmp_path, data_dir, changes, message):
    from dcgan.errors import DCGANError
    from dcgan_tune.options import SearchOptions
    from dcgan_tune.search import open_search

    opts = SearchOptions(out=tmp_path / "search", overrides=(f"data_dir={data_dir}",))
    for key, value in changes.items():
        if key == "overrides":
            value = opts.overrides + value
        setattr(opts, key, value)
    with pytest.raises(DCGANError, match=re.escape(message)), open_search(opts):
        pass
    assert not (tmp_path / "search").exists()  # refused before anything was written


@pytest.mark.parametrize("args, text, message", [
    (["--trials", "0"], None, "--trials: must be >= 1"),
    ([], "", "is empty"),
    ([], "g_lr: {loguniform: [1e-3, 1e-5]}\n", "low 0.001 must be below high 1e-05"),
    ([], "lr: {uniform: [0, 1]}\n", "'lr' is not a config key"),
    ([], "dropout: {uniform: [0.0, 1.2]}\n", "dropout: the value 1.2 breaks the config rule"),
])
def test_cli_refuses_bad_input_in_one_line(tmp_path, data_dir, args, text, message):
    """Refused before Ray is imported (an address where nothing listens: were a check
    broken, the command would fail there, still without starting Ray)."""
    out = tmp_path / "search"
    if text is not None:
        (tmp_path / "space.yaml").write_text(text)
        args = [*args, "--space", str(tmp_path / "space.yaml")]
    proc = run_before_ray(["tune", "--out", str(out), *args, "--address",
                           f"127.0.0.1:{free_port()}", *sets({"data_dir": data_dir})],
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert message in one_line_error(proc)
    assert not (out / "ray").exists()


# A tiny budget: 4 trials of at most 120 steps of batch 16.
SEARCH = {"train_subset": 2048, "batch_size": 16, "device": "cpu", "precision": "bf16",
          "eval_samples": 300, "rescore_samples": 300, "log_every": 10, "seed": 1}
# Learning rates and regularisation that learn quickly (the seed's need ~1000 steps before
# the generator draws digits, more than a test can afford on 2 CPU cores), and one g_lr at
# which the generator learns nothing: ASHA must stop such a trial at its first rung whatever
# the other trials' exact numbers. With seed 1 the seeded sampler draws g_lr 2e-3, 2e-3,
# 1e-8, 2e-3 for trials 0-3, so the third trial meets a rung that two good ones reached first.
G_LR_GOOD, G_LR_FROZEN = 2.0e-3, 1.0e-8
FAST_SPACE = ("g_lr: {choice: [2.0e-3, 1.0e-8]}\n"
              "d_lr: {loguniform: [3.0e-4, 8.0e-4]}\n"
              "dropout: {uniform: [0.0, 0.1]}\nlabel_smoothing: {uniform: [0.0, 0.1]}\n")
PARAMS = ("g_lr", "d_lr", "dropout", "label_smoothing")


def tune_args(out: Path, space: Path, address: str, *extra: str, **overrides) -> list[str]:
    return ["tune", "--out", str(out), "--space", str(space), "--address", address, *extra,
            *sets({**SEARCH, **overrides})]


@pytest.fixture(scope="module")
def space_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("space") / "space.yaml"
    path.write_text(FAST_SPACE)
    return path


@pytest.fixture(scope="module")
def search(tmp_path_factory, data_dir, ray_head, space_file):
    """4 trials with a small budget, ASHA, one at a time, through the CLI on the suite's Ray
    head, with its metrics endpoint watched by a real Prometheus (where installed)."""
    from .test_monitoring import dashboard_queries, have, prom_api, prometheus_server

    root = tmp_path_factory.mktemp("tune")
    out, log, port = root / "search", root / "search.log", free_port()
    # 120 steps draw blurry strokes the classifier reads as about 8 of the digits: the guard
    # asks for 4 here (10 by default), so that no learning trial is penalised at ASHA's first
    # rung (30 steps). The objective is `combined` (balance + ln FID): on balance alone a
    # generator that learns nothing looks as balanced as one that learns, early on; its FID
    # (about 2x a learner's at 30 steps) sets it apart. One trial at a time makes the order
    # in which ASHA sees reports (and so its decisions) fixed; concurrent trials race.
    args = tune_args(out, space_file, ray_head.address, "--trials", "4", "--max-concurrent",
                     "1", "--budget-steps", "120", "--min-classes", "4", "--metric",
                     "combined", "--metrics-port", str(port), data_dir=data_dir)
    prometheus = have("prometheus")
    queries = dashboard_queries("search")
    answered: dict[str, list] = {}
    with (prometheus_server(root, [f"127.0.0.1:{port}"]) if prometheus
          else contextlib.nullcontext()) as prom, \
            background(args, log, env=ray_head.env) as proc:
        while proc.poll() is None:  # the search is bounded by its trials' budgets
            time.sleep(1)
            for query in [q for q in queries if q not in answered] if prom else []:
                result = prom_api(prom, "/api/v1/query", query=query)["result"]
                if result:
                    answered[query] = result
        code, text = finish(proc, log)
    assert code == 0, text[-4000:]
    return SimpleNamespace(out=out, log=text, answered=answered, queries=queries,
                           prometheus=prometheus)


@pytest.mark.slow
def test_search_end_to_end(search, tmp_path, data_dir):
    out = search.out
    table = pq.read_table(out / "trials.parquet").to_pylist()
    assert len(table) == 4
    assert (out / "trials.csv").read_text().count("\n") == 5
    for row in table:
        for key in (*PARAMS, "balance_score", "verdict"):
            assert key in row
    assert "Trials (4, objective: combined; best first)" in search.log
    summary = json.loads((out / "search.json").read_text())
    best = table[0]
    assert best["verdict"] == "ok" and best["trial_id"] == summary["best_trial"]
    assert best["step"] == 120 and best["classes_covered"] >= 4
    assert (out / "best_generator.pth").exists()
    # The best config trains with `dcgan train --config`.
    run = tmp_path / "from-best"
    train = run_cli(["train", "--out", str(run), "--config", str(out / "best_config.yaml"),
                     "--no-progress", *sets({"max_steps": 4, "train_subset": 256,
                                             "eval_every": 0, "data_dir": data_dir})])
    assert train.returncode == 0, train.stderr
    assert f"g_lr: {best['g_lr']}" in (run / layout.CONFIG_FILE).read_text()
    # The best generator is the best trial's best evaluated one (the FID it reported, G or
    # its average, kept in its last checkpoint), sample for sample.
    raw = tmp_path / "best.npy"
    proc = run_cli(["sample", "--generator", str(out / "best_generator.pth"),
                    "--image", str(tmp_path / "best.png"), "--n", "8", "--save-tensor", str(raw)])
    assert proc.returncode == 0, proc.stderr
    from dcgan.checkpoint import load_state, save_torch
    from dcgan.generation import load_generator, sample
    from dcgan.selection import best_weights

    state = load_state(Path(summary["best_checkpoint"]) / layout.RAY_STATE_FILE)
    assert summary["fid"] == pytest.approx(min(r["fid"] for r in state["stats"]["evals"]))
    save_torch(best_weights(state), tmp_path / "kept.pth")
    assert np.array_equal(np.load(raw), sample(load_generator(tmp_path / "kept.pth"), 8, 0).numpy())


@pytest.mark.slow
def test_asha_stops_poor_trials_early(search):
    """ASHA (the default scheduler) stops a trial whose generator learns nothing at the first
    rung it reaches after better trials did, and the guard fails it: early training must not
    win. (Trials run one at a time, so the order in which ASHA sees reports is fixed.)"""
    table = sorted(pq.read_table(search.out / "trials.parquet").to_pylist(),
                   key=lambda r: r["trial_id"])
    assert [r["g_lr"] for r in table] == [G_LR_GOOD, G_LR_GOOD, G_LR_FROZEN, G_LR_GOOD]
    frozen = table[2]
    assert frozen["step"] == 30, table  # ASHA's first rung: the first of 4 reports
    assert frozen["verdict"] == "stopped early at step 30", frozen
    stopped = [r for r in table if r["step"] < 120]
    for row in stopped:
        assert row["step"] in (30, 60), row  # ASHA's rungs: the 1st and 2nd of 4 reports
        assert row["verdict"] == f"stopped early at step {row['step']}", row


@pytest.mark.slow
@pytest.mark.prometheus
def test_dashboard_queries_in_tune_mode(search):
    """Every dashboard query returns data from a real Prometheus scraping a search's one
    endpoint, labelled by trial."""
    if not search.prometheus:
        pytest.skip("prometheus is not installed (make prometheus)")
    missing = [q for q in search.queries if q not in search.answered]
    assert not missing, f"no data for: {missing}"
    table = pq.read_table(search.out / "trials.parquet").to_pylist()
    trials = {r["trial_id"] for r in table}
    seen = {r["metric"].get("trial") for rs in search.answered.values() for r in rs}
    assert seen & trials, (seen, trials)
    for query, rows in search.answered.items():
        for row in rows:
            labels = row["metric"]
            if "mode" in labels:
                assert labels["mode"] == "tune", (query, labels)
            if "trial" in labels:
                assert labels["trial"] in trials, (query, labels)


@pytest.mark.slow
def test_reported_objective_equals_diagnostics_on_the_trial_stats(search):
    """The best trial's last checkpoint holds the stats its last report was computed from."""
    summary = json.loads((search.out / "search.json").read_text())
    state = load_state(Path(summary["best_checkpoint"]) / layout.RAY_STATE_FILE)
    cols = {k: v.tolist() for k, v in state["stats"].items() if k != "evals"}
    assert summary["balance_score"] == balance_score(window_stats(cols))
    # `combined`: balance + ln FID of the trial's reported (best) evaluation.
    assert summary["objective"] == pytest.approx(summary["balance_score"]
                                                 + math.log(summary["fid"]))


@pytest.mark.slow
def test_existing_search_is_not_overwritten(search, data_dir, ray_head):
    out = search.out
    before = (out / "trials.csv").read_text()
    proc = run_before_ray(["tune", "--out", str(out), "--address", ray_head.address,
                           *sets({"data_dir": data_dir})], env=ray_head.env, timeout=120)
    assert proc.returncode == 2
    assert "already holds a search; pass --resume to continue it or --overwrite to replace " \
           "it" in one_line_error(proc)
    assert (out / "trials.csv").read_text() == before
    # --overwrite with an input that fails its checks (a bad key) removes nothing.
    proc = run_before_ray(["tune", "--out", str(out), "--address", ray_head.address,
                           "--overwrite", *sets({"data_dir": data_dir, "dropout": 2})],
                          env=ray_head.env, timeout=120)
    assert proc.returncode == 2 and "dropout" in one_line_error(proc)
    assert (out / "trials.csv").read_text() == before


def test_overwrite_removes_the_search_and_nothing_else(tmp_path, data_dir):
    from dcgan import layout
    from dcgan_tune.options import SearchOptions
    from dcgan_tune.search import open_search

    out = tmp_path / "search"
    (out / layout.RAY_STORAGE_DIR / "dcgan-search").mkdir(parents=True)
    for name in layout.SEARCH_ENTRIES[:-1]:
        (out / name).write_text("old")
    (out / "notes.txt").write_text("mine")
    opts = SearchOptions(out=out, overwrite=True, overrides=(f"data_dir={data_dir}",))
    with open_search(opts):  # held (its lock file), as the search finds it
        assert sorted(p.name for p in out.iterdir()) == sorted(["notes.txt", layout.LOCK_FILE])


def last_error(proc_output: str) -> str:
    """The one ``error:`` line a failed tune printed (Ray's own log lines share stderr), and
    no traceback."""
    assert "Traceback" not in proc_output, proc_output[-3000:]
    errors = [line for line in proc_output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc_output[-3000:]
    return errors[0]


@pytest.mark.slow
def test_interrupted_search_resumes(search, tmp_path, data_dir, ray_head, space_file):
    """SIGTERM inside the trial (what a process manager sends; it stops the search as
    Ctrl-C does, through Tune's graceful stop), then ``dcgan tune --out DIR --resume``.

    The interrupted command writes the table and, with no trial at its full budget, says in
    one line that no trial passed the quality guard and exits 1. The resumed search continues
    the trial from its last checkpoint (its reports are not repeated) to its full budget.
    And the same space and seed sampled the same hyperparameters as the main search's first
    trial (the sampler is seeded from the config's seed; budget and scheduler do not enter)."""
    out, log = tmp_path / "search", tmp_path / "search.log"
    args = tune_args(out, space_file, ray_head.address, "--trials", "1", "--scheduler", "fifo",
                     "--budget-steps", "20", "--min-classes", "1", data_dir=data_dir,
                     eval_samples=200)
    with background(args, log, env=ray_head.env) as proc:
        # Two reports (each with a checkpoint) of four: inside the trial. A checkpoint on
        # disk is not yet one the driver recorded: wait for the driver's word.
        wait_for_text(log, "resume point at step 10", proc)
        proc.send_signal(signal.SIGTERM)
        code, text = finish(proc, log)
    assert code == 1, text[-3000:]
    # Without its handler, Ray's would exit in the middle of a step.
    assert "SIGTERM received: stopping the search as Ctrl-C does" in text
    assert "Traceback" not in text, text[-3000:]
    error = last_error(text)
    assert error.startswith("error: no trial passed the quality guard") and "--resume" in error
    (row,) = pq.read_table(out / "trials.parquet").to_pylist()
    assert 0 < row["step"] < 20 and row["verdict"] == f"stopped early at step {row['step']}"
    assert not (out / "best_config.yaml").exists()

    proc = run_cli(["tune", "--out", str(out), "--resume", "--address", ray_head.address],
                   env=ray_head.env, timeout=HANG_GUARD_S)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "Resuming the search" in proc.stdout
    (row,) = pq.read_table(out / "trials.parquet").to_pylist()
    assert row["step"] == 20 and row["status"] == "TERMINATED" and row["verdict"] == "ok"
    (results,) = (out / "ray" / "search").glob("*/result.json")
    steps = [json.loads(line)["step"] for line in results.read_text().splitlines()]
    assert steps == [5, 10, 15, 20], steps  # a restart from scratch would repeat 5, 10

    first = min(pq.read_table(search.out / "trials.parquet").to_pylist(),
                key=lambda r: r["trial_id"])
    assert [row[k] for k in PARAMS] == [first[k] for k in PARAMS]


@pytest.mark.slow  # trains: outside make test-fast
def test_restored_trial_trains_with_its_own_mutated_hyperparameters(data_dir, tmp_path):
    """PBT: an exploiting trial restores the donor's trained state through the run assembly
    (as tune/trial.py does) into a Trainer built from its own mutated config. The state
    comes back (weights, optimizer moments, step, stats), and the next step trains with the
    trial's own learning rates, dropout and label smoothing: it equals a step of a Trainer of
    that config given the donor's state by hand."""
    import torch

    from dcgan.assembly import assemble
    from dcgan.checkpoint import LocalStore
    from dcgan.step import gan_step
    from dcgan.trainer import Trainer
    from dcgan_tune.trial import TrialReport, trial_config

    cpu = torch.device("cpu")
    base = TrainConfig(data_dir=data_dir, device="cpu", batch_size=32, train_subset=128,
                       eval_samples=200, max_steps=8).to_dict()
    report = TrialReport("balance", 1)
    donor_cfg = trial_config(base, {"g_lr": 1e-4, "d_lr": 1e-4, "dropout": 0.1,
                                    "label_smoothing": 0.05}, 4)
    donor = assemble(donor_cfg.replace(max_steps=4), cpu, LocalStore(tmp_path / "donor"),
                     quality_every_steps=4, report=report)
    donor.fit()
    # The donor's report at step 4 saved its full state; PBT hands that file over.
    (donor_file,) = (tmp_path / "donor").rglob("state_step_00000004.pt")
    state = load_state(donor_file)
    mutated = {"g_lr": 7e-4, "d_lr": 3e-4, "dropout": 0.4, "label_smoothing": 0.2}
    clone_cfg = trial_config(base, mutated, 4)
    clone = assemble(clone_cfg, cpu, LocalStore(tmp_path / "clone"), quality_every_steps=4,
                     report=report, restore=("donor checkpoint", load_state(donor_file)))

    # The donor's trained state came back (it differs from the seeded initial weights).
    fresh = Trainer(clone_cfg, donor.sampler.images, cpu)
    for name in ("generator", "discriminator"):
        got, want = getattr(clone, name).state_dict(), state[name]
        assert all(torch.equal(got[k], want[k]) for k in want), name
        init = getattr(fresh, name).state_dict()
        assert not all(torch.equal(init[k], want[k]) for k in want), name
    moments = [s["exp_avg"] for s in clone.opt_d.state_dict()["state"].values()]
    assert moments and all(torch.equal(a, s["exp_avg"]) for a, s in
                           zip(moments, state["opt_d"]["state"].values(), strict=True))
    assert clone.step == 4 and clone.stats.columns["step"] == list(range(4))
    # ... with the trial's own hyperparameters, not the donor's.
    assert [g["lr"] for g in clone.opt_g.param_groups] == [7e-4]
    assert [g["lr"] for g in clone.opt_d.param_groups] == [3e-4]
    assert clone.parts.label_smoothing == 0.2
    drops = [m.p for m in clone.discriminator.modules() if isinstance(m, torch.nn.Dropout2d)]
    assert drops and all(p == 0.4 for p in drops)

    # The next step equals a step of the mutated config given the donor's state by hand.
    ref = Trainer(clone_cfg, donor.sampler.images, cpu)
    for name in ("generator", "discriminator"):
        getattr(ref, name).load_state_dict(state[name])
    for opt, key, lr in ((ref.opt_g, "opt_g", 7e-4), (ref.opt_d, "opt_d", 3e-4)):
        opt.load_state_dict(state[key])
        for group in opt.param_groups:
            group["lr"] = lr
    real = next(clone.sampler.epoch(0))
    z = torch.randn(32, clone_cfg.latent_dim, generator=torch.Generator().manual_seed(1))
    values = []
    for trainer in (clone, ref):
        torch.manual_seed(7)  # the same dropout masks
        values.append(gan_step(trainer.parts, real, z))
    assert torch.equal(values[0], values[1])
    for name in ("generator", "discriminator"):
        a, b = getattr(clone, name).state_dict(), getattr(ref, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name

    # What the trial saves next (and PBT may clone again) carries its own config.
    clone.fit()
    (saved,) = (tmp_path / "clone").rglob("state_step_00000008.pt")
    kept = load_state(saved)
    assert {k: kept["config"][k] for k in mutated} == mutated
    assert kept["opt_g"]["param_groups"][0]["lr"] == 7e-4


@pytest.mark.slow
def test_trial_with_two_workers_reports_metrics_by_trial_and_rank(tmp_path, data_dir, ray_head):
    """--workers-per-trial 2: a TorchTrainer per trial (Train-in-Tune), every rank's series
    at the search's one metrics endpoint, labelled by trial."""
    from .test_monitoring import watch_ranks

    port = free_port()
    out, log = tmp_path / "search", tmp_path / "tune.log"
    args = ["tune", "--out", str(out), "--trials", "1", "--workers-per-trial", "2",
            "--scheduler", "fifo", "--budget-steps", "20", "--min-classes", "1",
            "--metrics-port", str(port), "--address", ray_head.address,
            *sets({"train_subset": 640, "batch_size": 32, "device": "cpu", "eval_samples": 200,
                   "log_every": 4, "data_dir": data_dir})]
    with background(args, log, env=ray_head.env) as proc:
        seen = watch_ranks(proc, port, timeout=HANG_GUARD_S, stop_at=2)
        assert set(seen) == {"0", "1"}, log.read_text()[-3000:]
        assert all(s["mode"] == "tune" and s["run"] == "search" and s["trial"]
                   for s in seen.values()), seen
        code, text = finish(proc, log)
    assert code == 0, text[-3000:]
    table = pq.read_table(out / "trials.parquet").to_pylist()
    assert len(table) == 1 and table[0]["step"] == 20 and table[0]["trial_id"] == seen["0"]["trial"]
    assert (out / "best_generator.pth").exists()  # from the Ray Train checkpoint


@pytest.mark.slow
def test_search_over_the_loss(tmp_path, data_dir, ray_head):
    """``loss`` in the search space (here a constant that switches the base's bce to
    wgan-gp, so the draw is known): each trial trains with WGAN-GP from its own defaults
    (critic steps, Adam betas) under the sampled values, is judged by that loss's profile,
    and the table says which loss each trial used."""
    space = tmp_path / "space.yaml"
    space.write_text("loss: wgan-gp\ng_lr: {loguniform: [5.0e-4, 1.0e-3]}\nd_lr: 5.0e-4\n")
    out = tmp_path / "search"
    proc = run_cli(["tune", "--out", str(out), "--space", str(space), "--trials", "2",
                    "--max-concurrent", "1", "--scheduler", "fifo", "--budget-steps", "20",
                    "--min-classes", "1", "--metric", "fid", "--address", ray_head.address,
                    *sets({**SEARCH, "data_dir": data_dir, "eval_samples": 200})],
                   env=ray_head.env, timeout=HANG_GUARD_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = pq.read_table(out / layout.TRIALS_TABLE).to_pylist()
    assert [r["loss"] for r in table] == ["wgan-gp", "wgan-gp"]
    assert all(r["step"] == 20 and math.isfinite(r["balance_score"]) for r in table), table
    best = load_config(out / layout.BEST_CONFIG)
    assert (best.loss, best.critic_steps, best.beta1, best.beta2) == ("wgan-gp", 5, 0.0, 0.9)
    base = {**TrainConfig().to_dict(), **SEARCH, "data_dir": data_dir}
    wgan = trial_config(base, {"loss": "wgan-gp", "g_lr": 1e-3}, 5)
    assert (wgan.critic_steps, wgan.beta1, wgan.beta2, wgan.g_lr) == (5, 0.0, 0.9, 1e-3)


def test_pbt_cannot_vary_a_key_a_checkpoint_is_locked_to(tmp_path, data_dir):
    """PBT restores one trial's state into another: a space that varies the loss (or any
    resume-locked key) is refused before Ray starts, in one line."""
    space = tmp_path / "space.yaml"
    space.write_text("loss: {choice: [bce, hinge]}\ng_lr: {loguniform: [1.0e-4, 1.0e-3]}\n")
    proc = run_before_ray(["tune", "--out", str(tmp_path / "s"), "--space", str(space),
                           "--scheduler", "pbt", *sets({"data_dir": data_dir})], timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "cannot resume with another loss" in one_line_error(proc)
    assert not (tmp_path / "s" / "ray").exists()


def test_the_sigterm_handler_is_only_installed_from_the_main_thread():
    """A caller that runs the search in a thread gets Ray's handling, not a ValueError."""
    import threading

    from dcgan_tune.search import _sigterm_as_ctrl_c

    errors = []

    def embedded():
        try:
            with _sigterm_as_ctrl_c():
                pass
        except Exception as exc:  # noqa: BLE001 - the assertion reports it
            errors.append(exc)

    thread = threading.Thread(target=embedded)
    thread.start()
    thread.join()
    assert errors == []
    before = signal.getsignal(signal.SIGTERM)
    with _sigterm_as_ctrl_c():
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before
