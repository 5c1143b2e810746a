import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from dcgan.checkpoint import (
    list_states,
    load_latest_state,
    load_state,
    load_torch,
    save_state,
    save_torch,
)
from dcgan.errors import CheckpointError
from dcgan.io import atomic_write


def _state(step: int) -> dict:
    """A complete state in form (what load_state checks), with made-up contents."""
    from dcgan.stats import COLUMNS

    optimizer = {"state": {}, "param_groups": []}
    return {"generator": {"w": torch.full((4,), float(step))},
            "discriminator": {"w": torch.zeros(1)}, "opt_g": optimizer, "opt_d": optimizer,
            "step": step, "rng": {"device_type": "cpu", "torch": None, "noise": None},
            "fixed_noise": torch.zeros(2), "config": {"seed": 1},
            "stats": {c: torch.zeros(step) for c in COLUMNS}, "elapsed": 0.0}


def test_failed_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_torch({"v": torch.ones(3)}, path)

    def half_then_crash(fh):
        fh.write(b"partial garbage")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(path, half_then_crash)
    assert torch.equal(load_torch(path)["v"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temporary left behind


@pytest.mark.slow  # trains: outside make test-fast
def test_kill_during_writes_never_leaves_a_truncated_file(tmp_path):
    """SIGKILL a process that rewrites a 40 MB checkpoint in a loop: the file always loads."""
    path = tmp_path / "state.pt"
    script = textwrap.dedent(f"""
        import torch
        from dcgan.checkpoint import save_torch
        i = 0
        while True:
            save_torch({{"i": i, "w": torch.full((10_000_000,), float(i))}}, {str(path)!r})
            i += 1
            print(i, flush=True)
    """)
    for delay in (1.2, 1.9, 2.6):
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                                text=True)
        try:
            proc.stdout.readline()  # at least one complete write
            time.sleep(delay - 1.0)
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        state = load_torch(path)
        assert torch.all(state["w"] == float(state["i"]))


def test_corrupt_and_foreign_checkpoints_are_named(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pt is corrupt"):
        load_state(bad)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.ones(1)}, foreign)
    with pytest.raises(CheckpointError, match="not a dcgan full-state checkpoint"):
        load_state(foreign)


def test_checkpoints_refuse_pickled_code(tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"format": "dcgan-train-state", "payload": os.system}, evil)
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_state(evil)


def test_keeps_two_and_falls_back_past_a_corrupt_newest(tmp_path):
    for step in (10, 20, 30):
        save_state(tmp_path, _state(step))
    assert [p.name for p in list_states(tmp_path)] == ["state_step_00000030.pt",
                                                       "state_step_00000020.pt"]
    newest = list_states(tmp_path)[0]
    newest.write_bytes(newest.read_bytes()[:100])
    warnings = []
    path, state = load_latest_state(tmp_path, warn=warnings.append)
    assert state["step"] == 20 and path.name == "state_step_00000020.pt"
    assert "state_step_00000030.pt" in warnings[0]


def test_no_valid_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="nothing to resume"):
        load_latest_state(tmp_path)
    save_state(tmp_path, _state(5))
    list_states(tmp_path)[0].write_bytes(b"")
    with pytest.raises(CheckpointError, match="state_step_00000005.pt is corrupt"):
        load_latest_state(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("damage, named", [
    (lambda s: s["rng"].pop("noise"), "rng.noise"),
    (lambda s: s["stats"].pop("d_loss"), "stats.d_loss"),
    (lambda s: s["stats"].update(g_loss=s["stats"]["g_loss"][:2]), "stats.g_loss (one value"),
    (lambda s: s.pop("opt_d"), "opt_d"),
    (lambda s: s["ema"].pop("shadow"), "ema.shadow"),
])
def test_a_checkpoint_missing_part_of_its_state_is_refused_whole(tmp_path, data_dir, damage,
                                                                  named):
    """Checked whole before anything is restored: one line naming what is missing, never a
    raw KeyError or a resume into empty statistics rows; the run's files are untouched."""
    from dcgan.checkpoint import list_states

    from .conftest import one_line_error, run_cli, tiny_train_args

    out = tmp_path / "run"
    args = tiny_train_args(out, data_dir, epochs=1, max_steps=4, eval_every=0, sample_every=0)
    assert run_cli(args).returncode == 0
    (path,) = list_states(out)
    state = torch.load(path, weights_only=True)
    damage(state)
    save_torch(state, path)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    proc = run_cli([*args, "--set", "max_steps=8", "--resume"])
    assert proc.returncode == 1
    error = one_line_error(proc)
    assert f"checkpoint {path} is incomplete" in error and named in error, error
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_a_version_1_checkpoint_is_read_in_todays_layout(tmp_path):
    """Version 1 (before the model selection had a part of its own) kept the best generator
    and the candidates as top-level keys: read back, they sit in the selection's part."""
    from dcgan.checkpoint import SELECTION_KEY
    from dcgan.selection import best_weights

    best = {"w": torch.ones(3)}
    legacy = {"format": "dcgan-train-state", "version": 1, **_state(4), "best_generator": best,
              "candidates": [{"row": {"step": 4, "fid": 9.0}, "weights": best}]}
    save_torch(legacy, tmp_path / "old.pt")
    state = load_state(tmp_path / "old.pt")
    assert "best_generator" not in state and "candidates" not in state
    assert state[SELECTION_KEY]["candidates"][0]["row"] == {"step": 4, "fid": 9.0}
    assert torch.equal(best_weights(state)["w"], best["w"])
    # One written before any evaluation: no selection part at all.
    save_torch({**legacy, "best_generator": None, "candidates": []}, tmp_path / "none.pt")
    assert best_weights(load_state(tmp_path / "none.pt")) is None


@pytest.mark.slow  # trains: outside make test-fast
def test_a_run_resumes_from_a_version_1_checkpoint_and_keeps_its_best_generator(tmp_path,
                                                                               data_dir):
    """A run whose newest checkpoint is in the layout of the release before the model
    selection became a component (version 1) resumes through ``dcgan train --resume``; with
    evaluations off on the resume, the best generator is carried on, not dropped."""
    from dcgan.checkpoint import SELECTION_KEY
    from dcgan.selection import best_weights

    from .conftest import run_cli, tiny_train_args

    out = tmp_path / "run"
    args = tiny_train_args(out, data_dir, epochs=1, max_steps=4, eval_every=1,
                           eval_samples=129, rescore_top=2, sample_every=0)
    assert run_cli(args).returncode == 0
    path = list_states(out)[0]
    state = torch.load(path, weights_only=True)
    kept = state.pop(SELECTION_KEY)
    assert kept["best_generator"] is not None and kept["candidates"]
    save_torch({**state, "version": 1, **kept}, path)  # what version 1 wrote
    proc = run_cli([*args, "--set", "max_steps=8", "--set", "eval_every=0", "--resume"])
    assert proc.returncode == 0, proc.stderr
    resumed = load_state(list_states(out)[0])
    assert resumed["step"] == 8 and resumed["version"] == 2
    assert all(torch.equal(best_weights(resumed)[k], v) for k, v in kept["best_generator"].items())
    assert [c["row"] for c in resumed[SELECTION_KEY]["candidates"]] == [
        c["row"] for c in kept["candidates"]]
