"""The native fast path of ``Tracker.track`` & co (``_core.FastCalls`` bound on a running tracker):
it delivers what the Python methods deliver, and hands every other case back to them."""

from __future__ import annotations

import inspect
import os
from typing import Any

import pytest

from ciotrack import Tracker
from ciotrack.emulator import Emulator
from ciotrack.errors import ConfigError, InvalidValueError, SerializationError

from conftest import API_KEY, SITE_ID, TrackerFactory

FAST = ("track", "track_anonymous", "page", "screen", "identify")


def _is_native(tracker: Tracker) -> bool:
    return all(type(getattr(tracker, name)).__name__ == "builtin_function_or_method" for name in FAST)


def _is_fast(tracker: Tracker) -> bool:
    fast = vars(tracker).get("_fast_calls")
    return _is_native(tracker) and fast is not None and fast.live


def test_bound_after_the_first_call_and_delivers_every_kind(make_tracker: TrackerFactory,
                                                             emulator: Emulator) -> None:
    tracker = make_tracker()
    identify = tracker.identify  # taken before the first call: native, not active yet
    assert _is_native(tracker) and not _is_fast(tracker)
    identify("1", {"plan": "free"})  # the first call starts the senders (Python method) and activates
    assert _is_fast(tracker)
    tracker.track("1", "checkout", {"total": 12.5}, id="01ARZ3NDEKTSV4RRFFQ69G5FAV", timestamp=1_700_000_000)
    tracker.track(2, "numeric")
    tracker.page("1", "/pricing", {"ref": "ad"})
    tracker.screen("1", "home")
    tracker.track_anonymous("anon-1", "visit", {"n": 1})
    tracker.identify("1", plan="pro", seats=3)  # keywords only
    tracker.identify("1", {"plan": "team"}, seats=5)  # dict and keywords: merged by the Python method
    tracker.identify("1", {"plan": "team"}, seats=5)  # identical: deduped, returns None quietly
    assert tracker.flush(timeout=10)
    state = emulator.state()
    person = state["people"]["1"]
    assert person["attributes"] == {"plan": "team", "seats": 5}
    assert [(e["type"], e["name"]) for e in person["events"]] == [("event", "checkout"), ("page", "/pricing"),
                                                                   ("screen", "home")]
    checkout = person["events"][0]
    assert checkout["id"] == "01ARZ3NDEKTSV4RRFFQ69G5FAV" and checkout["timestamp"] == 1_700_000_000
    assert checkout["data"] == {"total": 12.5}
    assert [e["name"] for e in state["people"]["2"]["events"]] == ["numeric"]
    assert [e["data"] for e in state["anonymous_events"]["anon-1"]] == [{"n": 1}]
    counters = tracker.stats()["counters"]
    assert counters["deduped_identify"] == 1 and counters["delivered"] == counters["accepted"] == 8


def test_errors_are_the_python_methods_own(make_tracker: TrackerFactory) -> None:
    tracker = make_tracker()
    tracker.track("1", "start")
    assert _is_fast(tracker)
    for call in (lambda m: m("1", ""), lambda m: m("1", "e", {"s": {1, 2}}), lambda m: m(True, "e"),
                 lambda m: m("1", "e", id="not-a-ulid"), lambda m: m("1", "e", timestamp=float("nan"))):
        with pytest.raises((InvalidValueError, SerializationError)) as fast:
            call(tracker.track)
        with pytest.raises((InvalidValueError, SerializationError)) as slow:
            call(lambda *a, **k: Tracker.track(tracker, *a, **k))
        assert type(fast.value) is type(slow.value) and str(fast.value) == str(slow.value)
    with pytest.raises(ConfigError, match="region 'eu' is not enabled") as fast_region:
        tracker.track("1", "e", region="eu")  # region= goes back to the Python method
    assert "regions in use" in str(fast_region.value)
    assert tracker.stats()["counters"]["invalid"] == 10


def test_region_argument_takes_the_python_routing(make_tracker: TrackerFactory, emulator: Emulator) -> None:
    tracker = make_tracker()
    tracker.track("r", "first")
    tracker.track("r", "routed", region="us")
    tracker.identify("r", region="us", plan="x")
    assert tracker.flush(timeout=10)
    person = emulator.state()["people"]["r"]
    assert [e["name"] for e in person["events"]] == ["first", "routed"] and person["attributes"] == {"plan": "x"}


