"""``dcgan sample`` / ``dcgan interpolate`` end to end, and the generator tools in-process."""

import numpy as np
import pytest
import torch
from PIL import Image

from dcgan import layout
from dcgan.errors import CheckpointError
from dcgan.generation import interpolate, latent, load_generator, slerp
from dcgan.models import Generator

from .conftest import one_line_error, run_cli


def test_sample_grid_and_raw_tensors(finished_run, tmp_path):
    gen = finished_run.out / layout.GENERATOR_FINAL
    proc = run_cli(["sample", "--generator", str(gen), "--image", str(tmp_path / "s.png"),
                    "--n", "10", "--nrow", "5", "--noise-seed", "3",
                    "--save-tensor", str(tmp_path / "s.npy")])
    assert proc.returncode == 0, proc.stderr
    assert Image.open(tmp_path / "s.png").size == (5 * 30 + 2, 2 * 30 + 2)
    arr = np.load(tmp_path / "s.npy")
    assert arr.shape == (10, 1, 28, 28) and arr.min() >= -1 and arr.max() <= 1
    # The same seed gives the same images, from the full checkpoint too.
    state = sorted((finished_run.out / "checkpoints").glob("*.pt"))[-1]
    proc = run_cli(["sample", "--generator", str(state), "--image", str(tmp_path / "t.png"),
                    "--n", "10", "--noise-seed", "3", "--save-tensor", str(tmp_path / "t.pt")])
    assert proc.returncode == 0, proc.stderr
    assert np.array_equal(torch.load(tmp_path / "t.pt", weights_only=True).numpy(), arr)


def test_interpolate_grid_and_gif(finished_run, tmp_path):
    gen = finished_run.out / layout.GENERATOR_FINAL
    proc = run_cli(["interpolate", "--generator", str(gen), "--image", str(tmp_path / "i.png"),
                    "--steps", "6", "--pairs", "3", "--mode", "lerp",
                    "--gif", str(tmp_path / "i.gif")])
    assert proc.returncode == 0, proc.stderr
    assert Image.open(tmp_path / "i.png").size == (6 * 30 + 2, 3 * 30 + 2)
    gif = Image.open(tmp_path / "i.gif")
    assert gif.n_frames == 6 + 4  # forth, then back without repeating the ends


@pytest.mark.parametrize("mode", ["lerp", "slerp"])
def test_walks_start_and_end_at_their_latent_vectors(mode):
    torch.manual_seed(0)
    g = Generator().eval()
    walks = interpolate(g, pairs=2, steps=5, mode=mode, seed=7)
    ends = latent(4, 100, 7)
    with torch.no_grad():
        assert torch.allclose(walks[:, 0], g(ends[:2]), atol=1e-5)
        assert torch.allclose(walks[:, -1], g(ends[2:]), atol=1e-5)


def test_slerp_keeps_the_norm_of_equal_norm_vectors():
    z0, z1 = torch.tensor([[3.0, 0.0]]), torch.tensor([[0.0, 3.0]])
    mid = slerp(z0, z1, torch.tensor([0.5]))
    assert torch.allclose(mid.norm(), torch.tensor(3.0))
    assert torch.allclose(slerp(z0, z0, torch.tensor([0.3])), z0)  # parallel: no NaN


def test_bad_generator_files(finished_run, tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="notes.pth is corrupt"):
        load_generator(text)
    tensor = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(CheckpointError, match="not a generator state dict"):
        load_generator(tensor)
    wrong = tmp_path / "wrong.pth"
    sd = Generator().state_dict()
    sd["blocks.2.weight"] = torch.zeros(64, 128, 3, 3)
    torch.save(sd, wrong)
    with pytest.raises(CheckpointError, match="does not fit the dcgan Generator"):
        load_generator(wrong)


@pytest.mark.parametrize("args, code, needle", [
    (["--n", "0"], 2, "--n: must be >= 1"),
    (["--generator-is", "x"], 2, "unrecognized arguments"),
    ([], 1, "is it a discriminator?"),
])
def test_sample_bad_input_is_one_line(finished_run, tmp_path, args, code, needle):
    disc = finished_run.out / layout.DISCRIMINATOR_FINAL
    gen = finished_run.out / layout.GENERATOR_FINAL
    target = disc if not args else gen
    proc = run_cli(["sample", "--generator", str(target), "--image", str(tmp_path / "x.png"),
                    *args])
    assert proc.returncode == code
    assert needle in one_line_error(proc)
    assert not (tmp_path / "x.png").exists()


def test_interpolate_bad_input(finished_run, tmp_path):
    gen = finished_run.out / layout.GENERATOR_FINAL
    proc = run_cli(["interpolate", "--generator", str(gen), "--image", str(tmp_path / "x.png"),
                    "--steps", "1"])
    assert proc.returncode == 2 and "--steps must be >= 2" in one_line_error(proc)
    proc = run_cli(["interpolate", "--generator", str(tmp_path / "missing.pth"),
                    "--image", str(tmp_path / "x.png")])
    assert proc.returncode == 1 and "does not exist" in one_line_error(proc)
