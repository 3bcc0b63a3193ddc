"""Tracker over real sockets to the emulator: request shapes, volume, validation, retries, partial failures."""

from __future__ import annotations

import base64
import json
import math
import threading
import time
from collections import Counter
from datetime import UTC, date, datetime
from decimal import Decimal
from types import MappingProxyType
from typing import Any

import pytest

from ciotrack import _core
from ciotrack.emulator import Emulator
from ciotrack.errors import DeliveryError, InvalidValueError, LimitError, SerializationError
from ciotrack.tracker import Tracker

from conftest import API_KEY, SITE_ID, RecordingServer, TrackerFactory, all_events, flush_async_counting_loop_ticks

ULID = "01HV5Z9Q8N6W3X2Y1T0S9R8P7A"


def _every_method(tracker: Tracker) -> None:
    tracker.identify("42", {"plan": "pro"}, email="a@example.com")
    tracker.track("42", "checkout", {"total": 12.5}, id=ULID, timestamp=1_700_000_000)
    tracker.track_anonymous("anon-1", "visit", {"ref": "ad"})
    tracker.page("42", "/pricing", {"from": "nav"})
    tracker.screen("42", "Home")
    tracker.add_device("42", "tok-1", "ios", last_used=1_700_000_100, attributes={"app_version": "1.2"})
    tracker.delete_device("42", "tok-1")
    tracker.suppress("43")
    tracker.unsuppress("43")
    tracker.merge_customers("id", "42", "email", "old@example.com")
    tracker.send_operation({"type": "person", "identifiers": {"id": "44"}, "action": "identify",
                            "attributes": {"raw": True}})
    tracker.delete("45")


def test_every_method_sends_one_v2_batch_with_the_documented_shapes(make_tracker: TrackerFactory,
                                                                    emulator: Emulator) -> None:
    tracker = make_tracker(flush_interval=5.0)  # one batch: nothing leaves before flush()
    _every_method(tracker)
    assert tracker.flush(timeout=5)

    # The emulator logs a request after answering it: wait for the log, not only for the answer.
    assert emulator.wait_for(lambda: len(emulator.requests()) >= 1, timeout=5)
    posts = [r for r in emulator.requests() if r["path"].startswith("/api/")]
    assert [(r["method"], r["path"], r["site_id"], r["status"]) for r in posts] == [
        ("POST", "/api/v2/batch", SITE_ID, 200)]
    assert posts[0]["headers"]["Content-Type"] == "application/json"
    ops = json.loads(posts[0]["body"])["batch"]
    assert [(op.get("action"), op.get("identifiers")) for op in ops] == [
        ("identify", {"id": "42"}), ("event", {"id": "42"}), ("event", {"anonymous_id": "anon-1"}),
        ("page", {"id": "42"}), ("screen", {"id": "42"}), ("add_device", {"id": "42"}), ("delete_device", {"id": "42"}),
        ("suppress", {"id": "43"}), ("unsuppress", {"id": "43"}), ("merge", None), ("identify", {"id": "44"}),
        ("delete", {"id": "45"})]
    assert all(op["type"] == "person" for op in ops)
    identify, event, anonymous, page, screen, add_device, delete_device = ops[:7]
    assert identify["attributes"] == {"plan": "pro", "email": "a@example.com"}
    assert isinstance(identify["timestamp"], int)
    assert (event["name"], event["id"], event["timestamp"], event["attributes"]) == (
        "checkout", ULID, 1_700_000_000, {"total": 12.5})
    assert anonymous["identifiers"] == {"anonymous_id": "anon-1"} and _core.is_ulid(anonymous["id"])
    assert (page["name"], page["attributes"]) == ("/pricing", {"from": "nav"})
    assert screen["name"] == "Home" and "attributes" not in screen
    assert add_device["device"] == {"token": "tok-1", "platform": "ios", "last_used": 1_700_000_100,
                                    "attributes": {"app_version": "1.2"}}
    assert delete_device["device"] == {"token": "tok-1"}
    assert ops[9]["primary"] == {"id": "42"} and ops[9]["secondary"] == {"email": "old@example.com"}
    assert ops[10]["attributes"] == {"raw": True}

    state = emulator.state()
    assert state["people"]["42"]["attributes"]["plan"] == "pro"
    assert [e["name"] for e in state["people"]["42"]["events"]] == ["checkout", "/pricing", "Home"]
    assert state["anonymous_events"]["anon-1"][0]["name"] == "visit"
    assert "45" not in state["people"]


