"""A sink of the test's own (``dcgan.sinks``): registered with one line, with a flag of its own
(``--record-to FILE``), it writes what it receives to a file, and is fed in local,
distributed and search mode through the public commands, while no driver, worker or trial
knows it exists."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from dcgan.errors import DCGANError
from dcgan.trainer import Callback

from .conftest import (
    HANG_GUARD_S,
    ROOT,
    TINY,
    one_line_error,
    run_in_process,
    sets,
    tiny_train_args,
)


class RecordError(DCGANError):
    pass


def _append(path: str, entry: dict) -> None:
    with open(path, "a") as f:  # one write per line: processes may share the file
        f.write(json.dumps(entry) + "\n")


@dataclass(frozen=True)
class FileSink:
    path: str

    @staticmethod
    def add_args(p) -> None:
        p.add_argument("--record-to", metavar="FILE", help="record what the run reports")

    @classmethod
    def from_args(cls, args) -> FileSink | None:
        return cls(args.record_to) if args.record_to else None

    def check(self) -> None:
        if not Path(self.path).parent.is_dir():
            raise RecordError(f"--record-to {self.path}: no such folder")

    def open(self, run, stack: contextlib.ExitStack, write) -> FileFeed:
        _append(self.path, {"opened": run.mode, "run": run.name})
        stack.callback(_append, self.path, {"closed": run.mode})
        return FileFeed(self.path)


@dataclass(frozen=True)
class FileFeed:
    path: str

    def callback(self, trial: str) -> Callback:
        return Recorder(self.path, trial)

    def trial_config(self, trial: str, config: dict) -> None:
        _append(self.path, {"trial_config": trial, "g_lr": config["g_lr"]})


class Recorder(Callback):
    def __init__(self, path: str, trial: str):
        self.path, self.trial = path, trial

    def on_rows(self, trainer, rows) -> None:
        _append(self.path, {"rank": trainer.rank, "trial": self.trial,
                            "steps": [row["step"] for row in rows]})

    def on_train_end(self, trainer, outcome) -> None:
        _append(self.path, {"rank": trainer.rank, "trial": self.trial, "end": str(outcome),
                            "step": trainer.step})


# The registration, as a user's own package would make it before running the command. In a
# subprocess (the Ray commands), the feed travels to Ray workers pickled by value: they need
# not import the tests.
LAUNCH = """
import sys
import ray.cloudpickle
import dcgan.sinks
import tests.test_sinks as probe
ray.cloudpickle.register_pickle_by_value(probe)
dcgan.sinks.SINKS = (*dcgan.sinks.SINKS, probe.FileSink)
from dcgan.cli import main
sys.exit(main(sys.argv[1:]))
"""


def run_with_sink(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", LAUNCH, *args], capture_output=True,
                          text=True, timeout=HANG_GUARD_S, cwd=ROOT, env=env)


def entries(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def fed_steps(found: list[dict], **match) -> list[int]:
    return sorted(s for e in found if "steps" in e and all(e.get(k) == v for k, v in
                                                         match.items()) for s in e["steps"])


@pytest.fixture
def registered(monkeypatch):
    import dcgan.sinks

    monkeypatch.setattr(dcgan.sinks, "SINKS", (*dcgan.sinks.SINKS, FileSink))


@pytest.mark.slow  # trains: outside make test-fast
def test_a_new_sink_is_fed_in_local_mode(tmp_path, data_dir, registered):
    record = tmp_path / "record.jsonl"
    out = tmp_path / "run"
    proc = run_in_process([*tiny_train_args(out, data_dir, epochs=1, max_steps=6),
                           "--record-to", str(record)])
    assert proc.returncode == 0, proc.stderr
    found = entries(record)
    assert found[0] == {"opened": "local", "run": "run"} and found[-1] == {"closed": "local"}
    assert fed_steps(found, rank=0, trial="") == list(range(6))
    assert {"rank": 0, "trial": "", "end": "completed", "step": 6} in found


def test_a_new_sinks_bad_input_is_refused_before_anything_is_written(tmp_path, data_dir,
                                                                       registered):
    out = tmp_path / "run"
    proc = run_in_process([*tiny_train_args(out, data_dir),
                           "--record-to", str(tmp_path / "missing" / "record.jsonl")])
    assert proc.returncode != 0
    assert "--record-to" in one_line_error(proc) and "no such folder" in proc.stderr
    assert not out.exists()


def test_the_flag_exists_only_once_the_sink_is_registered(tmp_path):
    """Without the registration the command refuses the flag."""
    proc = run_in_process(["train", "--out", str(tmp_path / "run"), "--record-to", "x"])
    assert proc.returncode == 2 and "--record-to" in proc.stderr


def test_a_new_sink_is_fed_in_distributed_mode(tmp_path, data_dir, ray_head):
    record = tmp_path / "record.jsonl"
    small = {**TINY, "data_dir": data_dir, "epochs": 1, "max_steps": 6, "sample_every": 0,
             "eval_every": 0}
    proc = run_with_sink(["train-distributed", "--out", str(tmp_path / "run"), "--workers", "2",
                          "--use-gpu", "false", "--address", ray_head.address, *sets(small),
                          "--record-to", str(record)], ray_head.env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    found = entries(record)
    assert found[0] == {"opened": "distributed", "run": "run"}
    assert found[-1] == {"closed": "distributed"}
    for rank in (0, 1):  # every worker feeds it, from its own process
        assert fed_steps(found, rank=rank) == list(range(6)), rank
        assert {"rank": rank, "trial": "", "end": "completed", "step": 6} in found


def test_a_new_sink_is_fed_in_search_mode(tmp_path, data_dir, ray_head):
    record = tmp_path / "record.jsonl"
    space = tmp_path / "space.yaml"
    space.write_text("g_lr: {choice: [2.0e-4, 4.0e-4]}\n")
    base = {"train_subset": 256, "batch_size": 32, "device": "cpu", "log_every": 2,
            "eval_samples": 200, "rescore_samples": 300, "data_dir": data_dir, "seed": 1}
    proc = run_with_sink(["tune", "--out", str(tmp_path / "search"), "--space", str(space),
                          "--address", ray_head.address, "--trials", "2", "--max-concurrent",
                          "1", "--budget-steps", "8", "--min-classes", "1", "--scheduler",
                          "fifo", "--use-gpu", "false", *sets(base), "--record-to",
                          str(record)], ray_head.env)
    found = entries(record)  # the guard may fail such short trials: the feed is the point
    assert found[0] == {"opened": "tune", "run": "search"}, proc.stderr[-3000:]
    assert found[-1] == {"closed": "tune"}
    trials = [e["trial_config"] for e in found if "trial_config" in e]
    assert len(set(trials)) == 2
    for trial in trials:  # each trial feeds it from its own process, labelled
        assert fed_steps(found, rank=0, trial=trial) == list(range(8)), trial
        assert {"rank": 0, "trial": trial, "end": "completed", "step": 8} in found
