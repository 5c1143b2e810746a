"""The generator's exponential moving average: arithmetic on a toy model, and the averaged
generator with its own BatchNorm statistics."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dcgan.config import TrainConfig
from dcgan.ema import GeneratorEMA, warmup_decay
from dcgan.errors import ConfigError
from dcgan.models import Generator


def toy() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(3, 2)


def step(model: nn.Module, value: float) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)


def test_decay_0_copies_and_decay_1_is_refused_like_the_config_key():
    model = toy()
    copying = GeneratorEMA(model, 0.0)
    for value in (1.0, 2.0, 5.0):
        step(model, value)
        copying.update()
        assert all(torch.equal(s, torch.full_like(s, value)) for s in copying.shadow)
    assert copying.updates == 3
    # One rule for the class and the ema_decay key: 1 would freeze G's initial weights.
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        GeneratorEMA(model, 1.0)
    with pytest.raises(ConfigError, match="ema_decay"):
        TrainConfig(ema_decay=1.0)


def test_warmup_then_the_configured_decay():
    assert warmup_decay(0.999, 0) == pytest.approx(0.1)
    assert warmup_decay(0.999, 90) == pytest.approx(0.91)
    assert warmup_decay(0.999, 100_000) == 0.999
    model = toy()
    ema = GeneratorEMA(model, 0.5)
    step(model, 0.0)
    ema.update()  # d = 0.1: shadow = 0.1 * initial + 0.9 * 0
    step(model, 4.0)
    shadows = [s.clone() for s in ema.shadow]
    ema.update()  # d = min(0.5, 2/11)
    d = 2 / 11
    for s, before in zip(ema.shadow, shadows, strict=True):
        assert torch.allclose(s, d * before + (1 - d) * 4.0)


def test_state_round_trip_is_exact():
    model = toy()
    ema = GeneratorEMA(model, 0.9)
    for value in (1.0, 3.0):
        step(model, value)
        ema.update()
    other = GeneratorEMA(toy(), 0.9)
    other.load_state_dict(ema.state_dict())
    assert other.updates == 2
    assert all(torch.equal(a, b) for a, b in zip(other.shadow, ema.shadow, strict=True))
    with pytest.raises(ValueError, match="does not match"):
        GeneratorEMA(nn.Linear(4, 2), 0.9).load_state_dict(ema.state_dict())


@pytest.mark.slow  # trains: outside make test-fast
def test_averaged_generator_has_its_own_batchnorm_statistics_and_touches_nothing():
    torch.manual_seed(1)
    g = Generator()
    ema = GeneratorEMA(g, 0.0)
    with torch.no_grad():
        for p in g.parameters():
            p.mul_(1.5)
    ema.update()  # the average is now exactly the scaled weights
    before = {k: v.clone() for k, v in g.state_dict().items()}
    rng = torch.get_rng_state()
    avg = ema.averaged_generator(g, seed=3, batches=5)
    assert torch.equal(torch.get_rng_state(), rng)  # the training RNG is untouched
    assert all(torch.equal(v, before[k]) for k, v in g.state_dict().items())
    assert not avg.training
    got = dict(avg.named_parameters())
    assert all(torch.equal(got[k], v) for k, v in g.named_parameters())
    bn = [m for m in avg.modules() if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d)]
    assert bn and all(int(m.num_batches_tracked) == 5 for m in bn)
    assert all(m.momentum == 0.1 for m in bn)
    # Deterministic: the same state and seed give the same statistics (as after a resume).
    fresh = GeneratorEMA(g, 0.0)
    fresh.load_state_dict(ema.state_dict())
    again = fresh.averaged_generator(g, seed=3, batches=5)
    assert again is not avg
    assert all(torch.equal(a, b) for a, b in zip(avg.state_dict().values(),
                                                 again.state_dict().values(), strict=True))


# -- in the trainer -------------------------------------------------------------------------

def tiny_cfg(data_dir: str, **changes):
    from dcgan.config import TrainConfig

    return TrainConfig(**{"train_subset": 128, "batch_size": 32, "device": "cpu",
                          "data_dir": data_dir, "eval_every": 0, "sample_every": 0,
                          "checkpoint_every": 0, "log_every": 2, "ema_decay": 0.9, **changes})


def test_ema_state_resumes_bit_exact(data_dir):
    from dcgan.data import load_mnist
    from dcgan.trainer import Trainer

    images, _ = load_mnist(data_dir, subset=128)
    cpu = torch.device("cpu")
    straight = Trainer(tiny_cfg(data_dir, max_steps=6), images, cpu)
    straight.fit()
    first = Trainer(tiny_cfg(data_dir, max_steps=3), images, cpu)
    first.fit()
    state = first.state_dict()
    assert state["ema"]["updates"] == 3
    resumed = Trainer(tiny_cfg(data_dir, max_steps=6), images, cpu)
    resumed.load_state_dict(state)
    resumed.fit()
    assert resumed.ema.updates == straight.ema.updates == 6
    assert all(torch.equal(a, b) for a, b in zip(resumed.ema.shadow, straight.ema.shadow,
                                                 strict=True))
    # An old checkpoint without an average starts one from its weights.
    state.pop("ema")
    late = Trainer(tiny_cfg(data_dir, max_steps=6), images, cpu)
    late.load_state_dict(state)
    assert late.ema.updates == 0
    assert all(torch.equal(s, p) for s, p in zip(late.ema.shadow,
                                                 late.generator.parameters(), strict=True))


class ScriptedMeter:
    """A stand-in for the classifier's meter (pure logic under test: which file is written
    when), returning FIDs from a script, one per measured generator."""

    def __init__(self, fids):
        self.fids = list(fids)

    def measure(self, images):
        from dcgan.quality import Quality

        fid = self.fids.pop(0)
        return Quality(n=len(images), fid=fid, inception_score=2.0, inception_score_std=0.1,
                       class_fractions=[0.1] * 10, classes_covered=10,
                       largest_class_fraction=0.1, mean_confidence=0.9,
                       classifier="scripted")


@pytest.mark.slow  # trains: outside make test-fast
def test_best_generator_is_written_only_when_the_fid_improves(tmp_path, data_dir):
    import json

    from dcgan.data import load_mnist
    from dcgan.layout import BEST_GENERATOR, BEST_INFO
    from dcgan.selection import QualityEvaluator
    from dcgan.trainer import Callback, Trainer

    images, _ = load_mnist(data_dir, subset=128)
    # (raw, ema) per evaluation: improves (ema), no improvement, improves (raw).
    meter = ScriptedMeter([50.0, 40.0, 45.0, 41.0, 30.0, 35.0])
    evaluator = QualityEvaluator(meter, tmp_path, every_steps=2)
    # rescore_top=0: the choice as evaluations make it (test_schedule rescores).
    trainer = Trainer(tiny_cfg(data_dir, max_steps=6, eval_samples=129, rescore_top=0), images,
                      torch.device("cpu"), callbacks=[evaluator])
    written = []

    class Watch(Callback):  # runs after the evaluator
        def on_step_end(self, t):
            if (tmp_path / BEST_INFO).exists():
                written.append((t.step, json.loads((tmp_path / BEST_INFO).read_text()),
                                (tmp_path / BEST_GENERATOR).stat().st_mtime_ns))

    kept = {}

    class Keep(Callback):  # the in-memory best (what a search trial hands back)
        def on_step_end(self, t):
            if evaluator.selection.best is not None:
                kept[t.step] = {k: v.clone() for k, v in evaluator.selection.best.items()}

    trainer.callbacks += [Watch(), Keep()]
    trainer.fit()
    # Step 4 did not improve: the kept weights are still step 2's, not the trained-on ones.
    assert all(torch.equal(kept[2][k], kept[4][k]) for k in kept[2])
    assert not all(torch.equal(kept[4][k], kept[6][k]) for k in kept[4])
    on_disk = torch.load(tmp_path / BEST_GENERATOR, weights_only=True)
    best = evaluator.selection.best
    assert all(torch.equal(on_disk[k], v) for k, v in best.items())
    # It lives in the full state, so a resumed run (or a search trial) keeps it.
    again = QualityEvaluator(meter)
    resumed = Trainer(tiny_cfg(data_dir, max_steps=6, eval_samples=129, rescore_top=0), images,
                      torch.device("cpu"), callbacks=[again])
    resumed.load_state_dict(trainer.state_dict())
    assert all(torch.equal(again.selection.best[k], v) for k, v in best.items())
    by_step = {step: (info, mtime) for step, info, mtime in written}
    assert by_step[2][0] == by_step[4][0]  # step 4 scored worse: nothing rewritten
    assert by_step[2][1] == by_step[4][1]
    assert (by_step[2][0]["generator"], by_step[2][0]["fid"]) == ("ema", 40.0)
    assert (by_step[6][0]["generator"], by_step[6][0]["fid"], by_step[6][0]["step"]) == (
        "raw", 30.0, 6)
    assert [(r["step"], r["generator"]) for r in trainer.stats.evals] == [
        (2, "raw"), (2, "ema"), (4, "raw"), (4, "ema"), (6, "raw"), (6, "ema")]


def test_one_sided_smoothing_targets_and_floors():
    from dcgan.losses import BCELoss, bce_floor, d_loss_floor

    parts = BCELoss(label_smoothing=0.1, one_sided=True)
    real, fake = parts.targets(4, torch.device("cpu"))
    assert torch.allclose(real, torch.full((4,), 0.9)) and torch.equal(fake, torch.zeros(4))
    two = BCELoss(label_smoothing=0.1)
    assert torch.allclose(two.targets(4, torch.device("cpu"))[1], torch.full((4,), 0.1))
    assert d_loss_floor(0.1) == pytest.approx(0.325, abs=1e-3) == bce_floor(0.1)
    assert d_loss_floor(0.1, one_sided=True) == pytest.approx(0.1625, abs=1e-3)
    # The floor is real: a perfect D reaches it (logits at the smoothed targets).
    import torch.nn.functional as F

    logit = torch.logit(torch.tensor(0.9))
    d_loss = (F.binary_cross_entropy_with_logits(logit, torch.tensor(0.9))
              + F.binary_cross_entropy_with_logits(torch.tensor(-30.0), torch.tensor(0.0))) / 2
    assert float(d_loss) == pytest.approx(d_loss_floor(0.1, one_sided=True), abs=1e-4)


def test_quality_figure_panels_and_best_point():
    from dcgan.analysis import QUALITY_PANELS, build_quality_figure

    evals = [{"step": s, "time": 10.0 * s, "generator": g, "fid": fid,
              "inception_score": 9 - fid / 100}
             for s, g, fid in [(8, "raw", 300.0), (8, "ema", 250.0), (16, "raw", 90.0),
                               (16, "ema", 120.0)]]
    fig = build_quality_figure(evals)
    axes = fig.axes
    assert [a.get_title() for a in axes] == list(QUALITY_PANELS)
    for ax in axes:
        labels = [line.get_label() for line in ax.get_lines()]
        assert labels == ["G", "moving average of G", "best (FID 90.00)"], labels
        star = ax.get_lines()[-1]
        assert list(star.get_xdata()) in ([16], [160.0])
    assert axes[1].get_xlabel() == "training time (s)"
    import matplotlib.pyplot as plt

    plt.close(fig)
