import torch
from torch import nn

from dcgan.models import Discriminator, Generator, build_models


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
