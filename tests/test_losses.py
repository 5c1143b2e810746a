"""The loss component (dcgan.losses): each loss's D and G losses against values worked out by
hand, the gradient penalty, critic steps, the loss's own defaults, its diagnostic profile in
the checks and gauges, and every loss through local mode (bf16, compile, bit-exact resume).
The loss under DDP (the penalty's double backward) is in test_distributed.py; in a search, in
test_tune.py."""

from __future__ import annotations

import math

import pyarrow.parquet as pq
import pytest
import torch
from torch import nn

from dcgan import layout
from dcgan.config import TrainConfig, load_config
from dcgan.data import load_mnist, to_model_range
from dcgan.diagnostics import assess, balance_score, diagnose, report, window_stats
from dcgan.errors import ConfigError
from dcgan.losses import (
    LOSSES,
    BCELoss,
    HingeLoss,
    WGANGPLoss,
    build_loss,
    gradient_penalty,
)
from dcgan.models import Discriminator
from dcgan.monitoring import LIMIT_GAUGES, MetricsExporter, MetricsUpdate, window_values
from dcgan.trainer import Trainer

from .conftest import TINY, non_numbers, run_cli, tiny_train_args

REAL = torch.tensor([0.0, 2.0])
FAKE = torch.tensor([-1.0, 1.0])


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def bce(x: float, t: float) -> float:
    """BCE of a logit x against target t, by hand: -(t log s(x) + (1-t) log(1-s(x)))."""
    return -(t * -softplus(-x) + (1 - t) * -softplus(x))


def test_bce_losses_by_hand():
    loss = BCELoss(label_smoothing=0.1)
    d = (bce(0, 0.9) + bce(2, 0.9)) / 2 / 2 + (bce(-1, 0.1) + bce(1, 0.1)) / 2 / 2
    assert float(loss.d_loss(REAL, FAKE)) == pytest.approx(d, abs=1e-6)
    # G's target is the real one (0.9): with the fake target (0.1) this would differ.
    gen = torch.tensor([-1.0, 2.0])
    assert float(loss.g_loss(gen)) == pytest.approx((bce(-1, 0.9) + bce(2, 0.9)) / 2, abs=1e-6)
    assert float(loss.g_loss(gen)) != pytest.approx((bce(-1, 0.1) + bce(2, 0.1)) / 2, abs=1e-2)
    one = BCELoss(label_smoothing=0.1, one_sided=True)
    d_one = (bce(0, 0.9) + bce(2, 0.9)) / 4 + (bce(-1, 0.0) + bce(1, 0.0)) / 4
    assert float(one.d_loss(REAL, FAKE)) == pytest.approx(d_one, abs=1e-6)


def test_hinge_losses_by_hand():
    loss = HingeLoss()
    real, fake = torch.tensor([0.5, 2.0]), torch.tensor([-2.0, 0.5])
    # D: mean(relu(1 - real)) = (0.5 + 0) / 2; mean(relu(1 + fake)) = (0 + 1.5) / 2.
    assert float(loss.d_loss(real, fake)) == pytest.approx(0.25 + 0.75)
    assert float(loss.g_loss(torch.tensor([0.5, -1.0]))) == pytest.approx(0.25)
    assert float(loss.d_loss(torch.zeros(4), torch.zeros(4))) == pytest.approx(2.0)  # chance


def test_wasserstein_losses_and_separation_by_hand():
    loss = WGANGPLoss()
    real, fake = torch.tensor([1.0, 3.0]), torch.tensor([0.0, -2.0])
    assert float(loss.d_loss(real, fake)) == pytest.approx(-1.0 - 2.0)  # E[D(G(z))] - E[D(x)]
    assert float(loss.g_loss(torch.tensor([1.0, -3.0]))) == pytest.approx(1.0)
    # The critic has no zero: accuracy is about the midpoint of the means (0.5 here).
    real_acc, fake_acc = loss.accuracies(torch.tensor([1.0, 3.0, 0.2]),
                                         torch.tensor([0.0, -2.0, 0.9]))
    mid = (4.2 / 3 - 1.1 / 3) / 2
    assert mid == pytest.approx(0.5167, abs=1e-3)
    assert float(real_acc) == pytest.approx(2 / 3) and float(fake_acc) == pytest.approx(2 / 3)