def test_request_carries_basic_auth_user_agent_and_json(recorder: RecordingServer) -> None:
    with Tracker(SITE_ID, API_KEY, endpoint=recorder.url, rate_limit=0, flush_interval=5.0) as tracker:
        tracker.track("7", "signup")
        assert tracker.flush(timeout=5)
    [request] = recorder.requests
    assert request.request_line == "POST /api/v2/batch HTTP/1.1"
    assert request.headers["Authorization"] == "Basic " + base64.b64encode(f"{SITE_ID}:{API_KEY}".encode()).decode()
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["User-Agent"].startswith("ciotrack/")
    assert request.headers.get("Connection", "keep-alive").lower() == "keep-alive"
    [op] = json.loads(request.body)["batch"]
    assert (op["identifiers"], op["action"], op["name"]) == ({"id": "7"}, "event", "signup")


def test_100k_events_delivered_none_lost_ids_unique_ulids(make_tracker: TrackerFactory, emulator: Emulator) -> None:
    tracker = make_tracker(senders=2)
    total = 100_000
    for i in range(total):
        tracker.track(f"user-{i % 1000}", "tick", {"i": i})
    assert tracker.flush(timeout=60)
    events = all_events(emulator.state())
    assert len(events) == total
    ids = [e["id"] for e in events]
    assert len(set(ids)) == total
    assert all(_core.is_ulid(i) for i in ids)
    assert sorted(e["data"]["i"] for e in events) == list(range(total))
    counters = tracker.stats()["counters"]
    assert counters["delivered"] == total
    assert emulator.stats()["duplicates"] == 0


@pytest.mark.parametrize(("call", "error", "fragment"), [
    (lambda t: t.track("1", "e", {"items": [1, 2, {3}]}), SerializationError, "['items'][2]"),
    (lambda t: t.track("1", "e", {"x": math.nan}), InvalidValueError, "['x']"),
    (lambda t: t.track("1", "e", {"n": 2**70}), InvalidValueError, "['n']"),
    (lambda t: t.track("1", "e", {"d": Decimal("1E+400")}), InvalidValueError, "['d']"),
    (lambda t: t.identify("1", {"bio": "x" * 1200}), LimitError, "bio"),
    (lambda t: t.identify("", {"a": 1}), InvalidValueError, "customer_id"),
    (lambda t: t.identify("x" * 151), LimitError, "customer_id"),
    (lambda t: t.track("1", "e", id="not-a-ulid"), InvalidValueError, "id"),
    (lambda t: t.track("1", ""), InvalidValueError, "name"),
    (lambda t: t.track("1", "n" * 101), LimitError, "name"),
    (lambda t: t.add_device("1", "tok", "windows"), InvalidValueError, "platform"),
    (lambda t: t.add_device("1", "tok", "ios", last_used="x"), SerializationError, "last_used"),
    (lambda t: t.add_device("1", "tok", "ios", last_used=True), SerializationError, "last_used"),
    (lambda t: t.add_device("1", "tok", "ios", last_used=date(2024, 1, 1)), SerializationError, "last_used"),
    (lambda t: t.add_device("1", "tok", "ios", last_used=2**70), InvalidValueError, "last_used"),
    (lambda t: t.add_device("1", "tok", "ios", last_used=math.inf), InvalidValueError, "last_used"),
    (lambda t: t.add_device("1", "tok", "ios", attributes=[1]), SerializationError, "attributes"),
    (lambda t: t.add_device("1", "tok", "ios", attributes={"os": {"name": "ios"}}), SerializationError,
     "attributes['os']"),
    (lambda t: t.add_device("1", "tok", "ios", attributes={"tags": ["a"]}), SerializationError, "attributes['tags']"),
    (lambda t: t.merge_customers("phone", "1", "id", "2"), InvalidValueError, "primary_id_type"),
])
def test_bad_input_raises_the_documented_error_and_keeps_queued_events(
        make_tracker: TrackerFactory, emulator: Emulator, call: Any, error: type[Exception], fragment: str) -> None:
    tracker = make_tracker(flush_interval=5.0)
    for i in range(3):
        tracker.track("keep", "before", {"i": i})
    with pytest.raises(error) as raised:
        call(tracker)
    assert fragment in str(raised.value)
    tracker.track("keep", "after")
    assert tracker.flush(timeout=5)
    names = [e["name"] for e in emulator.state()["people"]["keep"]["events"]]
    assert names == ["before", "before", "before", "after"]


