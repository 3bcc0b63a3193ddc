"""Testing helpers for users: CaptureTracker, Tracker(disabled=True) and the ciotrack_capture fixture."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from typing import Any

import pytest

import ciotrack
from ciotrack.errors import ConfigError, InvalidValueError, LimitError, SerializationError
from ciotrack.pytest_plugin import ciotrack_capture  # noqa: F401  (the fixture, without the entry point)
from ciotrack.testing import CaptureTracker
from ciotrack.tracker import Tracker

from conftest import RecordingServer, TrackerFactory

pytest_plugins = ["pytester"]

ULID = "01HV5Z9Q8N6W3X2Y1T0S9R8P7A"

BAD_CALLS: list[tuple[str, Callable[[Tracker], None]]] = [
    ("unsupported type", lambda t: t.track("1", "e", {"s": {1}})),
    ("non-str key", lambda t: t.track("1", "e", {1: "x"})),  # type: ignore[dict-item]
    ("empty id", lambda t: t.track("", "e")),
    ("long name", lambda t: t.track("1", "x" * 101)),
    ("nan", lambda t: t.track("1", "e", {"n": float("nan")})),
    ("bad ulid", lambda t: t.track("1", "e", id="not-a-ulid")),
    ("both ids missing", lambda t: t.track_anonymous("", "e")),
    ("long attribute name", lambda t: t.identify("1", {"a" * 151: 1})),
    ("long attribute value", lambda t: t.identify("1", {"k": "v" * 1001})),
    ("empty device", lambda t: t.add_device("1", "", "ios")),
    ("platform", lambda t: t.add_device("1", "tok", "windows")),
    ("merge id type", lambda t: t.merge_customers("phone", "1", "id", "2")),
    ("op too large", lambda t: t.send_operation({"type": "person", "blob": "x" * 40_000})),
    ("unknown region", lambda t: t.track("1", "e", region="mars")),
]


def _raised(call: Callable[[Tracker], None], tracker: Tracker) -> tuple[type[BaseException], str]:
    with pytest.raises(Exception) as info:
        call(tracker)
    return info.type, str(info.value)


@pytest.mark.parametrize("label,call", BAD_CALLS, ids=[label for label, _ in BAD_CALLS])
def test_bad_input_raises_exactly_what_a_real_tracker_raises(label: str, call: Callable[[Tracker], None],
                                                             make_tracker: TrackerFactory) -> None:
    capture = CaptureTracker()
    real = make_tracker()
    expected = _raised(call, real)
    assert issubclass(expected[0], (SerializationError, InvalidValueError, LimitError, ConfigError))
    assert _raised(call, capture) == expected
    assert capture.operations == []


def test_records_decoded_operations_in_call_order_with_helpers() -> None:
    captured = CaptureTracker()
    captured.identify("42", {"plan": "pro"}, email="a@example.com")
    captured.track(42, "checkout", {"total": 12.5, "items": [1, 2]}, id=ULID, timestamp=1_700_000_000)
    captured.track_anonymous("anon-1", "visit")
    captured.page("42", "/pricing")
    captured.screen("7", "Home")
    captured.track("7", "checkout")
    captured.add_device("42", "tok-1", "ios")
    captured.delete("9")

    assert [op["action"] for op in captured.operations] == [
        "identify", "event", "event", "page", "screen", "event", "add_device", "delete"]
    checkout = captured.events(name="checkout", customer_id=42)
    assert checkout == [{"type": "person", "identifiers": {"id": "42"}, "action": "event", "name": "checkout",
                         "id": ULID, "timestamp": 1_700_000_000, "attributes": {"total": 12.5, "items": [1, 2]}}]
    assert [e["identifiers"]["id"] for e in captured.events(name="checkout")] == ["42", "7"]
    assert [e["name"] for e in captured.events(anonymous_id="anon-1")] == ["visit"]
    assert [e["action"] for e in captured.events(customer_id="42", action=None)] == ["event", "page"]
    assert [e["name"] for e in captured.events(action="screen")] == ["Home"]
    [identify] = captured.identifies(customer_id="42")
    assert identify["attributes"] == {"plan": "pro", "email": "a@example.com"}
    assert captured.identifies(customer_id="7") == []
    assert captured.by_action("add_device")[0]["device"] == {"token": "tok-1", "platform": "ios"}
    assert captured.stats().delivered == 8
    assert "captured=8" in repr(captured)

    captured.clear()
    assert captured.operations == [] and captured.events() == []
    captured.track("1", "after-clear")
    assert [e["name"] for e in captured.events()] == ["after-clear"]


def test_no_thread_no_socket_no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # Anything that would reach the network fails loudly; CIOTRACK_* variables are ignored.
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("CaptureTracker opened a connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("CIOTRACK_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("CIOTRACK_SENDERS", "4")
    threads_before = set(threading.enumerate())
    for region in ("us", "auto"):  # "auto" would otherwise look the region up over HTTP
        with CaptureTracker(region=region) as captured:
            for i in range(2000):
                captured.track(str(i % 10), "e", {"i": i})
            assert len(captured.events()) == 2000
            assert captured.config.endpoint is None and captured.config.senders is None  # the default, not 4
    assert set(threading.enumerate()) == threads_before


def test_dedup_applies_as_in_production_unless_turned_off() -> None:
    default = CaptureTracker()
    everything = CaptureTracker(dedup_ttl=0)
    for captured in (default, everything):
        captured.identify("1", {"plan": "pro"})
        captured.identify("1", {"plan": "pro"})
        captured.track("1", "e", id=ULID)
        captured.track("1", "e", id=ULID)
    assert len(default.operations) == 2 and default.stats().deduplicated_total == 2
    assert len(everything.operations) == 4


def test_routing_options_record_the_region() -> None:
    captured = CaptureTracker(region_for={"eu-person": "eu"})
    captured.track("eu-person", "a")
    captured.track("us-person", "b")
    captured.track("us-person", "c", region="eu")
    assert [e["name"] for e in captured.operations_for("eu")] == ["a", "c"]
    assert [e["name"] for e in captured.operations_for("us")] == ["b"]


def test_calls_after_close_are_dropped_like_a_tracker() -> None:
    drops: list[tuple[str, int]] = []
    captured = CaptureTracker(on_drop=lambda reason, n: drops.append((reason, n)))
    captured.track("1", "before")
    captured.close()
    captured.track("1", "after")
    assert [e["name"] for e in captured.events()] == ["before"]
    assert drops == [("closed", 1)] and captured.stats().dropped == {"closed": 1, "queue_full": 0,
                                                                      "evicted_oldest": 0}


def test_disabled_tracker_validates_and_discards_without_threads_or_requests(recorder: RecordingServer) -> None:
    threads_before = set(threading.enumerate())
    with Tracker(disabled=True, endpoint=recorder.url) as tracker:
        for i in range(5000):
            tracker.track("1", "discarded", {"i": i})
        with pytest.raises(SerializationError):
            tracker.track("1", "bad", {"s": {1}})
        stats = tracker.stats()
        assert stats.invalid == 1 and stats.queued_ops["us"] <= 1024  # bounded: discarded as it fills
        assert set(threading.enumerate()) == threads_before
        assert tracker.flush(timeout=1)
        assert tracker.stats().queued_ops["us"] == 0
    assert recorder.requests == []


# -- the pytest fixture -----------------------------------------------------------------------------


def test_fixture_swaps_the_module_level_tracker(ciotrack_capture: CaptureTracker) -> None:  # noqa: F811
    assert ciotrack.get_tracker() is ciotrack_capture
    ciotrack.track("42", "checkout", {"total": 3})
    ciotrack.identify("42", plan="pro")
    assert ciotrack.flush()
    assert [e["attributes"] for e in ciotrack_capture.events(name="checkout")] == [{"total": 3}]
    assert ciotrack_capture.identifies(customer_id="42")[0]["attributes"] == {"plan": "pro"}


INNER_TESTS = '''
import pytest
import ciotrack
from ciotrack.testing import CaptureTracker

BEFORE = ciotrack.init(disabled=True)
REAL_INIT, REAL_CLOSE = ciotrack.init, ciotrack.close


def test_captures_module_level_calls(ciotrack_capture):
    assert isinstance(ciotrack_capture, CaptureTracker)
    assert ciotrack.get_tracker() is ciotrack_capture
    # The app's own startup/shutdown code runs unchanged.
    assert ciotrack.init("site", "key", flush_interval=0.5) is ciotrack_capture
    ciotrack.identify("42", plan="pro")
    ciotrack.track("42", "checkout", {"total": 12.5})
    ciotrack.close()
    ciotrack.page("42", "/thanks")
    assert [e["name"] for e in ciotrack_capture.events(action=None)] == ["checkout", "/thanks"]
    assert ciotrack_capture.identifies(customer_id=42)[0]["attributes"] == {"plan": "pro"}


def test_each_test_gets_a_fresh_capture_and_init_still_validates(ciotrack_capture):
    assert ciotrack_capture.operations == []
    with pytest.raises(ciotrack.ConfigError):
        ciotrack.init(flush_intervall=1)


def test_a_failing_test_still_restores(ciotrack_capture):
    ciotrack.track("1", "x")
    raise AssertionError("failing on purpose")


def test_the_previous_default_is_back():
    assert ciotrack._default is BEFORE
    assert (ciotrack.init, ciotrack.close) == (REAL_INIT, REAL_CLOSE)
    assert BEFORE.stats().accepted == 0  # nothing leaked into the real default tracker
'''


def test_plugin_fixture_end_to_end_in_a_pytest_run(pytester: pytest.Pytester,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # A separate process, so the inner run's module-level tracker is not this process's. Autoload off:
    # the plugin is loaded by its module name whether or not the entry point is installed.
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    pytester.makepyfile(test_inner=INNER_TESTS)
    result = pytester.runpytest_subprocess("-p", "ciotrack.pytest_plugin", "-q")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(["*test_a_failing_test_still_restores*"])
