"""Real load runs (each a few seconds): the CLI drives a tracker against a spawned emulator over
real sockets, and what it reports is checked against the emulator's own counts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest

from ciotrack.__main__ import main
from ciotrack.emulator import Emulator
from ciotrack.loadtest.cli import is_customer_io
from ciotrack.loadtest.report import SCHEMA_PATH

SITE, KEY = "lt-site", "lt-key-SECRET-41d0"
SHORT = ["--stage", "1s:300", "--stage", "2s:300", "--latency-ms", "20", "--plain"]


@pytest.fixture(autouse=True)
def _no_credentials_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CIOTRACK_SITE_ID", "CIOTRACK_API_KEY", "CIOTRACK_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)


def _report(path: Path) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(path.read_text())
    return report


def test_short_run_passes_and_its_report_matches_the_schema(tmp_path: Path) -> None:
    report_path, summary_path = tmp_path / "report.json", tmp_path / "summary.md"
    code = main(["loadtest", *SHORT, "--mix", "track=3,identify=1,page=1",
                 "--threshold", "errors:rate<0.01", "--threshold", "delivery_duration:p(95)<10000",
                 "--report", str(report_path), "--summary-md", str(summary_path)])
    assert code == 0
    report = _report(report_path)
    with open(SCHEMA_PATH, encoding="utf-8") as handle:
        jsonschema.validate(report, json.load(handle))
    totals = report["totals"]
    assert totals["calls"] == 750 and totals["dropped_iterations"] == 0
    assert totals["accepted"] == totals["delivered"] == 750
    assert totals["lost"] == 0 and totals["http_429"] == 0
    assert totals["receiver"]["operations"] == 750  # what the emulator stored, not what we think we sent
    assert totals["delivery_duration"]["count"] > 0 and totals["request_duration"]["count"] > 0
    # Every request takes the emulator's 20 ms, and a call is acknowledged only by a request sent
    # after it: a delivery shorter than that would mean the ordinal method resolved a sample early.
    assert totals["request_duration"]["min"] >= 20.0
    assert totals["delivery_duration"]["min"] >= 20.0
    assert [t["ok"] for t in report["thresholds"]] == [True, True]
    assert report["result"]["exit_code"] == 0 and report["result"]["status"] == "passed"
    assert len(report["intervals"]) >= 3
    assert sum(i["achieved_rate"] for i in report["intervals"]) == 750
    # The tracker sizes its own concurrency now: the load test leaves it alone and says so.
    assert report["config"]["senders"] is None and report["config"]["concurrency"].startswith("adaptive")
    assert "Little's law would give 4" in report["config"]["senders_note"]  # ceil(100 x 0.02 x 1.3) + 1
    assert "api_key" not in json.dumps(report["config"])
    summary = summary_path.read_text()
    assert "✓ | `errors: rate<0.01`" in summary and "passed (exit 0)" in summary


def test_a_failing_threshold_exits_99(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report_path = tmp_path / "report.json"
    code = main(["loadtest", *SHORT, "--senders", "3", "--threshold", "delivery_duration:p(95)<1",
                 "--report", str(report_path)])
    assert code == 99
    report = _report(report_path)
    assert report["result"]["status"] == "thresholds_failed"
    [threshold] = report["thresholds"]
    assert threshold["ok"] is False and threshold["value"] > 1
    assert report["config"]["senders"] == 3 and report["config"]["concurrency"] == "3 senders"
    assert report["totals"]["lost"] == 0
    assert "✗ delivery_duration: 'p(95)<1'" in capsys.readouterr().out


def test_an_abort_threshold_stops_the_run_early(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    code = main(["loadtest", "--stage", "0s:200", "--stage", "20s:200", "--latency-ms", "20", "--plain",
                 "--threshold", "delivery_duration:med<1:abort", "--report", str(report_path)])
    assert code == 99
    report = _report(report_path)
    assert report["result"]["status"] == "aborted"
    assert report["result"]["aborted_by"] == "delivery_duration:med<1:abort"
    assert report["totals"]["calls"] < 4000  # 20 s were planned


def test_receiver_down_mid_run_is_reported_and_nothing_is_lost(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    with Emulator.spawn(workspaces={SITE: KEY}) as emulator:
        def outage() -> None:
            time.sleep(1.0)
            emulator.set_faults(error_rate=1.0, error_statuses=[503])
            time.sleep(2.0)
            emulator.clear_faults()

        thread = threading.Thread(target=outage)
        thread.start()
        try:
            code = main(["loadtest", "--stage", "0s:300", "--stage", "4s:300", "--plain", "--endpoint", emulator.url,
                         "--site-id", SITE, "--api-key", KEY, "--expected-latency-ms", "5",
                         "--report", str(report_path)])
        finally:
            thread.join()
        stored = emulator.stats()["operations"]
    assert code == 0
    report = _report(report_path)
    totals = report["totals"]
    assert totals["requests"].get("503", 0) > 0 and totals["retries"] > 0
    assert any(i["requests"].get("503") for i in report["intervals"])
    assert totals["lost"] == 0 and totals["delivered"] == totals["calls"] == 1200
    assert stored == 1200
    assert report["config"]["target"]["kind"] == "endpoint"
    assert KEY not in report_path.read_text()


def test_real_workspace_is_refused_without_flag_and_credentials(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["loadtest", "--real", "--stage", "1s:10"]) == 104
    assert "--real needs the workspace's credentials" in capsys.readouterr().err
    code = main(["loadtest", "--endpoint", "https://track.customer.io", "--site-id", SITE, "--api-key", KEY,
                 "--stage", "1s:10"])
    assert code == 104
    err = capsys.readouterr().err
    assert "refusing to load-test a real workspace without --real" in err and KEY not in err


@pytest.mark.parametrize(("host", "real"), [
    ("track.customer.io", True), ("customer.io", True), ("track.customer.io.", True), ("Track-EU.Customer.IO..", True),
    ("customer.io.", True), ("127.0.0.1", False), ("customer.io.example.com", False), ("notcustomer.io", False),
])
def test_the_real_host_guard_sees_every_spelling_of_customer_io(host: str, real: bool) -> None:
    # Checked on the predicate, not through main(): a guard that let one through would load-test
    # the real host. main()'s use of it is covered above with the plain spelling.
    assert is_customer_io(urlsplit(f"https://{host}/").hostname or "") is real


def test_help_says_what_the_concurrency_options_do(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["loadtest", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    # The last mention of each option is its help entry (the first ones are in the usage line).
    senders = text[text.rindex("--senders SENDERS"):text.rindex("--expected-latency-ms")]
    assert "adaptive concurrency" in senders and "ceil(" not in senders
    latency = text[text.rindex("--expected-latency-ms EXPECTED_LATENCY_MS"):text.rindex("--max-queue-mb")]
    assert "it sets no concurrency" in latency


def test_fleet_target_with_an_unreachable_redis_is_a_target_failure(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["loadtest", "--redis-url", "redis://127.0.0.1:1/0", "--workers", "2", "--stage", "1s:10"])
    assert code == 100
    assert "the fleet target cannot use Redis at redis://127.0.0.1:1/0" in capsys.readouterr().err


def test_missing_extra_prints_an_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "ciotrack.loadtest.cli", raising=False)
    monkeypatch.setitem(sys.modules, "hdrh", None)  # as if hdrhistogram were not installed
    with pytest.raises(SystemExit) as info:
        main(["loadtest", "--stage", "1s:10"])
    assert "pip install 'ciotrack[loadtest]'" in str(info.value.code)


SCENARIOS = """
latency_ms = 20
customers = 500

