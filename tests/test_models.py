import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from dcgan import layout
from dcgan.config import TrainConfig
from dcgan.errors import CheckpointError, ConfigError
from dcgan.generation import load_generator
from dcgan.models import Discriminator, Generator, build_models, generator_width

from .conftest import one_line_error, run_cli, tiny_train_args


def test_generator_shape_and_range():
    g, _ = build_models()
    out = g(torch.randn(16, 100) * 10)  # large inputs still land in [-1, 1]
    assert out.shape == (16, 1, 28, 28)
    assert out.min() >= -1 and out.max() <= 1


def test_discriminator_returns_one_logit_per_image():
    _, d = build_models()
    logits = d(torch.rand(8, 1, 28, 28) * 2 - 1)
    assert logits.shape == (8,)
    assert logits.dtype == torch.float32
    # Logits, not probabilities: the linear head is not squashed.
    assert not isinstance(list(d.modules())[-1], nn.Sigmoid)


def test_seed_architecture():
    g, d = Generator(), Discriminator()
    assert g.project.in_features == 100 and g.project.out_features == 128 * 7 * 7
    convs = [m for m in d.features if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (1, 64, (4, 4), (2, 2)), (64, 128, (4, 4), (2, 2)), (128, 256, (4, 4), (2, 2)),
        (256, 512, (4, 4), (2, 2))]
    layers = list(d.features)
    assert not isinstance(layers[1], nn.BatchNorm2d)  # no BN on D's first layer
    assert sum(isinstance(m, nn.BatchNorm2d) for m in layers) == 3
    assert all(m.negative_slope == 0.2 for m in layers if isinstance(m, nn.LeakyReLU))
    assert [m.p for m in layers if isinstance(m, nn.Dropout2d)] == [0.3] * 4
    assert d.classify.out_features == 1
    assert isinstance(list(g.blocks)[-1], nn.Tanh)


def test_dcgan_initialisation():
    torch.manual_seed(0)
    g, d = build_models()
    conv_w = torch.cat([m.weight.flatten() for m in d.modules() if isinstance(m, nn.Conv2d)])
    bn_w = torch.cat([m.weight for m in g.modules() if isinstance(m, nn.BatchNorm2d)])
    assert abs(conv_w.mean()) < 1e-3 and abs(conv_w.std() - 0.02) < 1e-3
    assert abs(bn_w.mean() - 1) < 5e-3 and abs(bn_w.std() - 0.02) < 5e-3


def test_seed_usage_load_state_dict(tmp_path):
    g, _ = build_models()
    torch.save(g.state_dict(), tmp_path / "g.pth")
    loaded = Generator()
    loaded.load_state_dict(torch.load(tmp_path / "g.pth", weights_only=True))
    z = torch.randn(4, 100)
    assert torch.equal(g.eval()(z), loaded.eval()(z))


# -- a wider generator and a spectrally normalised D (the quality study's candidates) -----------


def test_width_multiplies_the_generators_hidden_channels():
    g, _ = build_models(g_width=2)
    assert g.project.out_features == 256 * 7 * 7
    convs = [m for m in g.blocks if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(256, 256), (256, 128), (128, 1)]
    assert g(torch.randn(3, 100)).shape == (3, 1, 28, 28)
    assert generator_width(256 * 49) == 2 and generator_width(128 * 49) == 1
    assert generator_width(100 * 49) is None and generator_width(0) is None


