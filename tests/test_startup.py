"""The CLI starts fast: its help, its version and `dcgan config` import no torch, Ray,
matplotlib or numpy (each command imports those where its work is done). Checked in a fresh
interpreter through the real entry point, by what it imported, not by a timing."""

from __future__ import annotations

import json
import subprocess
import sys

from .conftest import ROOT

HEAVY = ("torch", "torchvision", "ray", "matplotlib", "numpy", "pyarrow", "prometheus_client")

# Every subcommand's --help (nested ones too), --help, --version and `dcgan config`, each
# parsed by the real parser; after each, the heavy modules the process has imported so far.
_PROBE = """
import argparse, contextlib, io, json, sys
from dcgan.cli import build_parser, main

HEAVY = {heavy!r}

def commands(parser, prefix=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name)
                yield from commands(sub, (*prefix, name))

calls = [["--help"], ["--version"], ["config"]]
calls += [[*c, "--help"] for c in commands(build_parser())]
seen = []
for argv in calls:
    with contextlib.redirect_stdout(io.StringIO()) as out:
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
    seen.append({{"argv": argv, "code": code, "printed": len(out.getvalue()),
                  "heavy": sorted(m for m in HEAVY if m in sys.modules)}})
print(json.dumps(seen))
"""


def test_help_version_and_config_import_nothing_heavy():
    proc = subprocess.run([sys.executable, "-c", _PROBE.format(heavy=HEAVY)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    commands = {" ".join(s["argv"][:-1]) for s in seen if s["argv"][-1] == "--help"}
    # The wings' commands are there (registered through entry points), nested ones too.
    assert {"train", "train-distributed", "tune", "bench-quality", "classifier train"} <= commands
    for s in seen:
        assert s["code"] in (0, None) and s["printed"] > 0, s
        assert s["heavy"] == [], f"dcgan {' '.join(s['argv'])} imported {s['heavy']}"


def test_the_probe_sees_a_heavy_import():
    """The check above can fail: a command that does import torch is seen doing so."""
    proc = subprocess.run([sys.executable, "-c", "import sys, dcgan.models; "
                           f"print([m for m in {HEAVY!r} if m in sys.modules])"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert "torch" in proc.stdout, proc.stdout + proc.stderr
