"""The test suite's time by file, from a pytest run's JUnit XML, into docs.

    python -m pytest ... --junitxml=/tmp/suite.xml
    python -m dcgan_benchmarks.suite_times /tmp/suite.xml --name after --note "..."

records the run under NAME in ``docs/results/suite-times.json`` (per file: tests, seconds,
failures; the total; the 25 slowest tests) and regenerates the table between the markers in
docs/testing.md from every run recorded there, so no figure in it is copied by hand
(tests/test_docs.py checks that the page holds what this renders).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results" / "suite-times.json"
PAGE = ROOT / "docs" / "testing.md"
BEGIN, END = "<!-- suite-times:begin -->", "<!-- suite-times:end -->"
SLOWEST = 25


def read_junit(path: Path) -> dict:
    """Per test file: tests, seconds (setup, call and teardown), failures; the slowest tests."""
    root = ET.parse(path).getroot()
    files: dict[str, dict] = {}
    cases = []
    for case in root.iter("testcase"):
        # classname is "tests.test_x" or "tests.test_x.TestClass": the file is its first two.
        parts = case.get("classname", "").split(".")
        name = f"{parts[1]}.py" if len(parts) > 1 else parts[0]
        seconds = float(case.get("time", 0))
        entry = files.setdefault(name, {"tests": 0, "seconds": 0.0, "failed": 0, "skipped": 0})
        entry["tests"] += 1
        entry["seconds"] += seconds
        entry["failed"] += any(c.tag in ("failure", "error") for c in case)
        entry["skipped"] += any(c.tag == "skipped" for c in case)
        cases.append((seconds, f"{name}::{case.get('name')}"))
    for entry in files.values():
        entry["seconds"] = round(entry["seconds"], 1)
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    wall = float(suite.get("time", 0)) if suite is not None else sum(c[0] for c in cases)
    cases.sort(reverse=True)
    return {"wall_s": round(wall, 1), "tests": len(cases),
            "failed": sum(e["failed"] for e in files.values()),
            "files": dict(sorted(files.items())),
            "slowest": [{"test": t, "seconds": round(s, 1)} for s, t in cases[:SLOWEST]]}


def render(recorded: dict) -> str:
    """The by-file table (one column per recorded run), then each run's note."""
    names = list(recorded)
    files = sorted({f for run in recorded.values() for f in run["files"]})
    head = "| file | " + " | ".join(f"{n}: tests | {n}: s" for n in names) + " |"
    rule = "|---|" + "---:|---:|" * len(names)
    rows = [head, rule]
    for f in files:
        cells = []
        for n in names:
            e = recorded[n]["files"].get(f)
            cells += [str(e["tests"]), f"{e['seconds']:,.1f}"] if e else ["", ""]
        rows.append(f"| `{f}` | " + " | ".join(cells) + " |")
    total = []
    for n in names:
        run = recorded[n]
        total += [f"**{run['tests']}**", f"**{run['wall_s']:,.0f}**"]
    rows.append("| **whole run (wall)** | " + " | ".join(total) + " |")
    notes = [f"- **{n}** ({recorded[n]['date']}): {recorded[n]['note']}"
             + (f" ({recorded[n]['failed']} tests failed in this run.)"
                if recorded[n]["failed"] else "") for n in names]
    return "\n".join(rows + [""] + notes)


def update_page(recorded: dict, page: Path = PAGE) -> None:
    text = page.read_text()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    page.write_text(text[:start] + "\n" + render(recorded) + "\n" + text[end:])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dcgan_benchmarks.suite_times",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("junit", type=Path, help="the JUnit XML of a pytest run (--junitxml)")
    p.add_argument("--name", required=True, help="the run's column (e.g. before, after)")
    p.add_argument("--note", default="", help="what ran, on what machine, what else ran")
    p.add_argument("--date", default=dt.date.today().isoformat())
    args = p.parse_args(argv)
    try:
        run = read_junit(args.junit)
    except (OSError, ET.ParseError) as e:
        print(f"error: cannot read {args.junit} as JUnit XML: {e}", file=sys.stderr)
        return 1
    recorded = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    recorded[args.name] = {**run, "date": args.date, "note": args.note}
    RESULTS.write_text(json.dumps(recorded, indent=2) + "\n")
    update_page(recorded)
    print(f"{args.name}: {run['tests']} tests, {run['wall_s']:,.0f} s; wrote {RESULTS} and "
          f"the table in {PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
