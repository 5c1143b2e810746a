"""Learning rates that change during a run (dcgan.schedule) and the rescoring of the best
candidates (dcgan.callbacks): the rules on toy inputs, then in a real training loop,
resumed bit-exactly."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import torch

from dcgan import layout
from dcgan.schedule import BALANCE_FACTOR, BalanceController, decay_factor

from .conftest import run_cli, sets
from .test_ema import ScriptedMeter, tiny_cfg


def test_decay_schedule():
    # Off: constant. On: 1 until the last 40% of 10 steps, then linear to the final factor.
    assert [decay_factor(s, 10, 0.0, 0.1) for s in range(10)] == [1.0] * 10
    factors = [decay_factor(s, 10, 0.4, 0.1) for s in range(10)]
    assert factors[:6] == [1.0] * 6
    assert factors[-1] == pytest.approx(0.1)
    steps = [b - a for a, b in zip(factors[5:], factors[6:], strict=False)]
    assert all(d < 0 for d in steps) and max(steps) == pytest.approx(min(steps))
    # Decay over the whole run: every step already decayed, the last at the final factor.
    assert decay_factor(0, 10, 1.0, 0.0) == pytest.approx(0.9)
    assert decay_factor(9, 10, 1.0, 0.0) == 0.0
    assert decay_factor(50, 10, 0.5, 0.2) == pytest.approx(0.2)  # past the end: the final


def rows(real: float, fake: float, n: int) -> list[dict]:
    return [{"d_real_acc": real, "d_fake_acc": fake}] * n


def test_balance_rule_on_a_toy_trajectory():
    ctl = BalanceController(band=(0.6, 0.9), every=10, floor=0.3)
    scales = []
    # D too strong for 8 windows: down by the factor each time, never below the floor.
    for step in range(10, 90, 10):
        ctl.observe(rows(0.97, 0.93, 10))
        ctl.decide(step)
        scales.append(ctl.scale)
    expected = [max(0.3, BALANCE_FACTOR ** k) for k in range(1, 9)]
    assert scales == pytest.approx(expected)
    assert min(scales) == 0.3
    changes = len(ctl.log)
    assert changes == sum(1 for a, b in zip([1.0, *expected], expected, strict=False) if a != b)
    # Inside the band, or real above and fake below (no side to take): no change.
    for real, fake in ((0.8, 0.7), (0.95, 0.5)):
        ctl.observe(rows(real, fake, 10))
        assert ctl.decide(100) is None
    assert ctl.scale == 0.3 and len(ctl.log) == changes
    # G too strong: back up, never above the configured rate.
    for step in range(110, 300, 10):
        ctl.observe(rows(0.5, 0.55, 10))
        ctl.decide(step)
    assert ctl.scale == 1.0
    last = ctl.log[-1]
    assert last["to"] == 1.0 and last["from"] == pytest.approx(1.0 * BALANCE_FACTOR, rel=0.3)
    assert last["real_acc"] == pytest.approx(0.5)
    # Every logged change is one bounded step from the scale before it.
    for change in ctl.log:
        ratio = change["to"] / change["from"]
        assert BALANCE_FACTOR - 1e-9 <= ratio <= 1 / BALANCE_FACTOR + 1e-9
        assert 0.3 <= change["to"] <= 1.0
    # A window split by a save and a restore decides as the unsplit one.
    a, b = BalanceController((0.6, 0.9), 10, 0.1), BalanceController((0.6, 0.9), 10, 0.1)
    a.observe(rows(0.99, 0.95, 4) + rows(0.7, 0.8, 6))
    b.observe(rows(0.99, 0.95, 4))
    c = BalanceController((0.6, 0.9), 10, 0.1)
    c.load_state_dict(json.loads(json.dumps(b.state_dict())))
    c.observe(rows(0.7, 0.8, 6))
    assert a.decide(10) == c.decide(10)
    assert a.state_dict() == c.state_dict()


def _strong_d(data_dir: str, **changes):
    # A D that wins within 20 steps: G barely learns, D sees the same 64 images again and
    # again, so its accuracy leaves the band and the controller steps in.
    return tiny_cfg(data_dir, train_subset=64, g_lr=1e-6, d_lr=1e-3, dropout=0.0,
                    label_smoothing=0.0, auto_balance=True, balance_every=3,
                    balance_floor=0.2, lr_decay=0.5, lr_decay_final=0.25, max_steps=30,
                    **changes)


@pytest.mark.slow  # trains: outside make test-fast
def test_balance_and_decay_in_training_resume_bit_exact(data_dir):
    from dcgan.data import load_mnist
    from dcgan.trainer import Callback, Trainer

    images, _ = load_mnist(data_dir, subset=64)
    cpu = torch.device("cpu")
    straight = Trainer(_strong_d(data_dir), images, cpu)
    straight.fit()
    log = straight.balance.log
    assert len(log) >= 2 and log[0]["step"] < 20  # a change before the split below
    assert all(c["to"] < c["from"] for c in log)  # D was too strong: lowered
    cols = straight.stats.columns
    # Each step's rates are in the stats: D's follows the controller, both the decay.
    for change in log:
        step = change["step"]  # the first step trained with the new multiplier
        if step == 30:  # decided after the last step: for a resume with a longer budget
            continue
        decay = decay_factor(step, 30, 0.5, 0.25)
        assert cols["d_lr"][step] == pytest.approx(1e-3 * change["to"] * decay)
    assert cols["g_lr"][:15] == [1e-6] * 15 and cols["g_lr"][-1] == pytest.approx(0.25e-6)
    assert straight.opt_d.param_groups[0]["lr"] == pytest.approx(cols["d_lr"][-1])

    class StopAt(Callback):  # an interruption mid-window (balance_every=3) and mid-decay
        def on_step_end(self, t):
            if t.step == 20:
                t.stop_requested = "test"

    first = Trainer(_strong_d(data_dir), images, cpu, callbacks=[StopAt()])
    first.fit()
    assert first.step == 20 and first.balance.scale < 1 and first.balance.n > 0
    state = first.state_dict()
    resumed = Trainer(_strong_d(data_dir), images, cpu)
    resumed.load_state_dict(state)
    resumed.fit()
    assert resumed.balance.log == log
    for key in ("d_loss", "g_loss", "d_real_acc", "d_fake_acc", "g_lr", "d_lr"):
        assert resumed.stats.columns[key] == cols[key], key
    for a, b in zip(resumed.discriminator.state_dict().values(),
                    straight.discriminator.state_dict().values(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.slow  # trains: outside make test-fast
def test_rescoring_names_the_best_at_the_final_n(tmp_path, data_dir):
    from dcgan.data import load_mnist
    from dcgan.selection import QualityEvaluator
    from dcgan.trainer import Trainer

    images, _ = load_mnist(data_dir, subset=128)
    # (raw, ema) at steps 2, 4, 6; then the three best (40, 41, 45) rescored: the
    # runner-up at the small N (41: step 4's EMA) wins at the large one.
    meter = ScriptedMeter([50.0, 40.0, 45.0, 41.0, 60.0, 55.0, 39.0, 37.0, 38.0])
    cfg = tiny_cfg(data_dir, max_steps=6, eval_samples=129, rescore_samples=300)
    evaluator = QualityEvaluator(meter, tmp_path, every_steps=2, keep=cfg.rescore_top)
    selection = evaluator.selection
    trainer = Trainer(cfg, images, torch.device("cpu"), callbacks=[evaluator])
    kept = {}
    evaluator_evaluate = evaluator.evaluate

    def evaluate(t):  # the weights each evaluation scored
        evaluator_evaluate(t)
        for c in selection.candidates:
            kept.setdefault((c["row"]["step"], c["row"]["generator"]), c["weights"])

    evaluator.evaluate = evaluate
    trainer.fit()
    assert [(c["row"]["step"], c["row"]["generator"], c["row"]["fid"])
            for c in selection.candidates] == [(2, "ema", 40.0), (4, "ema", 41.0),
                                                (4, "raw", 45.0)]
    info = json.loads((tmp_path / layout.BEST_INFO).read_text())
    assert (info["step"], info["generator"], info["fid"]) == (4, "ema", 41.0)
    assert info["rescored_fid"] == 37.0 and info["rescore_samples"] == 300
    assert [(r["step"], r["eval_fid"], r["fid"], r["n"]) for r in info["rescored"]] == [
        (2, 40.0, 39.0, 300), (4, 41.0, 37.0, 300), (4, 45.0, 38.0, 300)]
    on_disk = torch.load(tmp_path / layout.BEST_GENERATOR, weights_only=True)
    assert all(torch.equal(on_disk[k], v) for k, v in kept[(4, "ema")].items())
    assert all(torch.equal(selection.best[k], v) for k, v in on_disk.items())
    # The candidates travel in the full state.
    again = QualityEvaluator(meter, keep=cfg.rescore_top)
    Trainer(cfg, images, torch.device("cpu"), callbacks=[again]).load_state_dict(
        trainer.state_dict())
    assert [c["row"] for c in again.selection.candidates] == [
        c["row"] for c in selection.candidates]


@pytest.mark.slow
def test_auto_balance_through_the_cli(tmp_path, data_dir):
    """``dcgan train`` with the controller on: its changes on the console, the rates in the
    stats, the rate axis in ``analyze``'s figure; and a bad value refused in one line."""
    out = tmp_path / "run"
    values = {"train_subset": 64, "batch_size": 32, "device": "cpu", "log_every": 2,
              "sample_every": 0, "checkpoint_every": 0, "epochs": 15, "eval_every": 5,
              "eval_samples": 200, "rescore_samples": 300, "g_lr": 1e-6, "d_lr": 1e-3,
              "dropout": 0.0, "label_smoothing": 0.0, "auto_balance": "true",
              "balance_every": 3, "lr_decay": 0.3, "data_dir": data_dir}
    proc = run_cli(["train", "--out", str(out), *sets(values)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "auto-balance: D accuracy real" in proc.stdout
    assert "D's learning rate lowered to 0.8 x d_lr" in proc.stdout
    stats = pq.read_table(out / layout.STATS_FILE).to_pydict()
    assert min(stats["d_lr"]) < 1e-3 * 0.8 and stats["g_lr"][0] == 1e-6
    assert "rescored with 300 samples" in proc.stdout
    proc = run_cli(["analyze", "--out", str(out)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / layout.ANALYSIS_FILE).stat().st_size > 10_000
    from dcgan.analysis import build_figure
    from dcgan.diagnostics import diagnose

    labels = [a.get_ylabel() for a in build_figure(stats, diagnose(stats)).axes]
    assert "learning rate (auto-balance, decay)" in labels
    proc = run_cli(["train", "--out", str(tmp_path / "bad"),
                    *sets({"auto_balance": "maybe", "data_dir": data_dir})])
    assert proc.returncode == 2
    assert "auto_balance: must be true or false (got 'maybe')" in proc.stderr