def test_close_restores_the_python_path_even_for_a_held_reference(make_tracker: TrackerFactory,
                                                                 emulator: Emulator) -> None:
    drops: list[tuple[str, int]] = []
    tracker = make_tracker(on_drop=lambda reason, n: drops.append((reason, n)))
    tracker.track("c", "before")
    held = tracker.track
    held_identify = tracker.identify
    tracker.close(timeout=5)
    assert not _is_native(tracker)
    held("c", "after")  # a reference taken while running: dropped and counted like the method
    held_identify("c", {"bad": {1}})  # dropped before validation, as after close today
    tracker.page("c", "/after")
    assert drops == [("closed", 1)] * 3
    assert tracker.stats()["counters"]["dropped_closed"] == 3
    assert [e["name"] for e in emulator.state()["people"]["c"]["events"]] == ["before"]


def test_queue_full_through_the_fast_path_reaches_on_drop(make_tracker: TrackerFactory) -> None:
    drops: list[tuple[str, int]] = []
    tracker = make_tracker(max_queue_ops=3, flush_interval=5.0, on_drop=lambda r, n: drops.append((r, n)))
    tracker.track("f", "e", {"i": 0})
    assert _is_fast(tracker)
    for i in range(1, 10):
        tracker.screen("f", "s", {"i": i})
    counters = tracker.stats()["counters"]
    assert drops and all(reason == "queue_full" for reason, _ in drops)
    assert counters["dropped_full"] == sum(n for _, n in drops) == 10 - counters["accepted"]


def test_every_event_method_raises_alike_on_both_paths_and_names_its_own_fields(
        make_tracker: TrackerFactory) -> None:
    """A None subject, a None or empty name: the same class and message from the native fast path and
    from the Python method (the first call, ``region=``, ``region_for``), so ``except TypeError`` works
    on every tracker; and a page's name is its ``url``."""
    tracker = make_tracker()
    tracker.track("1", "start")
    assert _is_fast(tracker)
    subject = {"track": "customer_id", "page": "customer_id", "screen": "customer_id",
               "track_anonymous": "anonymous_id"}
    for method, subject_field in subject.items():
        name_field = "url" if method == "page" else "name"
        expected = [(SerializationError, f"{subject_field}: must be a str, not 'NoneType'"),
                    (SerializationError, f"{name_field}: must be a str, not 'NoneType'"),
                    (InvalidValueError, f"{name_field}: must not be empty")]
        for args, (error, message) in zip(((None, "e"), ("1", None), ("1", " ")), expected, strict=True):
            with pytest.raises(error) as fast:
                getattr(tracker, method)(*args)
            with pytest.raises(error) as slow:
                getattr(Tracker, method)(tracker, *args)
            assert str(fast.value) == str(slow.value) == message, (method, args)
            assert isinstance(fast.value, TypeError if error is SerializationError else ValueError)


def test_not_bound_with_region_for(emulator: Emulator) -> None:
    homes: dict[Any, str] = {}
    with Tracker(SITE_ID, API_KEY, endpoints={"us": emulator.url}, region_for=homes, rate_limit=0,
                 flush_interval=0.02) as tracker:
        tracker.track("1", "e")
        assert "track" not in vars(tracker) and not _is_native(tracker)
        assert tracker.flush(timeout=10)
    assert emulator.wait_events(1)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_rebuilds_on_the_python_path(make_tracker: TrackerFactory, emulator: Emulator) -> None:
    tracker = make_tracker()
    tracker.track("p", "parent")
    assert _is_fast(tracker)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            was_fast = _is_fast(tracker)  # rebuilt at fork: a new, inactive FastCalls on the new core
            tracker.track("k", "from-child")
            code = 0 if not was_fast and _is_fast(tracker) and tracker.flush(timeout=10) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    tracker.track("p", "parent-again")
    assert tracker.flush(timeout=10)
    people = emulator.state()["people"]
    assert [e["name"] for e in people["p"]["events"]] == ["parent", "parent-again"]
    assert [e["name"] for e in people["k"]["events"]] == ["from-child"]