def test_add_device_takes_every_documented_last_used_and_flat_attributes(make_tracker: TrackerFactory,
                                                                         emulator: Emulator) -> None:
    errors: list[DeliveryError] = []
    tracker = make_tracker(on_error=errors.append)
    tracker.add_device("dev", "tok-int", "ios", last_used=1_700_000_000)
    tracker.add_device("dev", "tok-float", "android", last_used=1_700_000_000.9)
    tracker.add_device("dev", "tok-dt", "ios", last_used=datetime(2024, 1, 1, tzinfo=UTC),
                       attributes=MappingProxyType({"app_version": "1.2", "push_enabled": True}))
    assert tracker.flush(timeout=5)
    assert errors == []
    devices = emulator.state()["people"]["dev"]["devices"]
    assert {token: d["last_used"] for token, d in devices.items()} == {
        "tok-int": 1_700_000_000, "tok-float": 1_700_000_000, "tok-dt": 1_704_067_200}
    assert devices["tok-dt"]["attributes"] == {"app_version": "1.2", "push_enabled": True}


def test_500s_and_resets_are_retried_with_the_same_ids(make_tracker: TrackerFactory, emulator: Emulator) -> None:
    emulator.set_faults(error_rate=0.3, reset_rate=0.2, apply_then_drop_rate=0.2, seed=7)
    tracker = make_tracker(batch_bytes=4096, max_retries=50, retry_budget=60)
    total = 2000
    for i in range(total):
        tracker.track(f"u{i % 50}", "retry-me", {"i": i})
    assert tracker.flush(timeout=30)
    emulator.clear_faults()

    events = all_events(emulator.state())
    assert sorted(e["data"]["i"] for e in events) == list(range(total))  # each exactly once
    stats = emulator.stats()
    assert stats["faults"]["error"] > 0 and stats["faults"]["reset"] > 0 and stats["faults"]["apply_then_drop"] > 0
    # Re-sent batches after apply-then-drop carried the same event ids: the emulator's dedup caught them.
    assert stats["duplicates"] > 0
    counters = tracker.stats()["counters"]
    assert counters["retried"] > 0
    assert counters["delivered"] == total
    assert counters.get("failed", 0) == 0


def test_207_partial_failures_reach_on_error_with_the_right_ops(make_tracker: TrackerFactory,
                                                                emulator: Emulator) -> None:
    errors: list[DeliveryError] = []
    tracker = make_tracker(on_error=errors.append, flush_interval=5.0)
    tracker.track("1", "good-1")
    tracker.send_operation({"type": "person", "identifiers": {"id": "2"}, "action": "event", "name": ""})
    tracker.track("3", "good-2")
    tracker.send_operation({"type": "person", "identifiers": {"id": "4"}, "action": "levitate"})
    assert tracker.flush(timeout=5)

    failed = sorted(json.loads(op)["identifiers"]["id"] for err in errors for op in err.ops)
    assert failed == ["2", "4"]
    assert all(err.status == 207 and err.attempts == 1 and err.region == "us" for err in errors)
    assert all(err.reason for err in errors)
    state = emulator.state()
    assert [e["name"] for e in state["people"]["1"]["events"]] == ["good-1"]
    assert [e["name"] for e in state["people"]["3"]["events"]] == ["good-2"]
    counters = tracker.stats()["counters"]
    assert counters["delivered"] == 2 and counters["failed"] == 2


def test_413_splits_the_batch_in_halves_until_it_fits(recorder: RecordingServer) -> None:
    limit = 3000

    def strict(rec: Any) -> tuple[int, dict[str, str], bytes]:
        return (413, {}, b'{"errors":[]}') if len(rec.body) > limit else (200, {}, b"{}")

    recorder.responder = strict
    with Tracker(SITE_ID, API_KEY, endpoint=recorder.url, rate_limit=0, flush_interval=5.0) as tracker:
        for i in range(100):
            tracker.track("split", "e", {"i": i})
        assert tracker.flush(timeout=10)
        counters = tracker.stats()["counters"]
    accepted = [json.loads(r.body)["batch"] for r in recorder.requests if len(r.body) <= limit]
    assert sorted(op["attributes"]["i"] for ops in accepted for op in ops) == list(range(100))
    assert counters["split"] >= 3 and counters["requests_413"] >= 3
    assert counters["delivered"] == 100