[[scenario]]
name = "track"
stages = ["1s:200", "1s:200"]
mix = { track = 3, page = 1 }

[[scenario]]
name = "identify"
stages = ["0s:100", "2s:100"]
mix = { identify = 1 }
dedup_share = 0.25
"""


def test_plain_progress_lines_without_a_tty_with_a_scenario_file(tmp_path: Path) -> None:
    scenario_file = tmp_path / "scenarios.toml"
    scenario_file.write_text(SCENARIOS.replace("latency_ms = 20\n", ""))
    env = dict(os.environ)
    root = Path(__file__).resolve().parents[2] / "python"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH")) if p)
    report_path = tmp_path / "report.json"
    done = subprocess.run([sys.executable, "-m", "ciotrack", "loadtest", "--scenario", str(scenario_file),
                           "--latency-ms", "20", "--report", str(report_path)],
                          capture_output=True, env=env, timeout=60, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    progress = [line for line in lines if line.startswith("t=")]
    assert len(progress) >= 2 and "achieved=" in progress[0] and "late=" in progress[0]
    assert "█ TOTAL RESULTS" in done.stdout and "result: passed (exit 0)" in done.stdout
    assert "\x1b[" not in done.stdout  # no terminal control codes in a CI log
    totals = _report(report_path)["totals"]
    # Both scenarios ran (300 + 200 calls); the identify repeats were deduplicated, not lost.
    assert totals["calls"] == 500
    assert 20 <= totals["deduplicated"] <= 90
    assert totals["warm_up_calls"] == 16  # one identify per dedup customer, before the schedule starts
    assert totals["delivered"] == totals["accepted"] == 500 - totals["deduplicated"] + 16
    assert totals["lost"] == 0


def test_scenario_file_errors_name_the_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[scenario]]\nname = "x"\nstages = ["1s:10"]\nmix = { email = 1 }\n')
    assert main(["loadtest", "--scenario", str(bad)]) == 104
    assert "unknown call kinds in mix: email" in capsys.readouterr().err
    bad.write_text('[[scenario]]\nstages = ["1s:10"]\nrate = 5\n')
    assert main(["loadtest", "--scenario", str(bad)]) == 104
    assert "unknown keys rate" in capsys.readouterr().err


def test_live_display_on_a_terminal() -> None:
    import pty

    master, slave = pty.openpty()
    env = dict(os.environ, COLUMNS="100", TERM="xterm")
    root = Path(__file__).resolve().parents[2] / "python"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH")) if p)
    proc = subprocess.Popen([sys.executable, "-m", "ciotrack", "loadtest", "--stage", "1s:200", "--stage", "1s:200",
                             "--latency-ms", "20"], stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    chunks: list[bytes] = []

    def read() -> None:  # drain the terminal so the child never blocks on a full pty buffer
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        assert proc.wait(timeout=60) == 0
    finally:
        reader.join(10)
        os.close(master)
    output = b"".join(chunks).decode("utf-8", "replace")
    assert "\x1b[" in output  # rich redraws in place on a terminal
    assert "dropped_iterations" in output and "delivery" in output and "━" in output  # table and progress bar
    assert "result: passed (exit 0)" in output


def test_the_progress_lines_lateness_is_the_intervals_worst(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    # The live figure must not hide a late burst inside the second it reports: it is the interval's
    # worst lateness, the one the report and the plot carry (not whichever burst happened last).
    report_path = tmp_path / "report.json"
    assert main(["loadtest", "--stage", "0s:300", "--stage", "4s:300", "--latency-ms", "20", "--plain",
                 "--report", str(report_path)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("t=")]
    shown = [float(line.split("late=")[1].split("ms")[0]) for line in lines]
    intervals = _report(report_path)["intervals"]
    assert len(shown) == len(intervals) >= 4
    assert shown == [round(i["lateness_max_ms"], 1) for i in intervals]


def test_customers_is_the_number_of_distinct_people(tmp_path: Path) -> None:
    # --customers 6000 and 6000 identify calls: the receiver ends up with 6000 people (the call pool
    # once held 4096 prepared calls with random ids, so at most 4096, about 3,700, were ever used).
    report_path = tmp_path / "report.json"
    with Emulator.spawn(workspaces={SITE: KEY}) as emulator:
        code = main(["loadtest", "--stage", "0s:1500", "--stage", "4s:1500", "--mix", "identify=1",
                     "--customers", "6000", "--payload-bytes", "50", "--plain", "--endpoint", emulator.url,
                     "--site-id", SITE, "--api-key", KEY, "--expected-latency-ms", "5",
                     "--allow-dropped", "--report", str(report_path)])
        people = emulator.state()["people"]
    assert code == 0
    calls = _report(report_path)["totals"]["calls"]
    assert calls > 4096
    assert len(people) == calls  # each call a customer of its own, up to --customers
