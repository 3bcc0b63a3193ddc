"""Config: defaults, validation (ConfigError), environment, and the API key never leaking."""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import re
from typing import Any

import pytest

import ciotrack
from ciotrack.config import _ENV_OPTIONS, DEFAULT_ENDPOINTS, Config
from ciotrack.destinations.track_v2 import TrackV2Destination
from ciotrack.emulator import Emulator
from ciotrack.errors import ConfigError, DeliveryError
from ciotrack.tracker import Tracker

from conftest import API_KEY, SITE_ID, all_events

SECRET = "sk-very-secret-0123456789"


def test_defaults_are_documented_values() -> None:
    config = Config(site_id="s", api_key="k")
    assert (config.region, config.senders, config.flush_interval, config.batch_bytes) == ("us", None, 0.2, 500_000)
    assert config.max_in_flight == 64  # adaptive concurrency's cap
    assert (config.max_queue_bytes, config.rate_limit, config.dedup_ttl, config.dedup_events) == (
        64 * 1024 * 1024, 100.0, 300.0, "id")
    assert config.endpoint_for("us") == DEFAULT_ENDPOINTS["us"] == "https://track.customer.io"
    assert config.endpoint_for("eu") == "https://track-eu.customer.io"
    assert config.regions_in_use() == ("us",)


def test_endpoint_precedence() -> None:
    config = Config(site_id="s", api_key="k", endpoint="http://127.0.0.1:1/", endpoints={"eu": "http://127.0.0.1:2"})
    assert config.endpoint_for("us") == "http://127.0.0.1:1"
    assert config.endpoint_for("eu") == "http://127.0.0.1:2"
    assert config.regions_in_use() == ("us", "eu")
    assert Config(site_id="s", api_key="k", region="eu", region_for={}).regions_in_use() == ("eu", "us")
    assert Config(site_id="s", api_key="k", region="auto").regions_in_use() == ("auto",)


@pytest.mark.parametrize(("options", "fragment"), [
    ({"region": "mars"}, "region"),
    ({"endpoint": "ftp://x"}, "endpoint"),
    ({"endpoints": {"asia": "http://127.0.0.1:1"}}, "unknown region"),
    ({"senders": 0}, "senders"),
    ({"batch_bytes": 600_000}, "batch_bytes"),
    ({"timeout": -1}, "timeout"),
    ({"timeout": (1, 2, 3)}, "timeout"),
    ({"on_full": "explode"}, "on_full"),
    ({"dedup_events": "maybe"}, "dedup_events"),
    ({"flush_interval": 0}, "flush_interval"),
    ({"rate_limit": float("nan")}, "rate_limit"),
    ({"rate_burst": 0}, "rate_burst"),
    ({"on_error": "not callable"}, "on_error"),
    ({"region_for": 42}, "region_for"),
    ({"max_retries": -1}, "max_retries"),
])
def test_invalid_options_raise_config_error(options: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment) as raised:
        Config(site_id="s", api_key=SECRET, **options)
    assert isinstance(raised.value, ValueError)
    assert SECRET not in str(raised.value)


def test_missing_credentials() -> None:
    with pytest.raises(ConfigError, match="site_id"):
        Config.from_env(environ={}, api_key="k")
    with pytest.raises(ConfigError, match="api_key is required"):
        Config.from_env(environ={}, site_id="s")
    with pytest.raises(ConfigError, match="api_key must be a non-empty str"):
        Config(site_id="s", api_key="")
    with pytest.raises(ConfigError, match="unknown option 'sendrs'"):
        Config.from_env(environ={}, site_id="s", api_key="k", sendrs=2)


def test_environment_fills_what_arguments_leave_out() -> None:
    env = {"CIOTRACK_SITE_ID": "env-site", "CIOTRACK_API_KEY": "env-key", "CIOTRACK_REGION": "EU",
           "CIOTRACK_ENDPOINT": "http://127.0.0.1:9", "CIOTRACK_SENDERS": "3", "CIOTRACK_SYNC": "yes",
           "CIOTRACK_RATE_LIMIT": "0"}
    config = Config.from_env(environ=env)
    assert (config.site_id, config.api_key, config.region, config.endpoint, config.senders, config.sync,
            config.rate_limit) == ("env-site", "env-key", "eu", "http://127.0.0.1:9", 3, True, 0.0)
    explicit = Config.from_env(environ=env, site_id="arg-site", senders=2, region="us")
    assert (explicit.site_id, explicit.senders, explicit.region, explicit.api_key) == ("arg-site", 2, "us", "env-key")
    with pytest.raises(ConfigError, match="CIOTRACK_SENDERS"):
        Config.from_env(environ={**env, "CIOTRACK_SENDERS": "many"})