def test_429_retry_after_pauses_every_sender(make_tracker: TrackerFactory, emulator: Emulator) -> None:
    # Without honouring Retry-After (1 s) the 10 ms backoff would retry dozens of times inside the storm.
    tracker = make_tracker(senders=2, rate_limit=1000, rate_burst=10, batch_bytes=2048, flush_interval=5.0)
    emulator.storm_429(0.6, retry_after=1)
    for i in range(200):
        tracker.track(f"u{i}", "storm", {"i": i})
    assert tracker.flush(timeout=15)
    stats = emulator.stats()
    assert 1 <= stats["faults"]["storm_429"] <= 2  # at most one request per sender met the storm
    assert len(all_events(emulator.state())) == 200
    counters = tracker.stats()["counters"]
    assert counters["requests_429"] == stats["faults"]["storm_429"]
    assert counters["delivered"] == 200


def test_429_pauses_the_bucket_for_senders_that_did_not_get_it(recorder: RecordingServer) -> None:
    # Request 1 gets an immediate 429 (Retry-After: 1); every other request takes 0.2 s and succeeds.
    # The second sender's request already under way completes normally, but no NEW request may start
    # within ~1 s of the 429: the shared bucket is paused for every sender.
    refused: list[Any] = []
    lock = threading.Lock()

    def responder(rec: Any) -> tuple[int, dict[str, str], bytes]:
        with lock:
            first = not refused
            if first:
                refused.append(rec)
        if first:
            return 429, {"Retry-After": "1"}, b"{}"
        time.sleep(0.2)
        return 200, {}, b"{}"

    recorder.responder = responder
    with Tracker(SITE_ID, API_KEY, endpoint=recorder.url, senders=2, rate_limit=1000, rate_burst=10,
                 batch_bytes=2048, flush_interval=5.0, backoff_base=0.01) as tracker:
        for i in range(60):  # ~4 batches
            tracker.track(f"u{i}", "pause", {"i": i})
        assert tracker.flush(timeout=15)
    [rejected] = refused
    others = [r for r in recorder.requests if r is not rejected]
    assert len(others) >= 4
    assert sum(1 for r in others if r.at - rejected.at < 0.9) <= 1
    delivered = [op["attributes"]["i"] for r in others for op in json.loads(r.body)["batch"]]
    assert sorted(delivered) == list(range(60))  # the refused batch was re-sent, nothing twice


def test_delivery_error_after_the_retry_budget(make_tracker: TrackerFactory, emulator: Emulator) -> None:
    emulator.set_faults(error_rate=1.0, error_statuses=[503])
    errors: list[DeliveryError] = []
    tracker = make_tracker(on_error=errors.append, max_retries=3)
    tracker.track("1", "doomed")
    assert tracker.flush(timeout=10)
    [error] = errors
    assert (error.status, error.attempts, error.region) == (503, 4, "us")
    assert "retries exhausted" in error.reason
    assert json.loads(error.ops[0])["name"] == "doomed"
    assert tracker.stats()["counters"]["failed"] == 1


def test_other_4xx_is_final_without_retry(make_tracker: TrackerFactory, emulator: Emulator) -> None:
    errors: list[DeliveryError] = []
    tracker = make_tracker(api_key="wrong-key", on_error=errors.append)
    tracker.track("1", "unauthorized")
    assert tracker.flush(timeout=5)
    [error] = errors
    assert error.status == 401 and error.attempts == 1
    assert "wrong-key" not in str(error) and "wrong-key" not in repr(error)
    assert emulator.stats()["by_status"] == {"401": 1}


def test_hook_exceptions_never_kill_the_sender(make_tracker: TrackerFactory, emulator: Emulator) -> None:
    def broken(error: DeliveryError) -> None:
        raise RuntimeError("hook bug")

    tracker = make_tracker(on_error=broken, flush_interval=5.0)
    tracker.send_operation({"type": "person", "identifiers": {"id": "1"}, "action": "levitate"})
    assert tracker.flush(timeout=5)
    tracker.track("2", "still-alive")
    assert tracker.flush(timeout=5)
    assert [e["name"] for e in emulator.state()["people"]["2"]["events"]] == ["still-alive"]


