"""How a run ends (interrupted by a signal, or its drain cut short) and what its report says then:
real `ciotrack loadtest` processes against the spawned emulator, signalled once their first progress
line is out."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "python"), env.get("PYTHONPATH")) if p)
    for name in ("CIOTRACK_SITE_ID", "CIOTRACK_API_KEY", "CIOTRACK_ENDPOINT"):
        env.pop(name, None)
    return env


def _signalled_run(tmp_path: Path, signum: int, *args: str) -> tuple[int, str, dict[str, Any]]:
    """Start a load test, send ``signum`` once its first interval's line is printed, return its exit
    code, its output and its report."""
    report_path = tmp_path / "report.json"
    proc = subprocess.Popen([sys.executable, "-m", "ciotrack", "loadtest", *args, "--plain",
                             "--report", str(report_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
    assert proc.stdout is not None
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("t="):
                proc.send_signal(signum)
                break
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = "".join(seen) + rest
    assert report_path.exists(), output
    report: dict[str, Any] = json.loads(report_path.read_text())
    return proc.returncode, output, report


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, str, dict[str, Any]]:
    # 1000 calls/s, every call sampled (1000 samples/s): calls and acknowledgements keep coming
    # between the sampler's last poll and the end of the run.
    return _signalled_run(tmp_path_factory.mktemp("interrupted"), signal.SIGINT,
                          "--stage", "0s:1000", "--stage", "60s:1000", "--latency-ms", "50")


def test_an_interrupted_run_keeps_its_last_samples_in_the_totals(
        interrupted: tuple[int, str, dict[str, Any]]) -> None:
    code, output, report = interrupted
    assert code == 105, output
    assert report["result"]["status"] == "interrupted"
    sampling, totals = report["delivery_sampling"], report["totals"]
    assert sampling["unresolved"] == 0 and totals["lost"] == 0  # close() delivered the rest
    # Every sampled call's enqueue time, and every resolved sample's delivery time, is in the run's
    # histograms (the samples taken or resolved after the last 1 s interval closed, too).
    assert totals["enqueue_duration"]["count"] == sampling["samples"]
    assert totals["delivery_duration"]["count"] == sampling["resolved"]


def test_an_interrupted_runs_achieved_rate_is_over_the_time_it_ran(
        interrupted: tuple[int, str, dict[str, Any]]) -> None:
    _, output, report = interrupted
    totals = report["totals"]
    # A constant 1000 calls/s: the generator runs a call only once it is due, so it cannot have
    # made more than 1000 per second of the time it ran (which ended with the signal, not on the
    # last whole-second interval).
    assert totals["calls"] > 1000  # it was signalled after the first interval closed
    assert 0 < totals["achieved_rate"] <= 1000.0, totals
    assert f"{totals['achieved_rate']:,.0f}/s over" in output


def test_sigterm_ends_the_run_like_ctrl_c(tmp_path: Path) -> None:
    # A CI job cancelled, `timeout`, `kill`: the run stops, writes its report and stops what it
    # started (the emulator here; a fleet's workers and redis-server), exit 105 as k6's external abort.
    code, output, report = _signalled_run(tmp_path, signal.SIGTERM,
                                          "--stage", "0s:200", "--stage", "60s:200", "--latency-ms", "20")
    assert code == 105, output
    assert report["result"]["status"] == "interrupted"
    assert report["totals"]["lost"] == 0 and report["totals"]["calls"] < 12_000
    assert "result: interrupted (exit 105)" in output