def test_spectral_norm_replaces_ds_norms_and_bounds_each_layer():
    torch.manual_seed(0)
    _, d = build_models(d_spectral=True)
    layers = [m for m in d.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    assert len(layers) == 5 and all(parametrize.is_parametrized(m, "weight") for m in layers)
    assert not any(isinstance(m, nn.BatchNorm2d | nn.GroupNorm) for m in d.modules())
    # DCGAN init kept (up to scale): the raw weights are the N(0, 0.02) draws.
    raw = torch.cat([m.parametrizations.weight.original.flatten() for m in layers[:4]])
    assert abs(raw.std() - 0.02) < 1e-3
    d.train()
    for _ in range(30):  # one power iteration per training forward
        d(torch.rand(4, 1, 28, 28) * 2 - 1)
    for m in layers:
        sigma = torch.linalg.matrix_norm(m.weight.detach().flatten(1), ord=2)
        assert abs(sigma - 1) < 0.05, (m, sigma)
    # The estimate's vectors are state: a copy loaded from the state dict gives equal logits.
    twin = build_models(d_spectral=True)[1]
    twin.load_state_dict(d.state_dict())
    x = torch.rand(4, 1, 28, 28) * 2 - 1
    assert torch.equal(d.eval()(x), twin.eval()(x))


def test_a_wide_generator_is_loaded_from_its_weights_alone(tmp_path):
    g, _ = build_models(g_width=3)
    torch.save(g.state_dict(), tmp_path / "g.pth")
    loaded = load_generator(tmp_path / "g.pth")
    assert loaded.width == 3
    z = torch.randn(4, 100)
    assert torch.equal(g.eval()(z), loaded(z))
    state = g.state_dict()
    state["project.weight"] = state["project.weight"][:1000]
    torch.save(state, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match="not a multiple of 6272"):
        load_generator(tmp_path / "odd.pth")


@pytest.mark.parametrize("overrides, needle", [
    ({"g_width": 0}, "g_width: must be in 1-8"),
    ({"g_width": 9}, "g_width: must be in 1-8"),
    ({"g_width": 1.5}, "g_width: must be an integer"),
    ({"spectral_norm": "maybe"}, "spectral_norm: must be true or false"),
])
def test_bad_architecture_settings_are_refused(overrides, needle):
    with pytest.raises(ConfigError, match=needle):
        TrainConfig(**overrides)


@pytest.mark.slow  # trains: outside make test-fast
def test_wide_spectral_hinge_run_resumes_bit_exactly_and_samples(tmp_path, data_dir):
    """Through the CLI: a width-2 generator against a spectrally normalised hinge D in bf16;
    10 steps in one go equal 5, stop, resume to 10 (the power iteration's vectors are in the
    checkpoint); its best generator samples; resuming it as another architecture is one
    line naming the key."""
    common = {"epochs": 2, "sample_every": 0, "checkpoint_every": 0, "loss": "hinge",
              "precision": "bf16", "eval_samples": 200, "g_width": 2, "spectral_norm": True}
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert run_cli(tiny_train_args(straight, data_dir, max_steps=10, **common)).returncode == 0
    assert run_cli(tiny_train_args(split, data_dir, max_steps=5, **common)).returncode == 0
    resumed = run_cli([*tiny_train_args(split, data_dir, max_steps=10, **common), "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    for name in (layout.GENERATOR_FINAL, layout.DISCRIMINATOR_FINAL):
        a = torch.load(straight / name, weights_only=True)
        b = torch.load(split / name, weights_only=True)
        assert a.keys() == b.keys() and any("parametrizations" in k for k in a) == (
            name == layout.DISCRIMINATOR_FINAL)
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}.{key}"
    image = tmp_path / "samples.png"
    sampled = run_cli(["sample", "--generator", str(straight / layout.BEST_GENERATOR),
                       "--image", str(image), "--n", "16"])
    assert sampled.returncode == 0, sampled.stderr
    assert image.stat().st_size > 0
    narrow = run_cli([*tiny_train_args(split, data_dir, max_steps=12,
                                       **{**common, "g_width": 1}), "--resume"])
    assert narrow.returncode != 0
    assert "g_width=2" in one_line_error(narrow)


def test_wide_spectral_networks_with_every_loss_in_one_step():
    """One step of each loss (wgan-gp's penalty differentiates through the normalisation)
    with both levers on: finite values, both networks updated."""
    import math

    from dcgan.losses import LOSSES
    from dcgan.trainer import Trainer

    images = (torch.rand(64, 28, 28) * 255).to(torch.uint8)
    for loss in LOSSES:
        cfg = TrainConfig(data_dir="x", loss=loss, batch_size=16, epochs=1, max_steps=2,
                          critic_steps=1, g_width=2, spectral_norm=True, eval_every=0,
                          ema_decay=0)
        t = Trainer(cfg, images, torch.device("cpu"))
        g_before = [p.clone() for p in t.generator.parameters()]
        d_before = [p.clone() for p in t.discriminator.parameters()]
        t.fit()
        rows = t.stats.columns
        assert all(math.isfinite(v) for v in rows["d_loss"] + rows["g_loss"]), loss
        for before, net in ((g_before, t.generator), (d_before, t.discriminator)):
            assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters(),
                                                             strict=True)), loss