def test_a_subclass_override_is_kept(make_tracker: TrackerFactory, emulator: Emulator) -> None:
    class Tagging(Tracker):
        def track(self, customer_id: Any, name: str, data: Any = None, **kwargs: Any) -> None:
            super().track(customer_id, name, {**(data or {}), "tagged": True}, **kwargs)

    with Tagging(SITE_ID, API_KEY, endpoint=emulator.url, rate_limit=0, flush_interval=0.02) as tracker:
        tracker.track("t", "one")
        tracker.track("t", "two", {"n": 2})
        tracker.page("t", "/p")  # not overridden: native
        assert type(tracker.page).__name__ == "builtin_function_or_method"
        assert type(tracker.track).__name__ == "method"
        assert tracker.flush(timeout=10)
    events = emulator.state()["people"]["t"]["events"]
    assert [(e["name"], e["data"]) for e in events] == [("one", {"tagged": True}), ("two", {"n": 2, "tagged": True}),
                                                         ("/p", {})]


def test_the_entry_reads_positional_calls_and_hands_every_other_shape_to_the_method(
        make_tracker: TrackerFactory, emulator: Emulator) -> None:
    """``tracker.track`` & co are ``FastCalls.entry`` functions: a positional call goes straight to the
    native code; a keyword, or a wrong count, goes to the pyo3 method, with its parsing and errors."""
    tracker = make_tracker()
    tracker.track("1", "start")
    fast = vars(tracker)["_fast_calls"]
    assert all(getattr(tracker, name).__self__ is fast and getattr(tracker, name).__name__ == name for name in FAST)
    # Introspection (inspect.signature, mock.create_autospec) sees the method's parameters.
    assert all(inspect.signature(getattr(tracker, name)) == inspect.signature(getattr(fast, name)) for name in FAST)
    assert list(inspect.signature(tracker.track).parameters) == ["customer_id", "name", "data", "id", "timestamp",
                                                                  "region"]
    tracker.track("1", "positional", None)  # None for data: as if left out
    tracker.track("1", "keywords", data={"k": 1})  # a keyword: the method
    tracker.page("1", "/p", {"ref": "x"})
    tracker.identify("2", None)
    tracker.identify("3", {"plan": "pro"})
    # Each of the five hands a wrong count to its own method (the error names it), and a keyword
    # call of each kind is delivered as that kind.
    for name in FAST:
        too_many = ("1", {}, {}) if name == "identify" else ("1", "e", None, None)
        for bad in ((), too_many):
            with pytest.raises(TypeError) as raw:
                getattr(tracker, name)(*bad)
            with pytest.raises(TypeError) as method:
                getattr(fast, name)(*bad)
            assert str(raw.value) == str(method.value) and f"{name}()" in str(raw.value), (name, bad)
    with pytest.raises(TypeError) as raw:
        tracker.track("1")
    with pytest.raises(TypeError) as method:
        fast.track("1")
    assert str(raw.value) == str(method.value)
    tracker.track_anonymous("anon-9", "kw-visit", data={"n": 9})
    tracker.screen("1", "kw-screen", data={"s": 1})
    tracker.page("1", "/kw", data={"p": 1})
    tracker.identify("4", {"plan": "kw"}, region=None)
    with pytest.raises(TypeError, match="nope"):
        tracker.track("1", "e", nope=1)
    with pytest.raises(ValueError, match="no fast entry named 'flush'"):
        fast.entry("flush")
    assert tracker.flush(timeout=10)
    people = emulator.state()["people"]
    events = {e["name"]: e for e in people["1"]["events"]}
    assert set(events) == {"start", "positional", "keywords", "/p", "kw-screen", "/kw"}
    assert events["keywords"]["data"] == {"k": 1} and events["/p"]["data"] == {"ref": "x"}
    assert (events["kw-screen"]["type"], events["kw-screen"]["data"]) == ("screen", {"s": 1})
    assert (events["/kw"]["type"], events["/kw"]["data"]) == ("page", {"p": 1})
    assert [e["data"] for e in emulator.state()["anonymous_events"]["anon-9"]] == [{"n": 9}]
    assert "2" in people and people["3"]["attributes"] == {"plan": "pro"}
    assert people["4"]["attributes"] == {"plan": "kw"}
