"""Differentiable augmentation of what D sees (dcgan.augment): each transform on a known
image, gradients through them, the adaptive controller on a toy sequence, the same p on two
gloo ranks, and a run through ``dcgan train`` that resumes bit-exactly with it on."""

from __future__ import annotations

import math

import pyarrow.parquet as pq
import pytest
import torch

from dcgan import layout
from dcgan.augment import (
    BACKGROUND,
    Augment,
    AugmentController,
    cutout,
    cutout_mask,
    step_size,
    translate,
)
from dcgan.config import TrainConfig
from dcgan.errors import ConfigError

from .conftest import free_port, one_line_error, run_cli, tiny_train_args


def image(n: int = 1, size: int = 6) -> torch.Tensor:
    return torch.linspace(0, 0.9, n * size * size).reshape(n, 1, size, size)


def test_translation_moves_pixels_and_fills_with_the_background():
    x = image(2)
    out = translate(x, torch.tensor([[1, 0], [-2, 3]]), limit=3)
    assert out.shape == x.shape
    # Image 0 moved down by 1: its first row is background, the rest is x shifted.
    assert torch.all(out[0, 0, 0] == BACKGROUND)
    assert torch.equal(out[0, 0, 1:], x[0, 0, :-1])
    # Image 1 moved up by 2 and right by 3.
    assert torch.equal(out[1, 0, :-2, 3:], x[1, 0, 2:, :-3])
    assert torch.all(out[1, 0, -2:] == BACKGROUND) and torch.all(out[1, 0, :, :3] == BACKGROUND)
    # A zero shift is the image itself.
    assert torch.equal(translate(x, torch.zeros(2, 2, dtype=torch.long), 3), x)


def test_cutout_blanks_a_square_with_the_background():
    x = image(2)
    mask = cutout_mask(2, 6, 6, 2, torch.tensor([[3, 3], [0, 0]]), torch.tensor([True, False]))
    out = cutout(x, mask)
    assert torch.all(out[0, 0, 2:4, 2:4] == BACKGROUND)
    keep = torch.ones(6, 6, dtype=torch.bool)
    keep[2:4, 2:4] = False
    assert torch.equal(out[0, 0][keep], x[0, 0][keep])
    assert torch.equal(out[1], x[1])  # not applied to image 1


def test_gradients_flow_through_both_transforms():
    x = image(1).requires_grad_(True)
    moved = translate(x, torch.tensor([[2, 0]]), limit=2)
    moved.sum().backward()
    # The two bottom rows left the image: no gradient; every other pixel has gradient 1.
    assert torch.all(x.grad[0, 0, :4] == 1) and torch.all(x.grad[0, 0, 4:] == 0)
    x.grad = None
    mask = cutout_mask(1, 6, 6, 2, torch.tensor([[1, 1]]), torch.tensor([True]))
    cutout(x, mask).sum().backward()
    assert torch.all(x.grad[0, 0, 0:2, 0:2] == 0) and x.grad.sum() == 36 - 4


def test_probability_zero_is_the_identity_and_one_changes_every_image():
    gen = torch.Generator().manual_seed(0)
    aug = Augment(("translation", "cutout"), shift=0.25, cutout_size=0.5, generator=gen)
    x = image(16, size=28) * 2 - 1 + 0.5  # nothing at the background value
    assert aug(x) is x  # p = 0
    aug.p = 1.0
    out = aug(x)
    assert out.shape == x.shape
    changed = (out != x).flatten(1).any(1)
    assert changed.all()  # cutout alone blanks a 14x14 square of every image
    assert (out == BACKGROUND).flatten(1).sum(1).min() >= 14 * 14 // 2


