"""401/403 are configuration errors: one ERROR with ciotrack's hint (not one per batch), ``check()``
raising a named ``ConfigError`` for wrong credentials, a region mismatch, a redirect and an
unreachable endpoint, and ``flush_result()`` telling "finally failed" from success. Against an
emulator process (and a port nobody listens on)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

import ciotrack
from ciotrack.emulator import Emulator
from ciotrack.emulator.handle import EmulatorProcess
from ciotrack.errors import (
    CheckError,
    ConfigError,
    CredentialsError,
    EndpointRedirectError,
    EndpointUnreachableError,
    RegionMismatchError,
)
from ciotrack.testing import CaptureTracker
from ciotrack.tracker import Tracker

from conftest import API_KEY, SITE_ID, free_port

WRONG_KEY = "wrong-key-SECRET-77aa"


@pytest.fixture(scope="module")
def emulator_process() -> Iterator[EmulatorProcess]:
    with EmulatorProcess.start(workspaces={SITE_ID: API_KEY}) as process:
        yield process


def url_of(process: EmulatorProcess) -> str:
    return process.url


def make(url: str, api_key: str = API_KEY) -> Tracker:
    return Tracker(SITE_ID, api_key, endpoint=url, flush_interval=0.02, rate_limit=0, backoff_base=0.01,
                   backoff_cap=0.1)


def test_a_wrong_key_is_one_error_with_the_hint(emulator_process: EmulatorProcess,
                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="ciotrack")
    url = url_of(emulator_process)
    tracker = make(url, WRONG_KEY)
    try:
        for batch in range(3):  # three batches, three 401s
            tracker.track("u1", "signed_up", {"batch": batch})
            result = tracker.flush_result(timeout=10)
            assert result.done and not result.ok and result.failed == 1 and result.delivered == 0
            assert result.problem is not None and "HTTP 401" in result.problem
    finally:
        tracker.close(timeout=2)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    message = errors[0].getMessage()
    assert errors[0].name == "ciotrack.health"
    assert f"{url}/api/v2/batch" in message and "HTTP 401" in message and repr(SITE_ID) in message
    for hint in ("CIOTRACK_SITE_ID", "CIOTRACK_API_KEY", "CIOTRACK_REGION", "Track API key", "region 'us'"):
        assert hint in message
    assert all(WRONG_KEY not in r.getMessage() for r in caplog.records)


def test_check_raises_for_wrong_credentials_without_showing_the_key(emulator_process: EmulatorProcess) -> None:
    with make(url_of(emulator_process), WRONG_KEY) as tracker:
        with pytest.raises(CredentialsError) as raised:
            tracker.check(timeout=5)
    assert isinstance(raised.value, ConfigError) and isinstance(raised.value, ValueError)
    text = str(raised.value)
    assert "401" in text and "CIOTRACK_API_KEY" in text
    assert WRONG_KEY not in text and WRONG_KEY not in repr(raised.value)


def test_check_passes_and_flush_result_is_ok_with_the_right_credentials(emulator_process: EmulatorProcess) -> None:
    with make(url_of(emulator_process)) as tracker:
        tracker.check(timeout=5)
        tracker.identify("u1", plan="pro")
        tracker.track("u1", "upgraded")
        result = tracker.flush_result(timeout=10)
        assert result.ok and bool(result) and result.delivered == 2 and result.problem is None


def test_module_level_check_uses_the_default_tracker(emulator_process: EmulatorProcess) -> None:
    assert ciotrack.flush_result().ok  # no default tracker: nothing to deliver
    ciotrack.init(SITE_ID, WRONG_KEY, endpoint=url_of(emulator_process), flush_interval=0.02, rate_limit=0)
    try:
        with pytest.raises(CredentialsError):
            ciotrack.check(timeout=5)
        ciotrack.track("u1", "refused")
        result = ciotrack.flush_result(timeout=10)
        assert result.done and result.failed == 1 and not result.ok
    finally:
        ciotrack.close(timeout=1)


def test_check_names_a_region_mismatch() -> None:
    with Emulator(workspaces={SITE_ID: API_KEY}, region="eu") as eu_server, make(eu_server.url) as tracker:
        with pytest.raises(RegionMismatchError) as raised:
            tracker.check(timeout=5)
    assert raised.value.account_region == "eu"
    assert "region='eu'" in str(raised.value) and "CIOTRACK_REGION=eu" in str(raised.value)


def test_check_passes_for_auto_region() -> None:
    with Emulator(workspaces={SITE_ID: API_KEY}, region="eu") as eu_server:
        tracker = Tracker(SITE_ID, API_KEY, endpoint=eu_server.url, region="auto")
        try:
            tracker.check(timeout=5)
        finally:
            tracker.close(timeout=1)


def test_check_names_a_redirect_and_does_not_follow_it() -> None:
    with Emulator(workspaces={SITE_ID: API_KEY}) as server, make(server.url) as tracker:
        server.set_faults(redirect_to="http://127.0.0.1:9/elsewhere")
        with pytest.raises(EndpointRedirectError) as raised:
            tracker.check(timeout=5)
    assert "301" in str(raised.value) and "http://127.0.0.1:9/elsewhere" in str(raised.value)


def test_check_names_an_unreachable_endpoint() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with make(url) as tracker:
        with pytest.raises(EndpointUnreachableError) as raised:
            tracker.check(timeout=2)
    assert isinstance(raised.value, CheckError)
    assert "connection refused" in str(raised.value) and url in str(raised.value)


def test_check_on_a_capture_or_disabled_tracker_sends_nothing_and_passes() -> None:
    CaptureTracker().check()
    disabled = Tracker(disabled=True)
    disabled.check()
    disabled.close()