def test_calls_after_close_are_dropped_and_counted(make_tracker: TrackerFactory, emulator: Emulator) -> None:
    drops: list[tuple[str, int]] = []
    tracker = make_tracker(on_drop=lambda reason, n: drops.append((reason, n)))
    tracker.track("1", "before")
    tracker.close(timeout=5)
    tracker.close(timeout=5)  # idempotent
    tracker.track("1", "after")
    tracker.identify("1", {"bad": {1, 2}})  # dropped before validation: never raises after close
    assert drops == [("closed", 1), ("closed", 1)]
    assert tracker.stats()["counters"]["dropped_closed"] == 2
    assert [e["name"] for e in emulator.state()["people"]["1"]["events"]] == ["before"]


def test_a_call_racing_close_is_delivered_or_counted_never_left_queued(make_tracker: TrackerFactory,
                                                                        emulator: Emulator) -> None:
    # A call on the Python path (region=) that passed its "open" check just before close() could push after
    # close()'s final drain: accepted, then neither sent nor reported. The core now refuses pushes once
    # closed (CLOSED), which the tracker counts as dropped "closed". The window is a thread switch wide:
    # several closes under a stream of calls from other threads, and a direct push as a racing call makes it.
    for _ in range(5):
        tracker = make_tracker()
        tracker.track("0", "warm-up")
        stop = threading.Event()

        def calls(tracker: Tracker = tracker, stop: threading.Event = stop) -> None:
            i = 0
            while not stop.is_set():
                tracker.track("racer", "e", {"i": i}, region="us")
                i += 1

        threads = [threading.Thread(target=calls) for _ in range(3)]
        for thread in threads:
            thread.start()
        time.sleep(0.05)
        tracker.close(timeout=10)
        stop.set()
        for thread in threads:
            thread.join(10)
        stats = tracker.stats()
        assert sum(stats.queued_ops.values()) == 0 and stats.in_flight_ops == 0
        assert stats.accepted == stats.delivered + stats.failed_total  # nothing accepted is left unaccounted
    code = tracker._core.event(0, "event", "racer", None, "late")  # what a call past its check does next
    assert code == _core.CLOSED and tracker._core.lane(0).drain_ops() == []
    before = stats.dropped.get("closed", 0)
    tracker._refused(code, "event")
    assert tracker.stats().dropped["closed"] == before + 1


def test_queue_full_drops_are_reported(make_tracker: TrackerFactory) -> None:
    drops: list[tuple[str, int]] = []
    tracker = make_tracker(max_queue_ops=5, flush_interval=5.0, on_drop=lambda r, n: drops.append((r, n)))
    tracker.flush(timeout=1)  # make sure senders exist but hold the linger
    for i in range(20):
        tracker.track("1", "e", {"i": i})
    assert drops and all(reason == "queue_full" for reason, _ in drops)
    assert tracker.stats()["counters"]["dropped_full"] == sum(n for _, n in drops)


class _ListSpool:
    def __init__(self) -> None:
        self.records: list[tuple[str, list[bytes]]] = []

    def append(self, ops: Any, *, region: str = "us") -> None:
        self.records.append((region, list(ops)))


def test_spool_seam_receives_overflow_and_undeliverable_ops(make_tracker: TrackerFactory,
                                                            emulator: Emulator) -> None:
    drops: list[tuple[str, int]] = []
    spool = _ListSpool()
    tracker = make_tracker(on_full="spool", max_queue_ops=5, flush_interval=5.0,
                           on_drop=lambda r, n: drops.append((r, n)), spool=spool)  # the seam the disk spool plugs into
    for i in range(12):
        tracker.track("s", "overflow", {"i": i})
    assert tracker.flush(timeout=5)
    spooled = [json.loads(op)["attributes"]["i"] for _, ops in spool.records for op in ops]
    delivered = [e["data"]["i"] for e in emulator.state()["people"]["s"]["events"]]
    assert sorted(spooled + delivered) == list(range(12)) and len(delivered) == 5
    assert drops == []
    assert tracker.stats()["counters"]["spooled"] == 7

    emulator.set_faults(error_rate=1.0)  # nothing gets through: close() spools what it could not send
    tracker.track("s", "stranded")
    tracker.close(timeout=0.3)
    assert json.loads(spool.records[-1][1][-1])["name"] == "stranded"