class Linear(nn.Module):
    """critic(x) = sum(w * x): its gradient with respect to x is w everywhere."""

    def __init__(self, scale: float):
        super().__init__()
        self.w = nn.Parameter(torch.full((1, 1, 28, 28), scale))

    def forward(self, x):
        return (x * self.w).flatten(1).sum(1)


@pytest.mark.parametrize("norm, expected", [(2.0, 10.0), (1.0, 0.0), (0.5, 2.5)])
def test_gradient_penalty_by_hand(norm, expected):
    """||w|| = 28 * scale; penalty = 10 * (||w|| - 1)^2 whatever the interpolates."""
    critic = Linear(norm / 28)
    real, fake = torch.rand(8, 1, 28, 28), torch.rand(8, 1, 28, 28)
    penalty = gradient_penalty(critic, real, fake, weight=10.0)
    assert float(penalty) == pytest.approx(expected, rel=1e-4, abs=1e-5)
    penalty.backward()  # the double backward reaches the critic's weights
    assert critic.w.grad is not None and (expected == 0 or critic.w.grad.abs().sum() > 0)


def test_the_critic_has_no_batchnorm_and_scores_each_image_alone():
    d = Discriminator(dropout=0.0, norm="layer").eval()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in d.modules())
    x = torch.randn(6, 1, 28, 28)
    torch.testing.assert_close(d(x)[:2], d(x[:2]))
    assert build_loss(TrainConfig(loss="wgan-gp")).critic_norm == "layer"
    assert {name: cls().critic_norm if name != "bce" else "batch"
            for name, cls in LOSSES.items()} == {"bce": "batch", "hinge": "batch",
                                                 "wgan-gp": "layer"}


