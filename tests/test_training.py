"""End-to-end runs of ``dcgan train`` through the CLI, and loop behaviour in-process."""

from __future__ import annotations

import hashlib
import signal
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from dcgan import layout
from dcgan.checkpoint import list_states, load_state
from dcgan.config import load_config
from dcgan.errors import NonFiniteLossError, RunDirError
from dcgan.layout import STATS_FILE
from dcgan.models import Discriminator, Generator
from dcgan.run import train_local
from dcgan.stats import COLUMNS
from dcgan.step import gan_step
from dcgan.trainer import RESUME_LOCKED_KEYS

from .conftest import (
    HANG_GUARD_S,
    TINY,
    background,
    finish,
    one_line_error,
    run_cli,
    sets,
    tiny_train_args,
    wait_for_text,
)

pytestmark = pytest.mark.slow


def _digest(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def test_cli_run_produces_every_artifact(finished_run):
    out, proc = finished_run.out, finished_run.proc
    names = {p.name for p in out.iterdir()}
    expected = {"config.yaml", STATS_FILE, layout.GENERATOR_FINAL,
                layout.DISCRIMINATOR_FINAL, layout.FINAL_SAMPLES,
                "dcgan_generator_epoch_1.pth", "dcgan_discriminator_epoch_1.pth",
                "dcgan_generator_epoch_2.pth", "dcgan_discriminator_epoch_2.pth",
                "dcgan_samples_epoch_0_batch_0.png", "dcgan_samples_epoch_0_batch_4.png",
                "dcgan_samples_epoch_1_batch_0.png", "dcgan_samples_epoch_1_batch_4.png",
                "checkpoints"}
    assert expected <= names, expected - names
    # The seed's log line, every log_every batches.
    assert "[Epoch 0] [Batch 0/8] [D: " in proc.stdout
    assert "[Epoch 1] [Batch 6/8]" in proc.stdout and "[Real Acc: " in proc.stdout
    # Stats: one row per iteration with the documented columns.
    table = pq.read_table(out / STATS_FILE)
    assert table.column_names == list(COLUMNS)
    stats = table.to_pydict()
    assert stats["step"] == list(range(16))
    assert stats["epoch"] == [0] * 8 + [1] * 8 and stats["batch"] == list(range(8)) * 2
    assert all(0 <= a <= 1 for a in stats["d_real_acc"] + stats["d_fake_prob"])
    assert stats["time"] == sorted(stats["time"])
    # The seed's usage loads the final weights.
    g = Generator()
    g.load_state_dict(torch.load(out / layout.GENERATOR_FINAL, weights_only=True))
    d = Discriminator()
    d.load_state_dict(torch.load(out / layout.DISCRIMINATOR_FINAL, weights_only=True))
    # 64 samples as an 8x8 grid of 28x28 images with 2-pixel padding.
    assert Image.open(out / layout.FINAL_SAMPLES).size == (8 * 30 + 2, 8 * 30 + 2)
    # The full state resumes: every piece is there.
    state = load_state(list_states(out)[0])
    assert state["step"] == 16 and state["config"]["batch_size"] == 32


def test_the_trainers_own_state_keys_are_what_it_writes(finished_run):
    """``STATE_KEYS`` (what a restore never carries on as a callback's part) is exactly what
    the trainer writes beside the file's header and its callbacks' parts."""
    from dcgan.checkpoint import HEADER_KEYS, SELECTION_KEY
    from dcgan.trainer import STATE_KEYS

    state = load_state(list_states(finished_run.out)[0])
    assert set(state) == {*STATE_KEYS, *HEADER_KEYS, SELECTION_KEY}


def test_refuses_to_overwrite_a_run(finished_run, data_dir):
    out = finished_run.out
    before = _digest(out)
    proc = run_cli(tiny_train_args(out, data_dir))
    assert proc.returncode == 2
    assert "already holds a run" in one_line_error(proc)
    assert _digest(out) == before


def test_bad_config_with_overwrite_keeps_the_run(finished_run, data_dir):
    out = finished_run.out
    before = _digest(out)
    proc = run_cli([*tiny_train_args(out, data_dir), "--overwrite", "--set", "g_lr=0"])
    assert proc.returncode == 2 and "g_lr" in one_line_error(proc)
    assert _digest(out) == before


def _of_the_layout(run_dir: Path) -> list[str]:
    """Paths in ``run_dir`` that no entry of the layout names (besides the run's lock)."""
    ours = set(layout.run_artifacts(run_dir))
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.iterdir()
                  if p not in ours and p.name != layout.LOCK_FILE)


