"""``ciotrack doctor`` against the emulator (healthy, wrong key, wrong region, a redirect, latency, a
skewed clock), a real redis-server (healthy, evicting, no AOF) and a read-only spool directory.

Each finding must appear with its advice; the JSON report validates against its schema; exit codes
as documented (0 nothing failed, 1 a failure, or a warning with --strict).
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest

from ciotrack.doctor import SCHEMA, Report, diagnose
from ciotrack.emulator import Emulator

from conftest import API_KEY, SITE_ID

ENV = {"NO_PROXY": "127.0.0.1,localhost"}


def _doctor(emulator: Emulator, **options: Any) -> Report:
    options.setdefault("site_id", SITE_ID)
    options.setdefault("api_key", API_KEY)
    options.setdefault("endpoint", emulator.url)
    return diagnose(options, timeout=5.0, environ=ENV)


def _by_name(report: Report) -> dict[str, Any]:
    return {c.name: c for c in report.checks}


def test_healthy_integration_passes(emulator: Emulator) -> None:
    report = _doctor(emulator)
    checks = _by_name(report)
    for name in ("config", "dns", "proxy", "tls", "redirect", "credentials", "region", "clock", "latency",
                 "throughput", "python", "process"):
        assert checks[name].status == "ok", checks[name]
    assert not report.failed()
    assert report.failed(strict=True)  # no spool_dir is a warning
    jsonschema.validate(report.as_dict(), SCHEMA)
    # Never an event: every request was the read-only region lookup.
    assert {r["path"] for r in emulator.requests()} == {"/api/v1/accounts/region"}
    assert emulator.stats()["operations"] == 0


def test_wrong_key_fails_with_advice_and_never_shows_the_key(emulator: Emulator) -> None:
    secret = "wrong-key-SECRET-77"
    report = _doctor(emulator, api_key=secret)
    check = _by_name(report)["credentials"]
    assert check.status == "fail" and "401" in check.detail
    assert "CIOTRACK_API_KEY" in check.advice and "Track API key" in check.advice
    assert report.failed()
    assert secret not in report.render() and secret not in report.to_json() and secret not in repr(report)


def test_wrong_region_is_a_failure_with_the_setting_to_use() -> None:
    with Emulator(workspaces={SITE_ID: API_KEY}, region="eu") as eu:
        report = _doctor(eu, region="us")
    check = _by_name(report)["region"]
    assert check.status == "fail" and "'eu'" in check.detail
    assert "region='eu'" in check.advice and "CIOTRACK_REGION=eu" in check.advice
    assert report.recommended["region"] == "eu"


def test_a_redirect_is_reported_with_its_location_and_never_followed(emulator: Emulator) -> None:
    emulator.set_faults(redirect_to="https://login.proxy.invalid")
    report = _doctor(emulator)
    check = _by_name(report)["redirect"]
    assert check.status == "fail"
    assert "301" in check.detail and "https://login.proxy.invalid/api/v1/accounts/region" in check.detail
    assert "credentials" not in _by_name(report)  # nothing was sent on to the redirect target
    assert emulator.stats()["faults"]["redirect"] == 1


def test_latency_sets_the_recommended_concurrency(emulator: Emulator) -> None:
    emulator.set_faults(latency=0.2)
    report = _doctor(emulator, rate_limit=100.0)
    checks = _by_name(report)
    latency_ms = float(checks["latency"].detail.split("round trip ")[1].split(" ms")[0])
    assert latency_ms >= 200
    # 100 requests/s x >= 0.2 s x 1.2 headroom = 24+ in flight: the default adaptive cap (64) covers it.
    assert checks["throughput"].status == "ok" and "adaptive concurrency" in checks["throughput"].detail
    assert "max_in_flight" not in report.recommended
    # A workspace allowed 400 requests/s at the same latency needs 96+: raise the cap.
    report = _doctor(emulator, rate_limit=400.0)
    assert _by_name(report)["throughput"].status == "warn"
    assert report.recommended["max_in_flight"] >= 96


def test_the_readme_sample_says_what_the_doctor_says_of_adaptive_concurrency(emulator: Emulator) -> None:
    detail = _by_name(_doctor(emulator, rate_limit=100.0))["throughput"].detail
    said = detail[detail.index("adaptive concurrency"):]  # "adaptive concurrency (the default, up to 64) reaches it"
    readme = (pathlib.Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert f"; {said}\n" in readme


@pytest.mark.parametrize(("skew", "status"), [(-120.0, "fail"), (15.0, "warn")])
def test_a_skewed_server_clock_is_found(emulator: Emulator, skew: float, status: str) -> None:
    emulator.set_faults(clock_skew=skew)
    check = _by_name(_doctor(emulator))["clock"]
    assert check.status == status
    assert "NTP" in check.advice
    assert ("ahead of" if skew < 0 else "behind") in check.detail


@pytest.fixture
def read_only_dir(tmp_path: pathlib.Path) -> Iterator[pathlib.Path]:
    path = tmp_path / "ro"
    path.mkdir()
    if os.geteuid() == 0:  # root writes through mode bits: mount a read-only tmpfs instead
        subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)], check=True)
        try:
            yield path
        finally:
            subprocess.run(["umount", str(path)], check=True)
    else:
        path.chmod(0o555)
        yield path


def test_a_read_only_spool_directory_fails(emulator: Emulator, read_only_dir: pathlib.Path) -> None:
    check = _by_name(_doctor(emulator, spool_dir=str(read_only_dir)))["spool"]
    assert check.status == "fail" and "not writable" in check.detail
    assert "spool_dir" in check.advice


def test_spool_leftovers_are_reported(emulator: Emulator, tmp_path: pathlib.Path) -> None:
    site = tmp_path / "site-x"
    site.mkdir()
    (site / "000001.spool").write_bytes(b"\0" * 100)
    check = _by_name(_doctor(emulator, spool_dir=str(tmp_path)))["spool"]
    assert check.status == "warn" and "1 segment(s)" in check.detail


def test_missing_credentials_fail_without_a_traceback(emulator: Emulator) -> None:
    report = diagnose({"endpoint": emulator.url}, environ=ENV)
    assert _by_name(report)["config"].status == "fail"
    assert report.failed()


def test_cli_exit_codes_and_json_file(emulator: Emulator, tmp_path: pathlib.Path) -> None:
    out = tmp_path / "report.json"
    base = [sys.executable, "-m", "ciotrack", "doctor", "--endpoint", emulator.url, "--site-id", SITE_ID]
    env = {**os.environ, **ENV, "CIOTRACK_API_KEY": API_KEY}
    ok = subprocess.run([*base, "--json", str(out)], env=env, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "✓ credentials" in ok.stdout and "Recommended configuration" in ok.stdout
    jsonschema.validate(json.loads(out.read_text()), SCHEMA)
    strict = subprocess.run([*base, "--strict"], env=env, capture_output=True, text=True, timeout=60)
    assert strict.returncode == 1  # the missing spool is a warning
    bad = subprocess.run([*base, "--api-key", "nope"], env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "✗ credentials" in bad.stdout
    usage = subprocess.run([*base, "--region", "mars"], env=env, capture_output=True, text=True, timeout=60)
    assert usage.returncode == 2
