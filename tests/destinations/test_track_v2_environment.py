"""The environment's proxies and CA bundle reach each request as with ``Session.post`` (the destination
merges them once, when it is made, and reuses a prepared request), and a Session's cookies still go.

Every proxy here is the recording server on 127.0.0.1: a proxied request carries the absolute URI.
"""

from __future__ import annotations

from collections.abc import Iterator

import certifi
import pytest

from ciotrack.emulator import Emulator
from ciotrack.errors import DeliveryError
from ciotrack.tracker import Tracker

from conftest import API_KEY, SITE_ID, RecordingServer, all_events, free_port


@pytest.fixture
def proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No NO_PROXY (conftest sets one to keep stray proxies off the tests): each test says its own."""
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _send_one(url: str, **options: object) -> bool:
    with Tracker(SITE_ID, API_KEY, endpoint=url, rate_limit=0, max_retries=0, **options) as tracker:  # type: ignore[arg-type]
        tracker.track("1", "hello")
        return tracker.flush(timeout=10)


def test_http_proxy_from_the_environment(proxy_env: pytest.MonkeyPatch, recorder: RecordingServer,
                                         emulator: Emulator) -> None:
    proxy_env.setenv("HTTP_PROXY", recorder.url)
    assert _send_one(emulator.url)
    [request] = recorder.requests
    assert request.request_line == f"POST {emulator.url}/api/v2/batch HTTP/1.1"
    assert request.headers["Authorization"].startswith("Basic ")
    assert emulator.stats()["requests"] == 0


def test_no_proxy_from_the_environment_bypasses_it(proxy_env: pytest.MonkeyPatch, recorder: RecordingServer,
                                                   emulator: Emulator) -> None:
    proxy_env.setenv("HTTP_PROXY", recorder.url)
    proxy_env.setenv("NO_PROXY", "127.0.0.1")
    assert _send_one(emulator.url)
    assert recorder.requests == []
    assert len(all_events(emulator.state())) == 1


def test_explicit_proxies_win_over_the_environment(proxy_env: pytest.MonkeyPatch, recorder: RecordingServer,
                                                   emulator: Emulator) -> None:
    proxy_env.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    assert _send_one(emulator.url, proxies={"http": recorder.url})
    [request] = recorder.requests
    assert request.request_line == f"POST {emulator.url}/api/v2/batch HTTP/1.1"


def test_the_environment_is_read_when_the_tracker_is_made(proxy_env: pytest.MonkeyPatch, recorder: RecordingServer,
                                                          emulator: Emulator) -> None:
    with Tracker(SITE_ID, API_KEY, endpoint=emulator.url, rate_limit=0) as tracker:
        proxy_env.setenv("HTTP_PROXY", recorder.url)  # too late for this tracker
        tracker.track("1", "direct")
        assert tracker.flush(timeout=10)
    assert recorder.requests == []
    assert len(all_events(emulator.state())) == 1


@pytest.fixture
def tls_emulator() -> Iterator[Emulator]:
    with Emulator(workspaces={SITE_ID: API_KEY}, tls=True) as em:
        yield em


def test_ca_bundle_from_the_environment(monkeypatch: pytest.MonkeyPatch, tls_emulator: Emulator) -> None:
    assert tls_emulator.ca_bundle
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", tls_emulator.ca_bundle)
    assert _send_one(tls_emulator.url, verify=True)
    assert len(all_events(tls_emulator.state())) == 1


def test_an_explicit_ca_bundle_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch,
                                                         tls_emulator: Emulator) -> None:
    assert tls_emulator.ca_bundle
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certifi.where())  # does not know the emulator's CA
    assert _send_one(tls_emulator.url, verify=tls_emulator.ca_bundle)
    errors: list[DeliveryError] = []
    assert _send_one(tls_emulator.url, verify=True, on_error=errors.append)  # the environment's bundle: refused
    [error] = errors
    assert "CERTIFICATE_VERIFY_FAILED" in error.reason
    assert len(all_events(tls_emulator.state())) == 1


def test_cookies_a_receiver_sets_are_sent_back(recorder: RecordingServer) -> None:
    # A load balancer's sticky cookie: requests' Session keeps it and sends it on the next request.
    recorder.responder = lambda rec: (200, {"Set-Cookie": "lb=node-7; Path=/"}, b"{}")
    with Tracker(SITE_ID, API_KEY, endpoint=recorder.url, rate_limit=0, senders=1) as tracker:
        for i in range(2):
            tracker.track("1", f"e{i}")
            assert tracker.flush(timeout=10)
    first, second = recorder.requests
    assert "Cookie" not in first.headers
    assert second.headers["Cookie"] == "lb=node-7"


def test_response_hooks_added_to_the_session_later_still_run(emulator: Emulator) -> None:
    # The load test times each request with a response hook on the tracker's Session, added after start.
    seen: list[int] = []
    with Tracker(SITE_ID, API_KEY, endpoint=emulator.url, rate_limit=0) as tracker:
        session = tracker._pipeline.router.session
        session.hooks["response"].append(lambda response, *args, **kwargs: seen.append(response.status_code))
        tracker.track("1", "hooked")
        assert tracker.flush(timeout=10)
    assert seen == [200]
