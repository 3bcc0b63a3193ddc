"""Transport: the status table, Retry-After, and proof that timeout/proxies/verify reach each request."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from ciotrack.destinations.track_v2 import TrackV2Destination, classify, make_session, user_agent
from ciotrack.emulator import Emulator
from ciotrack.errors import DeliveryError
from ciotrack.retry import RetryPolicy, parse_retry_after
from ciotrack.tracker import Tracker

from conftest import API_KEY, SITE_ID, RecordingServer, TrackerFactory, all_events, free_port


@pytest.mark.parametrize(("status", "kind"), [
    (200, "delivered"), (202, "delivered"), (207, "partial"), (400, "final"), (401, "final"), (403, "final"),
    (404, "final"), (408, "retry"), (413, "split"), (429, "retry"), (500, "retry"), (502, "retry"),
    (503, "retry"), (504, "retry"),
])
def test_status_table(status: int, kind: str) -> None:
    assert classify(status, None, b"{}").kind == kind


def test_207_body_names_the_failed_indexes() -> None:
    body = json.dumps({"errors": [{"batch_index": 1, "reason": "required", "field": "name", "message": "empty"},
                                  {"batch_index": 3, "reason": "invalid", "field": "id", "message": "not a ULID"}]})
    outcome = classify(207, None, body.encode())
    assert outcome.failures == ((1, "required: name: empty"), (3, "invalid: id: not a ULID"))


def test_unparsable_207_attributes_no_failure() -> None:
    assert classify(207, None, b"<html>").failures == ()


def test_retry_after_parsing() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("-4") == 0.0
    when = parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0)  # 10 s before that date
    assert when == pytest.approx(10.0)
    assert classify(429, "7", b"").retry_after == 7.0


def test_backoff_is_jittered_exponential_with_retry_after_as_a_capped_floor() -> None:
    policy = RetryPolicy(max_retries=5, retry_budget=30, backoff_base=0.1, backoff_cap=1.0, retry_after_cap=5.0)
    for attempt, nominal in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (9, 1.0)]:
        delays = [policy.delay(attempt) for _ in range(200)]
        assert all(nominal / 2 <= d <= nominal for d in delays)
        assert len(set(delays)) > 100  # jittered
    assert policy.delay(1, retry_after=3.0) == 3.0
    assert policy.delay(1, retry_after=600.0) == 5.0
    assert policy.gives_up(6, 0.0, 0.1) and not policy.gives_up(5, 0.0, 0.1)
    assert policy.gives_up(1, 29.95, 0.1)


def test_user_agent_and_pool_size() -> None:
    session = make_session(pool_size=4, hosts=2, user_agent_suffix="myapp/1.0")
    adapter = session.get_adapter("https://track.customer.io")
    assert adapter._pool_maxsize == 4  # type: ignore[attr-defined]
    assert session.headers["User-Agent"] == user_agent("myapp/1.0")
    agent = session.headers["User-Agent"]
    assert isinstance(agent, str) and agent.startswith("ciotrack/") and agent.endswith(" myapp/1.0")
    session.close()


def test_connection_refused_is_a_retry_outcome() -> None:
    session = make_session(1)
    destination = TrackV2Destination(session, f"http://127.0.0.1:{free_port()}", SITE_ID, API_KEY, timeout=1.0)
    outcome = destination.send(b'{"batch":[]}')
    assert outcome.kind == "retry" and outcome.status is None and outcome.reason.startswith("connection_error")
    assert API_KEY not in repr(destination)
    session.close()


def test_timeout_reaches_the_request(make_tracker: TrackerFactory, emulator: Emulator) -> None:
    emulator.set_faults(slow_read=2.0)
    errors: list[DeliveryError] = []
    tracker = make_tracker(timeout=(1.0, 0.2), max_retries=0, on_error=errors.append)
    tracker.track("1", "slow")
    assert tracker.flush(timeout=5)
    [error] = errors  # a ReadTimeout: the 0.2 s read timeout tripped before the emulator's 2 s answer
    assert error.status is None and error.reason.endswith("timeout: ReadTimeout")
    assert tracker.stats()["counters"]["requests_error"] == 1


def test_proxies_reach_the_request(recorder: RecordingServer, emulator: Emulator) -> None:
    # The recorder plays an HTTP proxy: a proxied request carries the absolute URI in its request line.
    with Tracker(SITE_ID, API_KEY, endpoint=emulator.url, rate_limit=0, flush_interval=5.0,
                 proxies={"http": recorder.url, "https": recorder.url}) as tracker:
        tracker.track("1", "via-proxy")
        assert tracker.flush(timeout=5)
    [request] = recorder.requests
    assert request.request_line == f"POST {emulator.url}/api/v2/batch HTTP/1.1"
    assert emulator.stats()["requests"] == 0


@pytest.fixture
def tls_emulator() -> Iterator[Emulator]:
    with Emulator(workspaces={SITE_ID: API_KEY}, tls=True) as em:
        yield em


def test_verify_with_the_ca_bundle_delivers(tls_emulator: Emulator) -> None:
    assert tls_emulator.url.startswith("https://") and tls_emulator.ca_bundle
    with Tracker(SITE_ID, API_KEY, endpoint=tls_emulator.url, rate_limit=0, verify=tls_emulator.ca_bundle) as tracker:
        tracker.track("1", "over-tls")
        assert tracker.flush(timeout=5)
    assert len(all_events(tls_emulator.state())) == 1


def test_verify_failure_is_final_and_reported(tls_emulator: Emulator) -> None:
    errors: list[DeliveryError] = []
    # verify=True: the system CA store does not know the emulator's private CA.
    with Tracker(SITE_ID, API_KEY, endpoint=tls_emulator.url, rate_limit=0, verify=True,
                 on_error=errors.append) as tracker:
        tracker.track("1", "untrusted")
        assert tracker.flush(timeout=5)
    [error] = errors
    assert error.reason.startswith("tls_error") and "CERTIFICATE_VERIFY_FAILED" in error.reason
    assert error.attempts == 1
    assert all_events(tls_emulator.state()) == []


def test_verify_false_skips_verification(tls_emulator: Emulator) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Tracker(SITE_ID, API_KEY, endpoint=tls_emulator.url, rate_limit=0, verify=False) as tracker:
            tracker.track("1", "unverified")
            assert tracker.flush(timeout=5)
    assert len(all_events(tls_emulator.state())) == 1


def test_connections_are_reused(make_tracker: TrackerFactory, emulator: Emulator, monkeypatch: Any) -> None:
    import urllib3.connectionpool

    opened: list[Any] = []
    original = urllib3.connectionpool.HTTPConnectionPool._new_conn

    def counting(self: Any) -> Any:
        opened.append(self)
        return original(self)

    monkeypatch.setattr(urllib3.connectionpool.HTTPConnectionPool, "_new_conn", counting)
    tracker = make_tracker(batch_bytes=2048, senders=1)
    for i in range(300):
        tracker.track("k", "keepalive", {"i": i})
    assert tracker.flush(timeout=10)
    assert emulator.stats()["batches"] > 5
    assert len(opened) == 1  # one sender, one keep-alive connection for every batch


def test_adaptive_concurrency_opens_no_more_connections_than_requests_in_flight(
        make_tracker: TrackerFactory, emulator: Emulator, monkeypatch: Any) -> None:
    import urllib3.connectionpool

    opened: list[Any] = []
    original = urllib3.connectionpool.HTTPConnectionPool._new_conn

    def counting(self: Any) -> Any:
        opened.append(self)
        return original(self)

    monkeypatch.setattr(urllib3.connectionpool.HTTPConnectionPool, "_new_conn", counting)
    emulator.set_faults(latency=0.02)  # requests overlap: the controller grows past one
    tracker = make_tracker(batch_bytes=2048, max_in_flight=8)
    for i in range(3000):
        tracker.track("k", "keepalive", {"i": i})
    assert tracker.flush(timeout=30)
    batches = emulator.stats()["batches"]
    assert batches > 50
    # Connections are pooled and kept alive: at most one per request in flight, never one per batch.
    assert 1 <= len(opened) <= 8 < batches


def test_requests_session_is_closed_on_close(make_tracker: TrackerFactory, monkeypatch: Any) -> None:
    closed: list[bool] = []
    original = requests.Session.close

    def spy(self: requests.Session) -> None:
        closed.append(True)
        original(self)

    monkeypatch.setattr(requests.Session, "close", spy)
    tracker = make_tracker()
    tracker.track("1", "x")
    tracker.close(timeout=5)
    assert closed
