"""Docs that cannot drift: a headline figure in README.md or docs/ is tagged with the results
file it comes from, ``17.26<!-- fig: losses-3000-steps.json runs.0.fid -->`` (the comment
is invisible when rendered), and this test reads every tagged figure and compares it with
that file in docs/results/, at the precision the text shows. Figures without a results file
name the command and date that made them instead."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
TAG = re.compile(r"(-?[\d,]*\d(?:\.\d+)?)\**\s*<!--\s*fig:\s*(\S+)\s+(\S+)\s*-->", re.S)


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def tagged() -> list[tuple[str, str, str, str]]:
    found = []
    for page in pages():
        for shown, file, path in TAG.findall(page.read_text()):
            found.append((page.name, shown, file, path))
    return found


def lookup(data, path: str):
    for part in path.split("."):
        data = data[int(part)] if isinstance(data, list) else data[part]
    return data


def test_the_front_page_shows_its_figures_from_results_files():
    readme = [t for t in tagged() if t[0] == "README.md"]
    assert len(readme) >= 5, readme
    assert (ROOT / "docs" / "images" / "digits.png").is_file()
    assert "docs/images/digits.png" in (ROOT / "README.md").read_text()


def test_the_front_page_is_short():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200, len(lines)


@pytest.mark.parametrize("page, shown, file, path", tagged())
def test_a_tagged_figure_equals_its_results_file(page, shown, file, path):
    source = RESULTS / file
    assert source.is_file(), f"{page}: {file} is not in docs/results/"
    value = lookup(json.loads(source.read_text()), path)
    digits = len(shown.split(".")[1]) if "." in shown else 0
    number = float(shown.replace(",", ""))
    assert round(float(value), digits) == pytest.approx(number, abs=10 ** -(digits + 3)), (
        f"{page} shows {shown} for {file} {path}, which holds {value}")


def test_the_tag_reader_reads_what_it_should(tmp_path):
    text = "FID **7.96**<!-- fig: a.json x.0.fid --> and 5,530<!--\n fig: a.json y -->"
    assert TAG.findall(text) == [("7.96", "a.json", "x.0.fid"), ("5,530", "a.json", "y")]
    assert lookup({"x": [{"fid": 7.96}]}, "x.0.fid") == 7.96


def _named(doc: str, items: list[str]) -> list[str]:
    text = (ROOT / "docs" / doc).read_text()
    return [item for item in items if item not in text]


def test_every_module_is_in_the_architecture_page():
    modules = []
    for folder in ("dcgan", "cluster", "tune", "benchmarks"):
        modules += [p.name for p in sorted((ROOT / folder).rglob("*.py"))
                    if p.name != "__init__.py"]
    assert _named("architecture.md", modules) == []


def test_every_test_file_is_in_the_testing_page():
    files = [p.name for p in sorted((ROOT / "tests").glob("test_*.py"))]
    assert _named("testing.md", files) == []


def test_every_exported_metric_is_in_the_monitoring_page():
    from dcgan.monitoring import MetricsExporter

    names = sorted({m.name for m in MetricsExporter("r", "local", {}).registry.collect()})
    assert names and _named("monitoring.md", names) == []


def test_the_suite_times_table_is_the_generators_output():
    """docs/testing.md's time-by-file table is what benchmarks/suite_times.py renders from
    docs/results/suite-times.json: no figure in it is copied by hand."""
    from dcgan_benchmarks.suite_times import BEGIN, END, RESULTS, render

    recorded = json.loads(RESULTS.read_text())
    assert {"before", "after"} <= set(recorded)
    page = (ROOT / "docs" / "testing.md").read_text()
    table = page[page.index(BEGIN) + len(BEGIN):page.index(END)].strip()
    assert table == render(recorded).strip()


def test_suite_times_reads_a_junit_report(tmp_path):
    from dcgan_benchmarks.suite_times import read_junit

    xml = tmp_path / "j.xml"
    xml.write_text('<testsuites><testsuite time="12.5">'
                   '<testcase classname="tests.test_a" name="t1" time="2.0"/>'
                   '<testcase classname="tests.test_a" name="t2" time="3.5"><failure/></testcase>'
                   '<testcase classname="tests.test_b.TestX" name="t3" time="7.0"/>'
                   '</testsuite></testsuites>')
    run = read_junit(xml)
    assert run["wall_s"] == 12.5 and run["tests"] == 3 and run["failed"] == 1
    assert run["files"]["test_a.py"] == {"tests": 2, "seconds": 5.5, "failed": 1, "skipped": 0}
    assert run["slowest"][0] == {"test": "test_b.py::t3", "seconds": 7.0}


# -- every documented command line names flags the command has ---------------------------------

COMMAND_PAGES = ("README.md", *sorted(str(p.relative_to(ROOT))
                                      for p in (ROOT / "docs").glob("*.md")))


def documented_commands(text: str) -> list[list[str]]:
    """The ``dcgan ...`` command lines of a page's bash blocks, continuation lines joined and
    comments dropped, as argument lists (without the program name)."""
    import shlex

    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            match = re.match(r"^(?:\.venv/bin/)?dcgan\s+(.*)$", line)
            if match:  # a synopsis's [--optional FLAG]: the flag is checked too
                commands.append(shlex.split(re.sub(r"[\[\]]", " ", match.group(1))))
    return commands


def _subcommands(parser) -> dict:
    import argparse

    return next((a.choices for a in parser._actions
                 if isinstance(a, argparse._SubParsersAction)), {})


def unknown_flags(args: list[str]) -> list[str]:
    """The flags of ``dcgan ARGS`` that its (sub)command does not have, and an unknown
    command as such: what a renamed or removed flag leaves behind in the docs."""
    from dcgan.cli import build_parser

    parser = build_parser()
    rest = list(args)
    while rest and not rest[0].startswith("-") and _subcommands(parser):
        commands = _subcommands(parser)
        if rest[0] not in commands:
            return [f"command {rest[0]}"]
        parser = commands[rest.pop(0)]
    flags = {f.split("=")[0] for f in rest if f.startswith("--")}
    return sorted(f for f in flags if f not in parser._option_string_actions)


@pytest.mark.parametrize("page", COMMAND_PAGES)
def test_every_documented_command_line_uses_flags_the_command_has(page):
    commands = documented_commands((ROOT / page).read_text())
    if page in ("README.md", "docs/reference.md"):
        assert len(commands) >= 5, page  # the examples were found
    wrong = {" ".join(c): bad for c in commands if (bad := unknown_flags(c))}
    assert wrong == {}


def test_the_flag_check_sees_a_renamed_flag():
    assert unknown_flags(["train", "--out", "r", "--output", "x"]) == ["--output"]
    assert unknown_flags(["sample", "--generator", "g", "--image", "x.png"]) == []
    assert unknown_flags(["classifier", "train", "--epoch", "3"]) == ["--epoch"]
    assert unknown_flags(["trian", "--out", "r"]) == ["command trian"]