def test_overwrite_leaves_nothing_of_the_first_run(tmp_path, data_dir):
    """The layout names every file a run writes: a full run (evaluations, moving average,
    epoch weights, samples, a config change on resume, analyze) has nothing outside it, and
    an --overwrite with a short run that writes much less keeps none of it, while a file of
    the user's own stays."""
    out = tmp_path / "run"
    assert run_cli(tiny_train_args(out, data_dir, epochs=1)).returncode == 0
    resumed = run_cli([*tiny_train_args(out, data_dir, epochs=2, g_lr=0.0003), "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert run_cli(["analyze", "--out", str(out)]).returncode == 0
    assert _of_the_layout(out) == []
    written = {p.name for p in out.iterdir()}
    files = {e.name for e in layout.RUN_ENTRIES if "{" not in e.name}
    # All but distributed mode's own files: those three come with a Ray run (the distributed
    # tests check them); here, planted as a killed distributed run would leave them.
    local = files - {layout.TIMING_FILE, layout.WORKERS_FILE, layout.RAY_STORAGE_DIR}
    assert local <= written, local - written
    for name in (layout.TIMING_FILE, layout.WORKERS_FILE):
        (out / name).write_text("{}")
    (out / layout.RAY_STORAGE_DIR / "experiment").mkdir(parents=True)
    (out / f".{layout.STATS_FILE}.x1y2.tmp").write_bytes(b"killed mid-write")
    (out / "notes.txt").write_text("mine")
    first = _digest(out)

    short = tiny_train_args(out, data_dir, epochs=1, max_steps=2, sample_every=0,
                            checkpoint_every=0, eval_every=0, ema_decay=0)
    proc = run_cli([*short, "--overwrite"])
    assert proc.returncode == 0, proc.stderr
    after = _digest(out)
    assert after.pop("notes.txt") == first["notes.txt"]
    kept = {name for name, digest in after.items() if first.get(name) == digest}
    assert kept == set(), kept  # every file left is the second run's own
    # What the short run writes, and nothing else: no old samples, evaluations, best
    # generator or distributed leftovers.
    assert {p.name for p in out.iterdir()} == {
        layout.CONFIG_FILE, layout.STATS_FILE, layout.GENERATOR_FINAL,
        layout.DISCRIMINATOR_FINAL, layout.FINAL_SAMPLES, layout.ANALYSIS_FILE,
        layout.DIAGNOSTICS_FILE, layout.CHECKPOINT_DIR, layout.LOCK_FILE, "notes.txt"}
    # analyze reports this run's numbers only.
    analyzed = run_cli(["analyze", "--out", str(out)])
    assert analyzed.returncode == 0 and "Best generator" not in analyzed.stdout


def test_reference_lists_every_run_file():
    """docs/reference.md's table of run files names every entry of the layout."""
    text = (Path(__file__).parents[1] / "docs" / "reference.md").read_text()
    table = text[text.index("### Files in RUN_DIR"):]
    missing = [e.name for e in layout.RUN_ENTRIES if f"`{e.name}" not in table]
    assert missing == []


def test_resume_without_checkpoint(tmp_path, data_dir):
    proc = run_cli([*tiny_train_args(tmp_path / "nothing", data_dir), "--resume"])
    assert proc.returncode == 2 and "nothing to resume" in one_line_error(proc)
    (tmp_path / "empty").mkdir()
    proc = run_cli([*tiny_train_args(tmp_path / "empty", data_dir), "--resume"])
    assert proc.returncode == 1 and "no checkpoint" in one_line_error(proc)


def test_resume_from_corrupt_checkpoint_names_it(tmp_path, data_dir):
    out = tmp_path / "run"
    assert run_cli(tiny_train_args(out, data_dir, epochs=1, max_steps=3)).returncode == 0
    (ckpt,) = list_states(out)
    ckpt.write_bytes(ckpt.read_bytes()[:500])
    proc = run_cli([*tiny_train_args(out, data_dir, epochs=1), "--resume"])
    assert proc.returncode == 1
    assert f"{ckpt} is corrupt" in one_line_error(proc)


# A changed value for every key that cannot change on resume (dcgan.trainer.RESUME_LOCKED_KEYS).
LOCKED_CHANGES = {"batch_size": 16, "latent_dim": 64, "seed": 7, "train_subset": 128,
                  "loss": "hinge", "g_width": 2, "spectral_norm": True}


def test_every_resume_locked_key_is_tested():
    assert set(LOCKED_CHANGES) == set(RESUME_LOCKED_KEYS)


@pytest.mark.parametrize("key", sorted(LOCKED_CHANGES))
def test_resume_changing_a_locked_key_is_refused(finished_run, data_dir, key):
    """``dcgan train --resume --set KEY=...`` for each locked key: one line naming the key and
    both values, status 1, the run untouched."""
    out = finished_run.out
    before = _digest(out)
    saved = load_state(list_states(out)[0])["config"][key]
    new = LOCKED_CHANGES[key]
    proc = run_cli([*tiny_train_args(out, data_dir, **{key: new}), "--resume"])
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert (f"trained with {key}={saved!r}; it cannot be resumed with {key}={new!r}"
            in one_line_error(proc))
    assert _digest(out) == before


def test_resume_is_bit_exact(tmp_path, data_dir):
    """2N steps in one go == N steps, stop, resume to 2N: same weights, same stats rows.

    N = 5 is mid-epoch (8 batches/epoch) and the run crosses an epoch boundary, so data
    order, RNG states, optimizer moments and BatchNorm buffers all have to be restored."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    common = {"epochs": 2, "sample_every": 3, "checkpoint_every": 0}
    assert run_cli(tiny_train_args(straight, data_dir, max_steps=10, **common)).returncode == 0
    assert run_cli(tiny_train_args(split, data_dir, max_steps=5, **common)).returncode == 0
    proc = run_cli([*tiny_train_args(split, data_dir, max_steps=10, **common), "--resume"])
    assert proc.returncode == 0, proc.stderr
    assert "resuming at step 5" in proc.stdout

    for name in (layout.GENERATOR_FINAL, layout.DISCRIMINATOR_FINAL):
        a = torch.load(straight / name, weights_only=True)
        b = torch.load(split / name, weights_only=True)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}:{key} differs"
    sa, sb = pq.read_table(straight / STATS_FILE).to_pydict(), pq.read_table(
        split / STATS_FILE).to_pydict()
    for column in COLUMNS:
        if column != "time":  # wall-clock time is the one thing allowed to differ
            assert sa[column] == sb[column], column
    assert len(sb["step"]) == 10
    assert sb["time"][5] >= sb["time"][4]  # time continues across the resume


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_state_and_resumes(tmp_path, data_dir, sig, code):
    out, log = tmp_path / "run", tmp_path / "run.log"
    args = tiny_train_args(out, data_dir, epochs=50, log_every=1, checkpoint_every=0)
    with background(args, log) as proc:
        wait_for_text(log, "[Batch 3/8]", proc)  # training is well under way
        proc.send_signal(sig)
        status, text = finish(proc, log)
    assert status == code, text[-3000:]
    assert "Traceback" not in text
    assert f"{signal.Signals(sig).name} received: saving state" in text
    assert "Resume with: dcgan train --out" in text
    (ckpt,) = list_states(out)
    step = load_state(ckpt)["step"]
    rows = pq.read_table(out / STATS_FILE).to_pydict()
    assert rows["step"] == list(range(step))  # stats written up to the checkpoint
    assert not (out / layout.GENERATOR_FINAL).exists()

    proc = run_cli([*tiny_train_args(out, data_dir, epochs=1), "--resume"])
    assert proc.returncode == 0, proc.stderr
    assert (out / layout.GENERATOR_FINAL).exists()


def test_sigterm_during_the_final_evaluation_saves_and_exits(tmp_path, data_dir):
    """SIGTERM while the finished run scores its generators (here, rescoring twice with
    10,000 samples: many seconds of work on a CPU) is acted on at once: the state of the last
    step is saved, status 143, no final files; the same command then does the final
    evaluation and writes them."""
    out, log = tmp_path / "run", tmp_path / "run.log"
    args = tiny_train_args(out, data_dir, epochs=1, eval_samples=2000, rescore_samples=10000,
                           rescore_top=2, sample_every=0, checkpoint_every=0)
    with background(args, log) as proc:
        wait_for_text(log, "[Epoch 0] done", proc)  # the last step is behind it
        wait_for_text(log, "quality of EMA G", proc)  # the final rescoring runs now
        proc.send_signal(signal.SIGTERM)
        status, text = finish(proc, log)
    assert status == 143, text[-3000:]
    assert "Traceback" not in text and "Resume with: dcgan train --out" in text
    # The stop did not wait for the rescoring (docs/reliability.md: how fast it exits).
    assert "rescored with" not in text
    (ckpt,) = list_states(out)
    assert load_state(ckpt)["step"] == 8
    assert not (out / layout.GENERATOR_FINAL).exists()
    assert not (out / layout.BEST_SAMPLES).exists()

    resumed = run_cli([*args, "--resume"], timeout=HANG_GUARD_S)  # a loaded machine is slow
    assert resumed.returncode == 0, resumed.stderr
    assert "rescored with 10,000 samples" in resumed.stdout
    # The run's last line names the generator to use: the best one.
    assert resumed.stdout.splitlines()[-1].endswith(f"the best generator: "
                                                    f"{out / layout.BEST_GENERATOR}")
    for name in (layout.GENERATOR_FINAL, layout.BEST_SAMPLES, layout.DIAGNOSTICS_FILE):
        assert (out / name).exists(), name


def test_a_second_signal_stops_at_once(tmp_path, data_dir):
    """Ctrl-C twice: the first asks for a stop after the current step; the second, sent while
    that step runs (steps of 512 images take seconds on a CPU), stops at once: status 130,
    nothing saved, no resume hint."""
    out, log = tmp_path / "run", tmp_path / "run.log"
    args = tiny_train_args(out, data_dir, train_subset=2048, batch_size=512, epochs=50,
                           log_every=1, checkpoint_every=0, sample_every=0, eval_every=0)
    with background(args, log) as proc:
        wait_for_text(log, "[Epoch 0] [Batch 0/4]", proc)  # step 1 is running now
        proc.send_signal(signal.SIGINT)
        wait_for_text(log, "SIGINT received: saving state", proc)
        proc.send_signal(signal.SIGINT)
        status, text = finish(proc, log)
    assert status == 130, text[-3000:]
    assert text.rstrip().endswith("interrupted"), text[-3000:]
    assert "Traceback" not in text
    assert "Resume with" not in text and "[Epoch 0] [Batch 1/4]" not in text
    assert list_states(out) == []


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, data_dir):
    calls = {"n": 0}

    def poisoned_step(parts, real, z):
        calls["n"] += 1
        metrics = gan_step(parts, real, z)
        if calls["n"] >= 7:  # as if the losses had overflowed from step 6 on
            metrics = metrics.clone()
            metrics[0] = float("nan")
        return metrics

    out = tmp_path / "run"
    cfg = {**TINY, "data_dir": data_dir, "checkpoint_every_steps": 4, "checkpoint_every": 0}
    with pytest.raises(NonFiniteLossError) as info:
        train_local(out, overrides=sets(cfg)[1::2], step_fn=poisoned_step, progress=False)
    message = str(info.value)
    assert "non-finite loss at step 6" in message and "state_step_00000004.pt" in message
    assert [p.name for p in list_states(out)] == ["state_step_00000004.pt"]
    assert load_state(list_states(out)[0])["step"] == 4
    assert not (out / layout.GENERATOR_FINAL).exists()
    rows = pq.read_table(out / STATS_FILE).to_pydict()
    assert rows["step"][-1] >= 6  # the stats show where it diverged


def test_run_dir_that_is_a_file(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(RunDirError, match="not a directory"):
        train_local(target)


def test_a_change_on_resume_is_recorded_from_its_step(tmp_path, data_dir):
    """A finished run resumed with --set g_lr=...: config.yaml holds the new value and
    dcgan_config_changes.json says from which step it applies, so the run's files always say
    how its weights were trained."""
    import json

    out = tmp_path / "run"
    assert run_cli(tiny_train_args(out, data_dir, max_steps=2)).returncode == 0
    proc = run_cli([*tiny_train_args(out, data_dir, max_steps=4, g_lr=0.001), "--resume"])
    assert proc.returncode == 0, proc.stderr
    assert "Config changed on resume from step 2: " in proc.stdout
    history = json.loads((out / layout.CONFIG_CHANGES).read_text())
    assert history == [{"from_step": 2, "changes": {"g_lr": [0.0002, 0.001],
                                                    "max_steps": [2, 4]}}]
    assert load_config(out / layout.CONFIG_FILE).g_lr == 0.001
    again = run_cli([*tiny_train_args(out, data_dir, max_steps=4, g_lr=0.001), "--resume"])
    assert again.returncode == 0 and "Config changed" not in again.stdout  # nothing new
    assert len(json.loads((out / layout.CONFIG_CHANGES).read_text())) == 1
