"""The import layering of docs/architecture.md, read from the source with ``ast``: every import,
at module level or inside a function, points to the module's own layer or one below it, the
core never imports Ray, and no two modules import each other, directly or around a loop."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from dcgan import layout

from .conftest import TINY, sets

ROOT = Path(__file__).resolve().parents[1]
# Folder -> the package name Python sees (pyproject.toml maps them).
PACKAGES = {"dcgan": "dcgan", "cluster": "dcgan_cluster", "tune": "dcgan_tune",
            "benchmarks": "dcgan_benchmarks"}
# Top first. The CLI lives in the core's folder but sits above everything it dispatches to.
LAYERS = ("cli", "benchmarks", "tune", "cluster", "core")
CLI_MODULES = {"dcgan.cli", "dcgan.__main__"}


def layer_of(module: str) -> str:
    if module in CLI_MODULES:
        return "cli"
    top = module.split(".")[0]
    return {"dcgan": "core", "dcgan_cluster": "cluster", "dcgan_tune": "tune",
            "dcgan_benchmarks": "benchmarks"}[top]


def modules() -> dict[str, Path]:
    found = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join((package, *parts))] = path
    return found


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Every module ``path`` imports (``from a import b`` counts as a.b when that is a
    module)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                out.add(full if full in known else node.module)
    return out


def first_party_graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: {m for m in imports_of(path, known) if m in known and m != name}
            for name, path in found.items()}


def layering_violations(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for src, targets in graph.items():
        for dst in targets:
            if LAYERS.index(layer_of(dst)) < LAYERS.index(layer_of(src)):
                bad.append(f"{src} ({layer_of(src)}) imports {dst} ({layer_of(dst)})")
    return sorted(bad)


def import_loops(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    loops: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                loops.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return loops


def test_the_packages_are_found():
    graph = first_party_graph()
    assert {"dcgan.trainer", "dcgan.assembly", "dcgan_cluster.worker", "dcgan_tune.trial",
            "dcgan_benchmarks.throughput", "dcgan.cli"} <= set(graph)
    assert "dcgan.assembly" in graph["dcgan_cluster.worker"]


def test_every_import_points_down_or_sideways():
    assert layering_violations(first_party_graph()) == []


def test_no_import_loops():
    assert import_loops(first_party_graph()) == []


def test_the_core_never_imports_ray():
    found = modules()
    for name, path in found.items():
        if layer_of(name) == "core":
            ray = {m for m in imports_of(path, set(found)) if m.split(".")[0] == "ray"}
            assert not ray, f"{name} imports {sorted(ray)}"


@pytest.mark.parametrize(("graph", "expected"), [
    ({"dcgan.a": {"dcgan_cluster.w"}, "dcgan_cluster.w": set()},
     ["dcgan.a (core) imports dcgan_cluster.w (cluster)"]),
    ({"dcgan_cluster.w": {"dcgan_tune.t"}, "dcgan_tune.t": {"dcgan_cluster.w"}},
     ["dcgan_cluster.w (cluster) imports dcgan_tune.t (tune)"]),
    ({"dcgan_tune.t": {"dcgan_cluster.w", "dcgan.a"}, "dcgan_cluster.w": {"dcgan.a"},
      "dcgan.a": set(), "dcgan.cli": {"dcgan_tune.t"}}, []),
])
def test_the_checker_catches_an_upward_import(graph, expected):
    assert layering_violations(graph) == expected


def test_the_checker_catches_a_loop():
    graph = {"dcgan.a": {"dcgan.b"}, "dcgan.b": {"dcgan.c"}, "dcgan.c": {"dcgan.a"},
             "dcgan.d": {"dcgan.a"}}
    assert import_loops(graph) == [["dcgan.a", "dcgan.b", "dcgan.c"]]


def test_the_core_cli_names_no_wing():
    """The wings register their subcommands through entry points (pyproject.toml)."""
    graph = first_party_graph()
    for module in CLI_MODULES & set(graph):
        assert {layer_of(m) for m in graph[module]} <= {"core", "cli"}, graph[module]


@pytest.mark.slow  # trains: outside make test-fast
def test_the_core_imports_and_trains_without_ray(tmp_path, data_dir):
    """With ``ray`` made unimportable, every core module imports, ``dcgan --help`` lists the
    core commands, and a wing command fails with one line naming Ray."""
    import subprocess
    import sys

    script = """
import importlib, pkgutil, sys
sys.modules["ray"] = None  # any `import ray` now raises ModuleNotFoundError
import dcgan
for info in pkgutil.iter_modules(dcgan.__path__):
    importlib.import_module(f"dcgan.{info.name}")
from dcgan.cli import main
code = main(sys.argv[1:])
sys.exit(code)
"""
    run = lambda *args: subprocess.run([sys.executable, "-c", script, *args],  # noqa: E731
                                       capture_output=True, text=True, timeout=300)
    helped = run("--help")
    assert helped.returncode == 0, helped.stderr
    assert "train" in helped.stdout and "analyze" in helped.stdout
    trained = run("train", "--out", str(tmp_path / "local"), "--no-progress",
                  *sets({**TINY, "data_dir": data_dir, "max_steps": 2}))
    assert trained.returncode == 0, trained.stderr
    assert (tmp_path / "local" / layout.GENERATOR_FINAL).is_file()
    wing = run("train-distributed", "--out", str(tmp_path / "r"), "--workers", "1",
               "--set", f"data_dir={data_dir}", "--set", "train_subset=64")
    assert wing.returncode == 2, wing.stderr
    assert wing.stderr.strip().splitlines() == [
        "error: dcgan train-distributed needs Ray, which is not installed here "
        "(pip install 'ray[default,train,tune]==2.60.0')"]


def test_a_worker_spec_says_its_mode():
    """Workers get a typed spec: a training run names its run directory, a trial its report
    and no directory; a spec survives pickling (Ray ships it to every worker)."""
    import pickle

    from dcgan.config import TrainConfig
    from dcgan_cluster.worker import WorkerSpec

    cfg = TrainConfig().to_dict()
    spec = WorkerSpec("train", cfg, run_dir="/tmp/run", threads=2)
    assert pickle.loads(pickle.dumps(spec)) == spec
    assert spec.as_loop_config() == {"spec": spec}
    with pytest.raises(ValueError, match="run_dir"):
        WorkerSpec("train", cfg)
    with pytest.raises(ValueError, match="writes no run_dir"):
        WorkerSpec("trial", cfg, run_dir="/tmp/run", report=len)
    assert WorkerSpec("trial", cfg, report=len, quality_every_steps=5).run_dir is None