def test_each_loss_starts_from_its_own_defaults():
    wgan = load_config(overrides=["loss=wgan-gp"])
    assert (wgan.g_lr, wgan.d_lr, wgan.beta1, wgan.beta2, wgan.critic_steps) == (
        1e-4, 1e-4, 0.0, 0.9, 5)
    assert load_config(overrides=["loss=wgan-gp", "g_lr=3e-4"]).g_lr == 3e-4  # --set wins
    assert load_config(overrides=["loss=hinge"]).g_lr == TrainConfig().g_lr
    assert load_config(overrides=["loss=wgan-gp", "critic_steps=1"]).critic_steps == 1
    with pytest.raises(ConfigError, match="loss: must be one of bce, hinge, wgan-gp"):
        load_config(overrides=["loss=wgan"])
    for bad in ("critic_steps=0", "critic_steps=101", "gp_weight=-1"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            load_config(overrides=["loss=wgan-gp", bad])


@pytest.fixture(scope="module")
def images(data_dir):
    return to_model_range(load_mnist(data_dir, subset=128)[0])


def test_critic_steps_update_g_every_kth_step_only(images, data_dir):
    cfg = TrainConfig(**{**TINY, "data_dir": data_dir, "loss": "wgan-gp", "critic_steps": 3,
                         "max_steps": 6, "train_subset": 128})
    trainer = Trainer(cfg, images, torch.device("cpu"))
    changed = []
    for _ in range(6):
        before = [p.detach().clone() for p in trainer.generator.parameters()]
        trainer.total_steps = trainer.step + 1
        trainer.fit()
        changed.append(any(not torch.equal(a, b) for a, b in
                           zip(before, trainer.generator.parameters(), strict=True)))
    assert changed == [False, False, True, False, False, True]
    assert trainer.ema.updates == 2  # the average follows G's updates, not D's
    assert len(trainer.stats.columns["g_loss"]) == 6  # every step still has its row


# -- the profile in the diagnostics and the gauges --------------------------------------------


def rows(g, d, real=0.8, fake=0.6, n=120):
    return {"step": list(range(n)), "epoch": [0] * n, "batch": list(range(n)),
            "g_loss": [g] * n, "d_loss": [d] * n, "d_real_acc": [real] * n,
            "d_fake_acc": [fake] * n}


def test_hinge_is_judged_by_its_own_profile():
    """G's hinge loss is negative: no ratio, no loss band, a finite balance."""
    profile = HingeLoss().profile
    ws = window_stats(rows(g=-0.3, d=1.2))
    checks = {c.name: c for c in assess(ws, profile)}
    assert "loss_ratio" not in checks and "loss_band" not in checks
    assert checks["accuracy_band"].passed
    assert balance_score(ws, profile) == pytest.approx(0.0)
    assert math.isfinite(balance_score(window_stats(rows(g=-0.3, d=0.2)), profile))
    assert balance_score(window_stats(rows(g=-0.3, d=0.2)), profile) == pytest.approx(0.6)
    # The seed's profile would call the same window unbalanced with an infinite score.
    assert balance_score(ws) == math.inf
    text = report(diagnose(rows(g=-0.3, d=1.2), profile))
    assert "Loss: hinge" in text and "Loss ratio" not in text


def test_wgan_gp_a_separating_critic_is_healthy():
    profile = WGANGPLoss().profile
    diag = diagnose(rows(g=4.0, d=-3.0, real=0.99, fake=0.98), profile)
    assert diag.healthy, [c.message for c in diag.checks if not c.passed]
    assert {c.name for c in diag.checks} == set()  # no BCE rule applies to a critic
    failing = diagnose(rows(g=0.1, d=0.4), profile)
    assert failing.balance_score == pytest.approx(0.4)


def test_bce_report_is_the_seeds():
    text = report(diagnose(rows(g=0.9, d=0.8)))
    assert "Loss ratio (G/D): 1.125" in text and "Loss:" not in text


def gauge(exporter: MetricsExporter, name: str) -> float | None:
    return exporter.registry.get_sample_value(name, {"run": "r", "mode": "local", "trial": "",
                                                     "rank": "0"})


@pytest.mark.parametrize("loss", ["bce", "hinge", "wgan-gp"])
def test_every_gauge_is_the_value_it_names(loss):
    """Real and fake accuracy differ, so feeding one gauge the other's value fails."""
    profile = build_loss(TrainConfig(loss=loss)).profile
    g, d = (1.2, 0.6) if loss == "bce" else (-0.4, 1.1)
    columns = rows(g=g, d=d, real=0.83, fake=0.64)
    ws = window_stats(columns)
    values, status = window_values(columns, profile)
    from dcgan.monitoring import profile_limits

    exporter = MetricsExporter("r", "local", {})
    exporter.apply(MetricsUpdate(rank=0, trial="", step=120, epoch=1.0, progress=0.5,
                                 new_steps=120, new_images=0, window=values, status=status,
                                 limits=profile_limits(profile)))
    assert gauge(exporter, "dcgan_d_loss") == pytest.approx(ws.d_loss)
    assert gauge(exporter, "dcgan_g_loss") == pytest.approx(ws.g_loss)
    assert gauge(exporter, "dcgan_d_real_accuracy") == pytest.approx(0.83)
    assert gauge(exporter, "dcgan_d_fake_accuracy") == pytest.approx(0.64)
    assert gauge(exporter, "dcgan_balance_score") == pytest.approx(balance_score(ws, profile))
    ratio = gauge(exporter, "dcgan_loss_ratio")
    limits = {name: gauge(exporter, name) for name in LIMIT_GAUGES}
    if loss == "bce":
        assert ratio == pytest.approx(2.0)
        assert limits == {"dcgan_loss_ratio_band_low": 0.3, "dcgan_loss_ratio_band_high": 3.0,
                          "dcgan_d_accuracy_too_strong": 0.9}
    else:  # no ratio band for a G loss that can be negative: no series, no alert
        assert ratio is None
        assert limits["dcgan_loss_ratio_band_low"] is None
        expected = None if loss == "wgan-gp" else 0.9
        assert limits["dcgan_d_accuracy_too_strong"] == expected


# -- every loss through local mode --------------------------------------------------------------


def _final_weights(run):
    return {name: torch.load(run / name, weights_only=True)
            for name in (layout.GENERATOR_FINAL, layout.DISCRIMINATOR_FINAL)}


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["hinge", "wgan-gp"])
def test_local_run_bf16_and_bit_exact_resume(tmp_path, data_dir, loss):
    """A bf16 run of each new loss: its stats, report and figure name the loss, and 10
    steps in one go equal 5, stop, resume to 10 (for wgan-gp with 3 critic steps, G updates
    at steps 2, 5 and 8: the split falls inside a critic cycle)."""
    common = {"epochs": 2, "sample_every": 0, "checkpoint_every": 0, "loss": loss,
              "precision": "bf16", "eval_samples": 200}
    if loss == "wgan-gp":
        common["critic_steps"] = 3
    straight, split = tmp_path / "straight", tmp_path / "split"
    proc = run_cli(tiny_train_args(straight, data_dir, max_steps=10, **common))
    assert proc.returncode == 0, proc.stderr
    assert f"Loss: {loss}" in proc.stdout
    assert run_cli(tiny_train_args(split, data_dir, max_steps=5, **common)).returncode == 0
    resumed = run_cli([*tiny_train_args(split, data_dir, max_steps=10, **common), "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    a, b = _final_weights(straight), _final_weights(split)
    for name in a:
        for key in a[name]:
            assert torch.equal(a[name][key], b[name][key]), f"{name}.{key}"
    s1 = pq.read_table(straight / layout.STATS_FILE).to_pydict()
    s2 = pq.read_table(split / layout.STATS_FILE).to_pydict()
    assert s1["step"] == s2["step"] == list(range(10))
    for key in ("d_loss", "g_loss", "d_real_acc", "d_fake_acc"):
        assert s1[key] == s2[key], key
    import json

    diag = json.loads((straight / layout.DIAGNOSTICS_FILE).read_text())
    assert diag["loss"] == loss
    # Numbers as numbers: a ratio the loss gives no meaning is null, never "inf".
    for name in (layout.DIAGNOSTICS_FILE, layout.BEST_INFO):
        assert non_numbers(json.loads((straight / name).read_text())) == [], name
    if loss == "wgan-gp":
        assert diag["window"]["loss_ratio"] is None
    assert (straight / layout.ANALYSIS_FILE).stat().st_size > 10_000
    # analyze reads the run's saved config, so it judges the run by the same loss.
    analyzed = run_cli(["analyze", "--out", str(straight)])
    assert analyzed.returncode == 0, analyzed.stderr
    assert f"Loss: {loss}" in analyzed.stdout


@pytest.mark.slow
def test_wgan_gp_under_torch_compile(tmp_path, data_dir):
    """The penalty's double backward runs eagerly inside a compiled step."""
    out = tmp_path / "run"
    proc = run_cli(tiny_train_args(out, data_dir, loss="wgan-gp", critic_steps=2,
                                   compile="default", max_steps=4, epochs=1, eval_every=0,
                                   sample_every=0), timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    stats = pq.read_table(out / layout.STATS_FILE).to_pydict()
    assert stats["step"] == [0, 1, 2, 3]
    assert all(math.isfinite(v) for v in stats["d_loss"] + stats["g_loss"])


@pytest.mark.parametrize("sets_, note", [
    (["loss=hinge", "label_smoothing=0.2"], "loss hinge does not use label_smoothing=0.2"),
    (["loss=wgan-gp", "label_smoothing_mode=one-sided"],
     "loss wgan-gp does not use label_smoothing_mode=one-sided"),
    (["loss=bce", "gp_weight=5"], "loss bce does not use gp_weight=5.0"),
    (["loss=wgan-gp"], None),  # the defaults of keys it ignores are no news
])
def test_keys_a_loss_ignores_are_named_once(sets_, note):
    args = ["config"] + [a for s in sets_ for a in ("--set", s)]
    proc = run_cli(args)
    assert proc.returncode == 0, proc.stderr
    notes = [line for line in proc.stderr.splitlines() if line.startswith("note: loss")]
    assert notes == ([] if note is None else [notes[0]]) and (note is None or note in notes[0])


def test_wgan_gp_defaults_to_the_papers_critic():
    cfg = load_config(overrides=["loss=wgan-gp"])
    assert (cfg.dropout, cfg.g_lr, cfg.beta1, cfg.beta2, cfg.critic_steps) == (0.0, 1e-4, 0.0,
                                                                              0.9, 5)
