"""Shared pieces of the pytest benchmarks in ``benches/``.

* Files named ``bench_*.py`` are collected (``python_files`` in pyproject.toml); ``make test`` runs
  only ``tests/`` (``testpaths``), never these.
* ``emulator``: the Customer.io emulator in a subprocess (its own GIL), one per session.
* ``sink``: the lean batch sink of the peer comparison, in a subprocess.
  Both receivers are pinned to the last CPU (``peers.measure.pin_receiver``): they stand in for a
  remote server and must not take the app thread's core.
* ``bench_report``: composite figures (per-call percentiles, events/s, CPU, RSS, slowdown) that
  pytest-benchmark's table cannot show. They are printed after the run, each with what it measures,
  and written to ``.benchmarks/figures-<time>.json``. Nothing here asserts on speed.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

BENCHES = Path(__file__).resolve().parent
ROOT = BENCHES.parent
if str(BENCHES) not in sys.path:
    sys.path.insert(0, str(BENCHES))

SITE_ID, API_KEY = "bench-site", "bench-key"


@dataclass
class Figure:
    section: str
    name: str
    value: str
    meaning: str


@dataclass
class BenchReport:
    """Collects composite figures during the session; printed by ``pytest_terminal_summary``."""

    figures: list[Figure] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)

    def add(self, section: str, name: str, value: str, meaning: str) -> None:
        self.figures.append(Figure(section, name, value, meaning))

    def keep(self, key: str, data: Any) -> None:
        """Raw numbers behind the figures, for the JSON file."""
        self.raw[key] = data


_REPORT = BenchReport()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--quick", action="store_true", default=False,
                     help="benches/: smaller counts (a smoke run of every figure, not a measurement)")


@pytest.fixture(scope="session")
def quick(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--quick"))


@pytest.fixture(scope="session")
def bench_report() -> BenchReport:
    return _REPORT


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if not _REPORT.figures:
        return
    write = terminalreporter.write_line
    terminalreporter.section("ciotrack figures (medians of one run; see benches/README.md)")
    section = None
    for figure in _REPORT.figures:
        if figure.section != section:
            section = figure.section
            write(f"[{section}]")
        write(f"  {figure.name:<44} {figure.value:>16}   {figure.meaning}")
    when = dt.datetime.now(dt.UTC)
    out = ROOT / ".benchmarks" / f"figures-{when:%Y%m%dT%H%M%S}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"when": when.isoformat(), "figures": [vars(f) for f in _REPORT.figures],
                               "raw": _REPORT.raw}, indent=1))
    write(f"figures written to {os.path.relpath(out)}")


@pytest.fixture(scope="session")
def emulator() -> Iterator[Any]:
    """The emulator in its own process, so its work never shares the benchmark's GIL."""
    from ciotrack.emulator import Emulator
    from peers.measure import pin_receiver

    handle = Emulator.spawn(workspaces={SITE_ID: API_KEY})
    pin_receiver(handle.pid)  # it stands in for a remote server: keep it off the app thread's core
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture(scope="session")
def sink() -> Iterator[Any]:
    from peers.measure import pin_receiver
    from peers.sink import SinkProcess

    with SinkProcess() as process:
        pin_receiver(process.pid)
        yield process