def test_overflow_without_a_spool_is_dropped_and_reported(make_tracker: TrackerFactory) -> None:
    drops: list[tuple[str, int]] = []
    tracker = make_tracker(on_full="spool", max_queue_ops=5, flush_interval=5.0,
                           on_drop=lambda r, n: drops.append((r, n)))
    for i in range(12):
        tracker.track("s", "overflow", {"i": i})
    assert tracker.flush(timeout=5)
    assert sum(n for reason, n in drops if reason == "queue_full") == 7


def test_flush_waits_for_ops_in_flight_and_returns_false_on_timeout(make_tracker: TrackerFactory,
                                                                     emulator: Emulator) -> None:
    emulator.set_faults(latency=0.5)
    tracker = make_tracker()
    tracker.track("1", "slow")
    assert tracker.flush(timeout=0.1) is False
    assert tracker.flush(timeout=5) is True
    assert len(all_events(emulator.state())) == 1


def test_concurrent_callers_lose_nothing(make_tracker: TrackerFactory, emulator: Emulator) -> None:
    tracker = make_tracker(senders=2)
    per_thread, threads = 5000, 4

    def produce(n: int) -> None:
        for i in range(per_thread):
            tracker.track(f"t{n}", "tick", {"i": i})

    workers = [threading.Thread(target=produce, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert tracker.flush(timeout=30)
    per_person = Counter({pid: len(p["events"]) for pid, p in emulator.state()["people"].items()})
    assert per_person == Counter({f"t{n}": per_thread for n in range(threads)})


def test_sync_mode_delivers_on_the_calling_thread(make_tracker: TrackerFactory, emulator: Emulator) -> None:
    tracker = make_tracker(sync=True, batch_bytes=2048)
    for i in range(100):
        tracker.track("s", "sync", {"i": i})
    assert not any(t.name.startswith("ciotrack-sender") for t in threading.enumerate())
    assert emulator.stats()["requests"] == 0  # nothing leaves before flush
    assert tracker.flush(timeout=10)
    assert len(emulator.state()["people"]["s"]["events"]) == 100
    assert emulator.stats()["batches"] > 1


def test_flush_async_does_not_block_the_event_loop(make_tracker: TrackerFactory, emulator: Emulator) -> None:

    emulator.set_faults(latency=0.2)
    tracker = make_tracker()
    tracker.track("a", "async")

    ok, ticks = flush_async_counting_loop_ticks(tracker, 5)
    assert ok and ticks >= 3  # the loop kept running while the request took 200 ms


def test_disabled_tracker_validates_but_sends_nothing(emulator: Emulator) -> None:
    with Tracker(disabled=True, endpoint=emulator.url) as tracker:
        tracker.track("1", "nothing")
        with pytest.raises(SerializationError):
            tracker.track("1", "bad", {"s": {1}})
        assert tracker.flush(timeout=1)
    assert emulator.stats()["requests"] == 0


def test_sender_threads_start_on_first_call_not_in_init(make_tracker: TrackerFactory) -> None:
    def senders() -> int:
        return sum(1 for t in threading.enumerate() if t.name.startswith("ciotrack-sender"))

    before = senders()
    tracker = make_tracker(senders=3)
    assert senders() == before
    tracker.track("1", "go")
    assert senders() == before + 3
    tracker.close(timeout=5)
    deadline = time.monotonic() + 5
    while senders() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert senders() == before


def test_close_from_an_on_error_hook_does_not_deadlock(make_tracker: TrackerFactory, emulator: Emulator) -> None:
    holder: list[Tracker] = []
    closed = threading.Event()

    def close_on_error(error: DeliveryError) -> None:
        holder[0].close()  # on a sender thread, with no timeout
        closed.set()

    tracker = make_tracker(on_error=close_on_error, flush_interval=5.0)
    holder.append(tracker)
    tracker.send_operation({"type": "person", "identifiers": {"id": "1"}, "action": "levitate"})
    tracker.flush(timeout=5)
    assert closed.wait(5)
    assert tracker.closed
