"""First contact: module-level ``flush_async``/``stats``, ``stats().format()`` numbers, the emulator's
start-up banner, and the CLI's hint for an extra that is missing when a command runs."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import ciotrack
from ciotrack import __main__ as cli
from ciotrack.emulator import Emulator
from ciotrack.errors import ConfigError
from ciotrack.stats import Stats

from conftest import API_KEY, SITE_ID

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def default_tracker_closed() -> Iterator[None]:
    ciotrack.close()
    yield
    ciotrack.close()


def test_module_level_flush_async_and_stats(emulator: Emulator, default_tracker_closed: None) -> None:
    assert asyncio.run(ciotrack.flush_async(1)) is True  # no default tracker: nothing to deliver
    ciotrack.init(SITE_ID, API_KEY, endpoint=emulator.url, flush_interval=5)
    for i in range(5):
        ciotrack.track(f"u{i}", "signed_up")
    assert ciotrack.stats().accepted == 5
    # flush_interval is 5 s: only the flush makes them go now, and the loop keeps running meanwhile.
    assert asyncio.run(ciotrack.flush_async(10)) is True
    stats = ciotrack.stats()
    assert isinstance(stats, Stats) and stats.delivered == 5
    assert emulator.stats()["events"] == 5


def test_stats_without_a_tracker_or_credentials(monkeypatch: pytest.MonkeyPatch,
                                                default_tracker_closed: None) -> None:
    for name in ("CIOTRACK_SITE_ID", "CIOTRACK_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError):
        ciotrack.stats()


def test_stats_stays_a_function_whatever_is_imported_first() -> None:
    # Importing a submodule for the first time sets the package attribute of its name: the function
    # must survive the tracker importing ciotrack.stats, in either order.
    code = ("import ciotrack.tracker, ciotrack, ciotrack.stats\n"
            "from ciotrack.stats import Stats\n"
            "assert callable(ciotrack.stats) and not isinstance(ciotrack.stats, type(ciotrack)), ciotrack.stats\n"
            "print('ok')")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "python")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert result.stdout.strip() == "ok", result.stderr


def test_format_prints_plain_numbers() -> None:
    raw = {"counters": {"delivered": 1234567}, "gauges": {}, "histograms": {
        "request_latency_seconds": {"count": 12345, "sum": 1.0, "p50": 10.0, "p95": 0.0123, "p99": 0.000_001_5,
                                    "max": 125.0},
        "delivery_latency_seconds": {"count": 1, "sum": 1.0, "p50": 0.25, "p95": 1.5, "p99": 2.0, "max": 0.0},
        "batch_ops": {"count": 3, "sum": 9.0, "p50": 3000.0, "p95": 3.0, "p99": 45.25, "max": 100000.0},
    }}
    text = Stats.from_core(raw, lane_regions=["us"]).format()
    assert "e+" not in text and "e-" not in text, text
    lines = text.splitlines()
    assert "request latency: n=12,345 p50=10,000 ms p95=12.3 ms p99=0.00150 ms max=125,000 ms" in lines
    assert "delivery latency: n=1 p50=250 ms p95=1,500 ms p99=2,000 ms max=0 ms" in lines
    assert "batch size: n=3 p50=3,000 ops p95=3.00 ops p99=45.2 ops max=100,000 ops" in lines


def _banner(*args: str, lines: int) -> list[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "python")}
    proc = subprocess.Popen([sys.executable, "-m", "ciotrack", "emulator", "--port", "0", "--exit-on-stdin-eof",
                             *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None and proc.stdin is not None
    try:
        return [proc.stdout.readline().rstrip("\n") for _ in range(lines)]
    finally:
        proc.stdin.close()
        assert proc.wait(30) == 0


def test_emulator_prints_url_then_credentials() -> None:
    out = _banner("--site-id", "shop", "--api-key", "k-1", "--app-api-key", "app-9", "--workspace", "other:k-2",
                  lines=7)
    url = out[0]
    assert url.startswith("http://127.0.0.1:")  # first line: the URL alone (EmulatorProcess reads it)
    text = "\n".join(out[1:])
    assert "site id: shop  Track API key: k-1  App API key: app-9" in text
    assert "site id: other  Track API key: k-2  App API key: app-k-2" in text
    assert f"export CIOTRACK_ENDPOINT={url} CIOTRACK_SITE_ID=shop CIOTRACK_API_KEY=k-1" in text
    assert f"APIClient('app-9', url='{url}')" in text


def test_emulator_banner_with_tls_keeps_the_ca_bundle_line_second() -> None:
    out = _banner("--tls", lines=6)
    assert out[0].startswith("https://127.0.0.1:") and out[1].startswith("ca_bundle=")
    assert f"export REQUESTS_CA_BUNDLE={out[1].partition('=')[2]}" in "\n".join(out)


def test_a_command_missing_its_extra_at_run_time_prints_one_line(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "fc_lazy_command.py").write_text(textwrap.dedent("""
        def configure_parser(parser):
            pass

        def run(args):
            import fc_module_that_is_not_installed  # noqa: F401
            return 0
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(cli.COMMANDS, "lazy", ("fc_lazy_command", "needs an extra when it runs", "emulator"))
    with pytest.raises(SystemExit) as info:
        cli.main(["lazy"])
    message = str(info.value.code)
    assert message == ("ciotrack lazy: needs the module 'fc_module_that_is_not_installed', which is not "
                       "installed: pip install 'ciotrack[emulator]'")
    assert isinstance(info.value, cli.MissingExtra)
