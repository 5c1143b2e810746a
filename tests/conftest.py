"""Shared fixtures. MNIST comes from DCGAN_DATA_DIR (CI: ../shared/data, read-only) or, on a
machine with internet, is downloaded by torchvision into ./data on first use."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]

# A run small enough for tests: 256 images, 8 batches of 32 per epoch, on the CPU.
TINY = {"train_subset": 256, "batch_size": 32, "device": "cpu", "log_every": 2,
        "sample_every": 4, "checkpoint_every": 1, "epochs": 2, "eval_every": 1,
        "eval_samples": 200}


def sets(values: dict) -> list[str]:
    out: list[str] = []
    for key, value in values.items():
        out += ["--set", f"{key}={value}"]
    return out


@pytest.fixture(scope="session", autouse=True)
def cache_dir(tmp_path_factory) -> Path:
    """The suite's own cache (FID reference statistics), shared by every run it starts
    (CLI subprocesses and Ray workers inherit the environment), never the user's."""
    path = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DCGAN_CACHE_DIR", str(path))
        yield path


@pytest.fixture(scope="session")
def data_dir() -> str:
    from dcgan.data import load_mnist

    path = os.environ.get("DCGAN_DATA_DIR") or str(ROOT / "data")
    load_mnist(path)  # fails here, once, with a clear message if MNIST is unavailable
    return path


def run_cli(args: list[str], *, cwd: Path | None = None, env: dict | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m dcgan ARGS`` in a subprocess, as a user would run it."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "dcgan", *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=cwd or ROOT)


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    """The error a failed command printed; asserts it is exactly one line and no traceback."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: "), proc.stderr
    return lines[0]


def tiny_train_args(out: Path, data_dir: str, **overrides) -> list[str]:
    return ["train", "--out", str(out), "--no-progress",
            *sets({**TINY, "data_dir": data_dir, **overrides})]


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, data_dir) -> SimpleNamespace:
    """One tiny completed run (2 epochs of 8 steps), shared by read-only tests."""
    out = tmp_path_factory.mktemp("e2e") / "run"
    proc = run_cli(tiny_train_args(out, data_dir))
    assert proc.returncode == 0, proc.stderr
    return SimpleNamespace(out=out, proc=proc)