def test_the_controller_raises_lowers_and_bounds_p_and_resumes_exactly():
    def rows(acc: float, n: int):  # r = 2 * acc - 1
        return [{"d_real_acc": acc}] * n

    c = AugmentController(target=0.6, every=4, step_size=0.3)
    p, seen = 0.0, []
    sequence = [0.95] * 5 + [0.5] * 6 + [0.9] * 3
    for acc in sequence:  # one decision per 4 rows
        c.observe(rows(acc, 4))
        p = c.decide(p)
        seen.append(p)
    assert seen[:5] == pytest.approx([0.3, 0.6, 0.9, 1.0, 1.0])  # r 0.9 > 0.6: up, bounded
    assert seen[5:11] == pytest.approx([0.7, 0.4, 0.1, 0.0, 0.0, 0.0])  # r 0: down, bounded
    assert seen[11:] == pytest.approx([0.3, 0.6, 0.9])
    assert c.last_r == pytest.approx(0.8)
    # Half a window observed, then the state saved and restored: the same decision.
    c.observe(rows(0.7, 2))
    twin = AugmentController(target=0.6, every=4, step_size=0.3)
    twin.load_state_dict(c.state_dict())
    for ctl in (c, twin):
        ctl.observe(rows(0.95, 2))  # r over the window: (0.4 + 0.9) / 2 > 0.6
    assert c.decide(0.5) == twin.decide(0.5) == pytest.approx(0.8)
    assert step_size(4, 64, 100_000) == pytest.approx(0.00256)


@pytest.mark.parametrize(("overrides", "needle"), [
    ({"augment": "rotate"}, "augment: must name transforms among translation, cutout"),
    ({"augment": "cutout,cutout"}, "names a transform twice"),
    ({"augment_p": 0.5}, "augment_p: needs transforms"),
    ({"augment": "cutout", "augment_p": 1.5}, "augment_p: must be in [0, 1]"),
    ({"augment": "cutout", "augment_target": 1}, "augment_target: must be in [0, 1)"),
    ({"augment": "cutout", "augment_speed": 0}, "augment_speed: must be in"),
    ({"augment": "cutout", "augment_target": 0.6, "compile": "default"}, "must be off with"),
])
def test_bad_augmentation_settings_are_refused(overrides, needle):
    with pytest.raises(ConfigError, match=None) as info:
        TrainConfig(**{**{"data_dir": "x"}, **overrides})
    assert needle in str(info.value)


def test_a_yaml_list_of_transforms_is_the_same_as_the_comma_form(tmp_path):
    from dcgan.config import load_config

    path = tmp_path / "c.yaml"
    path.write_text("augment: [translation, Cutout]\n")
    assert load_config(path).augment == "translation,cutout"
    assert load_config(overrides=["augment= translation , cutout"]).augment == \
        "translation,cutout"


# p starts mid-range, so every decision moves it (up or down, whatever the numerics).
ADAPTIVE = {"augment": "translation,cutout", "augment_p": 0.5, "augment_target": 0.1,
            "augment_every": 2, "augment_speed": 200, "eval_every": 0, "sample_every": 0,
            "epochs": 3, "checkpoint_every": 0}


