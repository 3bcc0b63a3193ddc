"""Outages are said as they happen: a WARNING naming the cause, the endpoint and the queue depth at the
first failed attempt (long before the retry budget), an INFO at recovery, the cause in the shutdown
line, and an opt-in DEBUG line per request. Over real sockets: a port nobody listens on, then an
emulator process started on that very port."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable

import pytest

from ciotrack.emulator import Emulator
from ciotrack.tracker import Tracker

from conftest import API_KEY, SITE_ID, RecordingServer, free_port


def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> bool:
    """Poll ``condition`` (a guard against hanging, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def records(caplog: pytest.LogCaptureFixture, level: int, text: str) -> list[logging.LogRecord]:
    return [r for r in list(caplog.records) if r.levelno == level and text in r.getMessage()]


def patient_tracker(url: str, *, senders: int = 1, debug: bool | None = None) -> Tracker:
    # A retry budget far longer than the test: whatever is logged, is logged while still retrying.
    return Tracker(SITE_ID, API_KEY, endpoint=url, flush_interval=0.02, rate_limit=0, backoff_base=0.01,
                   backoff_cap=0.1, max_retries=100_000, retry_budget=3600.0, senders=senders, debug=debug)


def test_refused_connection_warns_at_the_first_attempt_and_recovery_is_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ciotrack")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    tracker = patient_tracker(url)
    try:
        for i in range(5):
            tracker.track("u1", "during_outage", {"i": i})
        assert wait_for(lambda: bool(records(caplog, logging.WARNING, "connection refused")))
        # Said while the batch is still being retried: nothing has finally failed yet.
        assert tracker.stats().failed_total == 0
        [warning] = records(caplog, logging.WARNING, "connection refused")
        message = warning.getMessage()
        assert warning.name.startswith("ciotrack.")
        assert f"{url}/api/v2/batch" in message and "region us" in message
        assert "5 operation(s) waiting" in message
        assert API_KEY not in message
        # The same cause again is not repeated per attempt.
        assert wait_for(lambda: tracker.stats().retried >= 10)
        assert len(records(caplog, logging.WARNING, "connection refused")) == 1

        with Emulator.spawn(port=port, workspaces={SITE_ID: API_KEY}) as emulator:
            assert tracker.flush(timeout=20)
            assert emulator.wait_for(lambda: emulator.stats()["operations"] >= 5, timeout=10)
            [info] = records(caplog, logging.INFO, "recovered")
            assert f"{url}/api/v2/batch" in info.getMessage() and "connection refused" in info.getMessage()
            assert "failed attempt(s)" in info.getMessage() and "up to" in info.getMessage()
            assert tracker.stats().delivered == 5 and tracker.stats().failed_total == 0
    finally:
        tracker.close(timeout=1)


def test_the_shutdown_line_carries_the_cause(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="ciotrack")
    url = f"http://127.0.0.1:{free_port()}"
    tracker = patient_tracker(url, senders=1)
    for i in range(50):
        tracker.track("u1", "lost_at_exit", {"i": i})
    assert wait_for(lambda: bool(records(caplog, logging.WARNING, "connection refused")))
    result = tracker.flush_result(timeout=0.3)  # "not finished", and why
    assert not result.done and not result.ok and result.delivered == 0
    assert result.problem == f"connection refused to {url}/api/v2/batch"
    tracker.close(timeout=0.5)
    # Handed back by its sender before the deadline ("not delivered"), or still held by it, between two
    # tries, when close() stopped waiting ("at the close()/exit deadline"): either line says why.
    lost = [r.getMessage() for r in caplog.records
            if "not delivered" in r.getMessage() or "at the close()/exit deadline" in r.getMessage()]
    assert lost, [r.getMessage() for r in caplog.records]
    assert all(f"connection refused to {url}/api/v2/batch" in line for line in lost), lost
    stats = tracker.stats()
    assert stats.failed_total + sum(stats.dropped.values()) == 50


def test_a_server_error_status_is_its_own_cause(recorder: RecordingServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="ciotrack")
    answers = iter([503, 503, 502])
    recorder.responder = lambda rec: (next(answers, 200), {}, b"{}")
    tracker = patient_tracker(recorder.url)
    try:
        tracker.track("u1", "flaky")
        assert tracker.flush(timeout=20)
        warned = [r.getMessage() for r in caplog.records if "failing" in r.getMessage()]
        # One line per cause (503, then 502), not one per attempt.
        assert len(warned) == 2 and "HTTP 503" in warned[0] and "HTTP 502" in warned[1], warned
        assert tracker.stats().delivered == 1
    finally:
        tracker.close(timeout=1)


def test_debug_lines_are_opt_in(recorder: RecordingServer, caplog: pytest.LogCaptureFixture,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.DEBUG, logger="ciotrack")
    quiet = patient_tracker(recorder.url)
    quiet.track("u1", "no_debug")
    assert quiet.flush(timeout=10)
    quiet.close(timeout=1)
    assert not [r for r in caplog.records if r.name == "ciotrack.http"]

    monkeypatch.setenv("CIOTRACK_DEBUG", "1")
    loud = patient_tracker(recorder.url)
    try:
        loud.track("u1", "with_debug")
        assert loud.flush(timeout=10)
    finally:
        loud.close(timeout=1)
    [line] = [r for r in caplog.records if r.name == "ciotrack.http"]
    assert line.levelno == logging.DEBUG
    text = line.getMessage()
    assert f"POST {recorder.url}/api/v2/batch -> 200" in text and "(1 ops," in text
    assert API_KEY not in text and "with_debug" not in text  # neither the key nor the body


def test_no_handler_is_added_to_any_ciotrack_logger(recorder: RecordingServer) -> None:
    tracker = patient_tracker(recorder.url, debug=True)
    try:
        tracker.track("u1", "x")
        assert tracker.flush(timeout=10)
    finally:
        tracker.close(timeout=1)
    for name, logger in logging.root.manager.loggerDict.items():
        if name.startswith("ciotrack") and isinstance(logger, logging.Logger):
            assert not logger.handlers, name


def test_a_flapping_destination_is_one_warning_and_one_recovery(recorder: RecordingServer,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ciotrack")
    answers = iter([503, 200] * 4)
    recorder.responder = lambda rec: (next(answers, 200), {}, b"{}")
    tracker = patient_tracker(recorder.url)
    try:
        for blip in range(4):  # four short outages in a row, each recovering at the next attempt
            tracker.track("u1", "flap", {"blip": blip})
            assert tracker.flush(timeout=20)
    finally:
        tracker.close(timeout=1)
    assert tracker.stats().delivered == 4 and tracker.stats().retried == 4
    assert len(records(caplog, logging.WARNING, "HTTP 503")) == 1
    assert len(records(caplog, logging.INFO, "recovered")) == 1


def test_an_untrusted_certificate_is_named_tls(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="ciotrack")
    with Emulator(workspaces={SITE_ID: API_KEY}, tls=True) as server:
        tracker = patient_tracker(server.url)  # verify=True, and the emulator's CA is not trusted
        try:
            tracker.track("u1", "over_tls")
            result = tracker.flush_result(timeout=20)
        finally:
            tracker.close(timeout=1)
    assert result.done and result.failed == 1 and result.problem == f"TLS error to {server.url}/api/v2/batch"
    [warning] = [r for r in records(caplog, logging.WARNING, "TLS error") if r.name == "ciotrack.health"]
    assert "CERTIFICATE_VERIFY_FAILED" in warning.getMessage()
    assert "batches fail until this is fixed" in warning.getMessage()
    # The loss line says the same cause.
    assert any("delivery failing: TLS error" in r.getMessage() for r in caplog.records if r.name == "ciotrack.sender")


def test_a_silent_server_is_named_timeout(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="ciotrack")
    with socket.socket() as silent:  # accepts connections (the kernel's backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        tracker = Tracker(SITE_ID, API_KEY, endpoint=url, flush_interval=0.02, rate_limit=0, timeout=0.2,
                          backoff_base=0.01, backoff_cap=0.05, max_retries=100_000, retry_budget=3600.0)
        try:
            tracker.track("u1", "into_the_void")
            assert wait_for(lambda: bool(records(caplog, logging.WARNING, "failing: timeout")))
            assert tracker.stats().failed_total == 0
        finally:
            tracker.close(timeout=0.5)
    [warning] = [r for r in records(caplog, logging.WARNING, "failing: timeout") if r.name == "ciotrack.health"]
    assert f"{url}/api/v2/batch" in warning.getMessage() and "1 operation(s) waiting" in warning.getMessage()


def test_each_cause_of_a_final_failure_gets_its_own_line(caplog: pytest.LogCaptureFixture) -> None:
    # A 400 for a whole batch is said by the loss line alone (the health watch leaves content refusals to it).
    # Throttled per region, that line was held back for 10 s after any other failure: the cause went unsaid.
    caplog.set_level(logging.INFO, logger="ciotrack")
    with Emulator(workspaces={SITE_ID: API_KEY}, faults={"error_rate": 1.0, "error_statuses": [503]}) as em:
        tracker = Tracker(SITE_ID, API_KEY, endpoint=em.url, flush_interval=0.02, rate_limit=0, backoff_base=0.01,
                          backoff_cap=0.02, max_retries=1)
        try:
            tracker.track("u1", "during_503")
            assert tracker.flush(timeout=10)
            em.set_faults(error_rate=1.0, error_statuses=[400])
            tracker.track("u1", "refused_with_400")
            assert tracker.flush(timeout=10)
            tracker.track("u1", "refused_again")
            assert tracker.flush(timeout=10)
        finally:
            tracker.close(timeout=1)
    assert dict(tracker.stats().failed) == {"retries_exhausted": 1, "http_400": 2}
    failed = [r.getMessage() for r in caplog.records if "failed after" in r.getMessage()]
    # The same cause again stays throttled, its operation held back until close() says the total.
    assert len(failed) == 3, failed
    assert "retries exhausted: http_503" in failed[0] and "http_400" in failed[1], failed
    assert failed[2].startswith("ciotrack: 1 operation(s) to region us failed after 1 attempt(s): http_400"), failed
    assert failed[2].endswith("(the total of 1 similar messages suppressed since the last such line)"), failed
    # The server answered the 400s: the 503 episode is over, and the 400 lines must not blame it.
    assert "HTTP 503" not in failed[1] and "HTTP 503" not in failed[2], failed
    assert any("recovered" in r.getMessage() and "HTTP 503" in r.getMessage() for r in caplog.records)