def test_tracker_reads_the_environment(monkeypatch: pytest.MonkeyPatch, emulator: Emulator) -> None:
    monkeypatch.setenv("CIOTRACK_SITE_ID", SITE_ID)
    monkeypatch.setenv("CIOTRACK_API_KEY", API_KEY)
    monkeypatch.setenv("CIOTRACK_ENDPOINT", emulator.url)
    monkeypatch.setenv("CIOTRACK_RATE_LIMIT", "0")
    with Tracker() as tracker:
        assert tracker.config.endpoint == emulator.url
        tracker.track("env", "configured")
        assert tracker.flush(timeout=5)
    assert len(all_events(emulator.state())) == 1


def test_api_key_never_in_repr_str_logs_or_errors(emulator: Emulator, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    config = Config(site_id=SITE_ID, api_key=SECRET, endpoint=emulator.url)
    assert SECRET not in repr(config) and SECRET not in str(config)
    errors: list[DeliveryError] = []
    with Tracker(config=config.replace(on_error=errors.append, rate_limit=0)) as tracker:
        assert SECRET not in repr(tracker)
        assert SECRET not in repr(TrackV2Destination.from_config(tracker.config, "us"))
        tracker.track("1", "rejected")  # 401: this key is not the emulator's
        assert tracker.flush(timeout=5)
    [error] = errors
    assert SECRET not in str(error) and SECRET not in repr(error) and SECRET not in error.reason
    assert SECRET not in caplog.text
    assert caplog.text  # something was logged (the 401), so the check above means something


def test_config_and_options_are_exclusive() -> None:
    with pytest.raises(ConfigError):
        Tracker("s", config=Config(site_id="s", api_key="k"))


def test_module_level_default_tracker(emulator: Emulator) -> None:
    tracker = ciotrack.init(SITE_ID, API_KEY, endpoint=emulator.url, rate_limit=0, flush_interval=0.02)
    try:
        assert ciotrack.get_tracker() is tracker
        ciotrack.identify("m1", {"plan": "free"})
        ciotrack.track("m1", "module-level", {"ok": True})
        ciotrack.page("m1", "/home")
        assert ciotrack.flush(timeout=5)
    finally:
        ciotrack.close(timeout=5)
    assert tracker.closed
    person = emulator.state()["people"]["m1"]
    assert person["attributes"] == {"plan": "free"}
    assert [e["name"] for e in person["events"]] == ["module-level", "/home"]
    assert set(ciotrack.__all__) >= {"Tracker", "Config", "init", "track", "identify", "flush", "close",
                                     "DeliveryError", "ConfigError"}


def test_module_level_tracker_from_the_environment(monkeypatch: pytest.MonkeyPatch, emulator: Emulator) -> None:
    monkeypatch.setenv("CIOTRACK_SITE_ID", SITE_ID)
    monkeypatch.setenv("CIOTRACK_API_KEY", API_KEY)
    monkeypatch.setenv("CIOTRACK_ENDPOINT", emulator.url)
    try:
        ciotrack.track("envmod", "lazy")
        assert ciotrack.flush(timeout=5)
    finally:
        ciotrack.close(timeout=5)
    assert len(all_events(emulator.state())) == 1


def _readme_configuration_rows() -> dict[str, tuple[str, str]]:
    """option -> (its row's default column, the whole row), from README.md's Configuration table."""
    readme = (pathlib.Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("### Configuration"):readme.index("### Delivery")]
    rows: dict[str, tuple[str, str]] = {}
    for line in section.splitlines():
        if line.startswith("| `"):
            cells = line.split(" | ")
            for option in re.findall(r"`(\w+)`", cells[0]):
                rows[option] = (cells[1], line)
    return rows


def test_the_readme_configuration_table_has_every_option_its_variable_and_default() -> None:
    rows = _readme_configuration_rows()
    fields = {f.name: f for f in dataclasses.fields(Config)}
    assert sorted(rows) == sorted(fields)  # every option, and no option that does not exist
    for option, (variable, _) in _ENV_OPTIONS.items():
        assert f"`{variable}`" in rows[option][1], f"{variable} is not in the row of {option}"
    # A default that is one plain value, given in its row (several options share a row: in order).
    for name, f in fields.items():
        default, row = rows[name]
        value = f.default
        if isinstance(value, bool):
            assert f"`{value}`" in default, name
        elif isinstance(value, (int, float)) and row.split(" | ")[0].count("`") == 2:  # its own row
            shown = {f"{value:g}", f"{value:,}", f"{value:g} s", f"{value / (1 << 30):g} GiB", f"{value:g} req/s"}
            assert any(text in default for text in shown), f"{name}: default {value!r}, the README says {default!r}"