@pytest.mark.slow
def test_an_adaptive_run_resumes_bit_exactly_with_p_and_r_recorded(tmp_path, data_dir):
    """Through ``dcgan train``: p moves, p and r are stats columns and a panel of the
    figure, and a run stopped mid-epoch (between two decisions) then resumed ends with the
    same weights, p and stats as one that never stopped."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert run_cli(tiny_train_args(straight, data_dir, max_steps=20, **ADAPTIVE)).returncode == 0
    assert run_cli(tiny_train_args(split, data_dir, max_steps=11, **ADAPTIVE)).returncode == 0
    proc = run_cli([*tiny_train_args(split, data_dir, max_steps=20, **ADAPTIVE), "--resume"])
    assert proc.returncode == 0, proc.stderr
    a = pq.read_table(straight / layout.STATS_FILE).to_pydict()
    b = pq.read_table(split / layout.STATS_FILE).to_pydict()
    assert len(a["step"]) == 20 and a["augment_p"] == b["augment_p"]
    assert a["augment_r"] == b["augment_r"]  # null until the first decision, in both
    assert a["augment_r"][0] is None and a["augment_r"][-1] is not None
    assert len(set(a["augment_p"])) > 1  # the controller acted
    assert a["d_loss"] == b["d_loss"] and a["g_loss"] == b["g_loss"]
    from dcgan.analysis import AUGMENT_TITLE, build_figure
    from dcgan.diagnostics import diagnose

    fig = build_figure(a, diagnose(a))
    assert AUGMENT_TITLE in [ax.get_title() for ax in fig.axes]  # p and r, in their panel
    import matplotlib.pyplot as plt

    plt.close(fig)
    ga = torch.load(straight / layout.GENERATOR_FINAL, weights_only=True)
    gb = torch.load(split / layout.GENERATOR_FINAL, weights_only=True)
    assert all(torch.equal(ga[k], gb[k]) for k in ga)


def test_augmentation_with_every_loss_in_one_step():
    """One step of each loss with p = 1: finite values, both networks updated."""
    from dcgan.losses import LOSSES
    from dcgan.trainer import Trainer

    images = (torch.rand(64, 28, 28) * 255).to(torch.uint8)
    for loss in LOSSES:
        cfg = TrainConfig(data_dir="x", loss=loss, batch_size=16, epochs=1, max_steps=2,
                          critic_steps=1, augment="translation,cutout", augment_p=1.0,
                          eval_every=0, ema_decay=0)
        t = Trainer(cfg, images, torch.device("cpu"))
        before = [p.clone() for p in t.generator.parameters()]
        t.fit()
        rows = t.stats.columns
        assert all(math.isfinite(v) for v in rows["d_loss"] + rows["g_loss"]), loss
        assert rows["augment_p"] == [1.0, 1.0]
        assert any(not torch.equal(a, b) for a, b in zip(before, t.generator.parameters(),
                                                         strict=True))


# -- the same p on every rank -----------------------------------------------------------------

def _rank_run(rank: int, world: int, port: int, images, out: str) -> None:
    """A Trainer per rank over gloo, stats averaged over ranks as in distributed mode."""
    import torch.distributed as dist

    from dcgan.trainer import Trainer

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        torch.set_num_threads(1)

        def mean(values: torch.Tensor) -> torch.Tensor:  # dcgan_cluster.worker's, sans Ray
            values = values.clone()
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
            return values / world

        # 128 images per rank in batches of 16: 8 steps an epoch, 16 in all; p starts
        # mid-range so that every decision moves it, one way or the other.
        cfg = TrainConfig(data_dir="x", batch_size=16, epochs=2, eval_every=0, ema_decay=0,
                          augment="translation,cutout", augment_p=0.5, augment_target=0.05,
                          augment_every=2, augment_speed=1000)
        t = Trainer(cfg, images, torch.device("cpu"), rank=rank, world_size=world,
                    reduce_stats=mean)
        t.fit()
        torch.save({"p": t.stats.columns["augment_p"],
                    "local_acc": t.stats.local_columns["d_real_acc"]}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ranks_agree_on_p(tmp_path):
    """2 gloo ranks on different images decide p from the mean over ranks: the same p at
    every step on both, though each rank's own accuracy differs."""
    import torch.multiprocessing as mp

    images = (torch.rand(256, 28, 28) * 255).to(torch.uint8)
    out = str(tmp_path / "rank")
    mp.spawn(_rank_run, args=(2, free_port(), images, out), nprocs=2, join=True)
    r0, r1 = (torch.load(f"{out}.{r}", weights_only=True) for r in (0, 1))
    assert r0["p"] == r1["p"] and len(r0["p"]) == 16
    assert len(set(r0["p"])) > 1  # p moved
    assert r0["local_acc"] != r1["local_acc"]  # so agreeing was not a coincidence


def test_a_bad_transform_through_the_cli_is_one_line(tmp_path, data_dir):
    proc = run_cli(tiny_train_args(tmp_path / "run", data_dir, augment="blur"))
    assert proc.returncode != 0
    assert "augment: must name transforms" in one_line_error(proc)
    assert not (tmp_path / "run").exists()
