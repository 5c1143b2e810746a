"""Every diagnostic rule in both directions, and balance_score's monotonicity."""

import math

import pytest
import torch

from dcgan.diagnostics import (
    assess,
    balance_score,
    diagnose,
    diversity_check,
    report,
    status_line,
    window_stats,
)
from dcgan.losses import BCELoss, bce_floor


def rows(n=200, g=0.9, d=0.8, real=0.75, fake=0.7, g_noise=0.0, d_noise=0.0):
    """Synthetic stats columns: constant values with optional alternating noise."""
    sign = [1 if i % 2 else -1 for i in range(n)]
    return {"step": list(range(n)), "epoch": [i // 50 for i in range(n)],
            "batch": [i % 50 for i in range(n)],
            "g_loss": [g + g_noise * s for s in sign], "d_loss": [d + d_noise * s for s in sign],
            "d_real_acc": [real] * n, "d_fake_acc": [fake] * n}


def checks(**kw):
    return {c.name: c for c in assess(window_stats(rows(**kw)))}


def test_bce_floor_is_the_label_smoothing_entropy():
    assert bce_floor(0.1) == pytest.approx(0.3251, abs=1e-4)
    assert bce_floor(0.0) == 0.0
    # The floor is reachable: BCE(logit(0.9), 0.9) equals it.
    logit = torch.tensor([math.log(9)])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logit, torch.tensor([0.9]))
    assert bce.item() == pytest.approx(bce_floor(0.1), abs=1e-6)


def test_window_uses_the_last_iterations():
    cols = rows(n=300)
    cols["g_loss"][:200] = [100.0] * 200  # outside the window of 100
    ws = window_stats(cols, window=100)
    assert ws.n == 100 and ws.first_step == 200 and ws.g_loss == pytest.approx(0.9)
    assert ws.loss_ratio == pytest.approx(0.9 / 0.8)
    assert ws.loss_diff == pytest.approx(0.1)


def test_healthy_window_passes_every_check():
    c = checks()
    assert all(x.passed for x in c.values()), [x.message for x in c.values() if not x.passed]


@pytest.mark.parametrize("g, d, passed", [(0.9, 0.8, True), (3.5, 1.0, False),
                                          (0.25, 1.0, False), (1.1, 0.4, True)])
def test_loss_ratio_band(g, d, passed):
    c = checks(g=g, d=d)["loss_ratio"]
    assert c.passed is passed
    if not passed:
        assert "unbalanced" in c.message and c.advice


@pytest.mark.parametrize("real, fake, passed, word", [
    (0.75, 0.7, True, "within"), (0.95, 0.7, False, "above 90%"),
    (0.55, 0.7, False, "below 60%"), (0.7, 0.92, False, "above 90%"),
    (0.7, 0.4, False, "below 60%")])
def test_accuracy_band(real, fake, passed, word):
    c = checks(real=real, fake=fake)["accuracy_band"]
    assert c.passed is passed and word in c.message


@pytest.mark.parametrize("g, d, passed", [(0.9, 0.8, True), (1.8, 0.8, False),
                                          (0.9, 0.45, False)])
def test_loss_band(g, d, passed):
    assert checks(g=g, d=d)["loss_band"].passed is passed


def test_discriminator_too_strong_both_ways():
    strong = checks(real=0.95, fake=0.93)["discriminator_strength"]
    assert not strong.passed and "too strong" in strong.message
    assert "dropout" in strong.advice and "d_lr" in strong.advice
    assert checks(real=0.88, fake=0.85)["discriminator_strength"].passed


def test_vanishing_gradients_at_the_floor_or_dominant_d():
    at_floor = checks(d=bce_floor(0.1) + 0.01, g=2.0)["vanishing_gradients"]
    assert not at_floor.passed and "floor" in at_floor.message
    dominant = checks(real=0.97, fake=0.97)["vanishing_gradients"]
    assert not dominant.passed and "95%" in dominant.message
    assert checks(d=0.6)["vanishing_gradients"].passed  # well above 0.325


def test_vanishing_gradients_respects_label_smoothing():
    # 0.34 is at the floor with smoothing 0.1, but far above it with no smoothing.
    ws = window_stats(rows(d=0.34, g=0.9))
    by = {c.name: c for c in assess(ws, BCELoss(label_smoothing=0.1).profile)}
    assert not by["vanishing_gradients"].passed
    by = {c.name: c for c in assess(ws, BCELoss(label_smoothing=0.0).profile)}
    assert by["vanishing_gradients"].passed


def test_instability_from_loss_variance():
    assert not checks(g=1.0, g_noise=0.8)["instability"].passed
    assert checks(g=1.0, g_noise=0.1)["instability"].passed


def test_mode_collapse_from_sample_diversity():
    torch.manual_seed(0)
    real = torch.rand(64, 1, 28, 28) * 2 - 1
    collapsed = real[:1].repeat(64, 1, 1, 1) + 0.01 * torch.randn(64, 1, 28, 28)
    check, ratio = diversity_check(collapsed, real)
    assert not check.passed and ratio < 0.1 and "collapse" in check.message
    check, ratio = diversity_check(torch.rand(64, 1, 28, 28) * 2 - 1, real)
    assert check.passed and ratio == pytest.approx(1.0, abs=0.1)


def test_balance_score_zero_when_balanced():
    assert balance_score(window_stats(rows(g=0.8, d=0.8, real=0.75, fake=0.75))) == 0.0


@pytest.mark.parametrize("direction", ["d_dominates", "g_dominates"])
def test_balance_score_grows_as_one_side_dominates(direction):
    scores = []
    for k in range(6):
        if direction == "d_dominates":  # D's loss falls, G's rises, D gets more accurate
            cols = rows(g=0.8 + 0.3 * k, d=0.8 - 0.08 * k, real=0.75 + 0.04 * k,
                        fake=0.75 + 0.04 * k)
        else:  # G fools D: D's loss rises, G's falls, D's accuracy drops
            cols = rows(g=0.8 - 0.08 * k, d=0.8 + 0.1 * k, real=0.75 - 0.06 * k,
                        fake=0.75 - 0.06 * k)
        scores.append(balance_score(window_stats(cols)))
    assert scores[0] == 0.0
    assert all(b > a for a, b in zip(scores, scores[1:], strict=False)), scores


def test_balance_score_penalises_a_strong_discriminator_more():
    base = dict(g=0.9, d=0.9)
    weak = balance_score(window_stats(rows(**base, real=0.5, fake=0.5)))  # 10 points below
    strong = balance_score(window_stats(rows(**base, real=1.0, fake=1.0)))  # 10 points above
    assert strong > weak > 0


def test_balance_score_is_robust_to_step_noise():
    calm = balance_score(window_stats(rows(g=0.9, d=0.8)))
    noisy = balance_score(window_stats(rows(g=0.9, d=0.8, g_noise=0.3, d_noise=0.2)))
    assert noisy == pytest.approx(calm)  # window means: symmetric noise cancels


def test_report_and_status_line_read_like_the_seed():
    diag = diagnose(rows(real=0.95, fake=0.93))
    text = report(diag)
    assert text.startswith("Final Stats (last 100 iterations):")
    assert "Status Assessment:" in text and "✗" in text and "advice:" in text
    assert "discriminator_strength" in status_line(diag)
    assert "healthy" in status_line(diagnose(rows()))


def test_bad_stats():
    with pytest.raises(ValueError, match="no rows"):
        window_stats({k: [] for k in rows(n=1)})
    cols = rows()
    del cols["g_loss"]
    with pytest.raises(ValueError, match="g_loss"):
        window_stats(cols)
