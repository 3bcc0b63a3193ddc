"""WebhookHandler: fast ack, dedup (in memory and in a real Redis), retries then parking, inline mode,
back-pressure, and the answers Customer.io gets."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter

import pytest
from webhook_helpers import SECRET, in_forked_child, signed

from ciotrack.webhooks import Claim, Event, MemoryDedup, Parked, RedisDedup, WebhookHandler
from ciotrack.webhooks.samples import event_payload


class Recorder:
    def __init__(self, fail_first: int = 0, always_fail: bool = False, block: threading.Event | None = None) -> None:
        self.calls: Counter[str] = Counter()
        self.events: list[Event] = []
        self.fail_first = fail_first
        self.always_fail = always_fail
        self.block = block
        self.lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        if self.block is not None:
            self.block.wait(10)
        with self.lock:
            self.calls[event.event_id] += 1
            n = self.calls[event.event_id]
        if self.always_fail or n <= self.fail_first:
            raise RuntimeError(f"downstream is down (attempt {n})")
        with self.lock:
            self.events.append(event)


def test_answers_200_at_once_and_handles_in_the_background() -> None:
    gate = threading.Event()
    recorder = Recorder(block=gate)
    with WebhookHandler(SECRET, recorder, workers=2) as handler:
        body, headers = signed(event_payload("email", "sent", event_id="e-1"))
        response = handler.handle(body, headers)
        assert (response.status, json.loads(response.body)) == (200, {"ok": True})
        assert recorder.events == [] and handler.stats()["pending"] == 1  # answered before handling
        gate.set()
        assert handler.drain(5)
    assert [e.event_id for e in recorder.events] == ["e-1"]
    assert handler.stats()["handled"] == 1


def test_duplicates_are_delivered_once_to_the_handler_even_when_concurrent() -> None:
    recorder = Recorder()
    handler = WebhookHandler(SECRET, recorder, workers=4)
    payloads = [event_payload("push", "delivered", event_id=f"e-{n}") for n in range(50)]
    statuses: list[int] = []

    def post_all() -> None:
        for payload in payloads:
            body, headers = signed(payload)  # re-signed each time, as Customer.io's retries are
            statuses.append(handler.handle(body, headers).status)

    threads = [threading.Thread(target=post_all) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert handler.close(5)
    assert statuses.count(200) == 200
    assert sorted(recorder.calls.values()) == [1] * 50
    assert handler.stats()["duplicates"] == 150 and handler.stats()["handled"] == 50


def test_a_raising_handler_is_retried_then_succeeds_and_is_answered_200() -> None:
    recorder = Recorder(fail_first=2)
    with WebhookHandler(SECRET, recorder, retries=3, retry_backoff=0.001) as handler:
        response = handler.handle(*signed(event_payload(event_id="flaky")))
        assert response.status == 200
        assert handler.drain(5)
    assert recorder.calls["flaky"] == 3 and len(recorder.events) == 1
    assert handler.stats()["retried"] == 2 and not handler.parked


def test_a_handler_that_keeps_raising_is_parked_never_answered_5xx() -> None:
    parked: list[Parked] = []
    recorder = Recorder(always_fail=True)
    with WebhookHandler(SECRET, recorder, retries=2, retry_backoff=0.001, on_parked=parked.append) as handler:
        response = handler.handle(*signed(event_payload(event_id="doomed")))
        assert response.status == 200
        assert handler.drain(5)
        # The same event again (Customer.io would not resend it: it got a 200) is a duplicate.
        assert handler.handle(*signed(event_payload(event_id="doomed"))).status == 200
    assert recorder.calls["doomed"] == 3
    assert len(parked) == 1 and list(handler.parked) == parked
    assert parked[0].event is not None and parked[0].event.event_id == "doomed"
    assert parked[0].attempts == 3 and "downstream is down (attempt 3)" in parked[0].error
    assert handler.stats()["parked"] == 1 and handler.stats()["duplicates"] == 1


def test_inline_mode_answers_the_failure_status_and_lets_the_retry_through() -> None:
    recorder = Recorder(fail_first=1)
    handler = WebhookHandler(SECRET, recorder, inline=True, retries=0, failure_status=503)
    payload = event_payload(event_id="inline-1")
    first = handler.handle(*signed(payload))
    assert first.status == 503 and recorder.events == []
    second = handler.handle(*signed(payload))  # Customer.io's retry: the claim was given back
    assert second.status == 200 and [e.event_id for e in recorder.events] == ["inline-1"]
    assert handler.stats()["failed"] == 1


def test_rejected_webhooks_get_401_with_the_reason_only() -> None:
    handler = WebhookHandler(SECRET, Recorder())
    body, headers = signed(event_payload(), secret="forged")
    response = handler.handle(body, headers)
    assert response.status == 401 and json.loads(response.body) == {"error": "bad_signature"}
    stale_body, stale_headers = signed(event_payload(), timestamp=int(time.time()) - 3600)
    assert json.loads(handler.handle(stale_body, stale_headers).body) == {"error": "timestamp_too_old"}
    assert handler.stats()["rejected"] == 2 and handler.stats()["rejected:bad_signature"] == 1
    assert SECRET not in repr(handler)


def test_a_signed_body_that_is_not_an_event_is_parked_and_acknowledged() -> None:
    parked: list[tuple[Parked, str]] = []
    handler = WebhookHandler(SECRET, Recorder(), on_parked=lambda p: parked.append(
        (p, threading.current_thread().name)))
    response = handler.handle(*signed(b'{"no_event_id":true}'))
    assert response.status == 200 and json.loads(response.body)["parked"] is True
    assert handler.drain(5)
    [(parked_one, thread)] = parked
    assert parked_one.event is None and parked_one.body == b'{"no_event_id":true}'
    assert handler.parked[0] is parked_one
    # The user's callback ran on a handler thread, not before the answer (an ASGI server's event loop).
    assert thread != threading.current_thread().name and thread.startswith("ciotrack-webhooks")


def test_back_pressure_answers_503_and_gives_the_claim_back() -> None:
    gate = threading.Event()
    recorder = Recorder(block=gate)
    handler = WebhookHandler(SECRET, recorder, workers=1, max_pending=2)
    statuses = [handler.handle(*signed(event_payload(event_id=f"bp-{n}"))).status for n in range(3)]
    assert statuses == [200, 200, 503]
    gate.set()
    assert handler.drain(5)
    # The refused one is accepted when Customer.io retries it.
    assert handler.handle(*signed(event_payload(event_id="bp-2"))).status == 200
    assert handler.close(5)
    assert sorted(recorder.calls) == ["bp-0", "bp-1", "bp-2"]
    assert handler.handle(*signed(event_payload(event_id="late"))).status == 503  # closed


def test_memory_dedup_is_bounded_and_honours_its_ttl() -> None:
    dedup = MemoryDedup(max_size=3)
    assert [dedup.claim(i) for i in "abcd"] == [Claim.FIRST] * 4
    assert len(dedup) == 3 and dedup.claim("a") is Claim.FIRST  # evicted, so new again
    assert dedup.claim("d") is Claim.DUPLICATE
    dedup.release("d")
    assert dedup.claim("d") is Claim.FIRST
    short = MemoryDedup(ttl=0.05)
    assert short.claim("x") and not short.claim("x")
    time.sleep(0.08)
    assert short.claim("x")


def test_redis_dedup_set_nx_ex_shared_by_two_handlers(redis_url: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    prefix = f"test:{time.monotonic_ns()}:"
    recorders = [Recorder(), Recorder()]
    handlers = [WebhookHandler(SECRET, r, dedup=RedisDedup(url=redis_url, prefix=prefix, ttl=60)) for r in recorders]
    for n in range(20):
        body, headers = signed(event_payload(event_id=f"fleet-{n}"))
        for handler in handlers:  # the same webhook reaches both processes of a fleet
            assert handler.handle(body, headers).status == 200
    for handler in handlers:
        assert handler.close(5)
    handled = Counter(e.event_id for r in recorders for e in r.events)
    assert sorted(handled) == sorted(f"fleet-{n}" for n in range(20)) and set(handled.values()) == {1}
    ttl = client.ttl(prefix + "fleet-0")
    assert 0 < ttl <= 60
    assert client.get(prefix + "fleet-0") == b"1"


def test_redis_dedup_fails_open_or_closed_when_redis_is_gone() -> None:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry
    from webhook_helpers import free_port

    dead = redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    open_dedup = RedisDedup(dead)
    assert open_dedup.claim("x") is Claim.FIRST and open_dedup.claim("x", 5.0) is Claim.FIRST
    assert open_dedup.errors == 2
    closed = RedisDedup(dead, fail_open=False)
    with pytest.raises(redis.ConnectionError):
        closed.claim("x")
    # Behind a handler: open processes the webhook, closed answers 503 (Customer.io retries later).
    received: list[Event] = []
    with WebhookHandler(SECRET, received.append, dedup=open_dedup) as handler:
        assert handler.handle(*signed(event_payload(event_id="r-1"))).status == 200
    with WebhookHandler(SECRET, received.append, dedup=closed) as handler:
        assert handler.handle(*signed(event_payload(event_id="r-2"))).status == 503
        assert handler.stats()["dedup_failed"] == 1
    assert [e.event_id for e in received] == ["r-1"]


def test_dispatch_to_a_redis_stream_then_consume_it_in_a_group(redis_url: str) -> None:
    import redis

    from ciotrack.webhooks.streams import RedisStreamDispatch, ensure_group, read_events

    client = redis.Redis.from_url(redis_url)
    stream = f"test:webhooks:{time.monotonic_ns()}"
    handler = WebhookHandler(SECRET, dispatch=RedisStreamDispatch(url=redis_url, stream=stream),
                             dedup=RedisDedup(client, prefix=stream + ":seen:", ttl=60))
    payloads = [event_payload("email", "delivered", event_id=f"s-{n}", extra_field=n) for n in range(5)]
    for payload in payloads + payloads[:2]:  # two retries from Customer.io
        assert handler.handle(*signed(payload)).status == 200
    assert handler.stats()["dispatched"] == 5 and handler.stats()["duplicates"] == 2
    ensure_group(client, "workers", stream)
    ensure_group(client, "workers", stream)  # idempotent
    got = list(read_events(client, "workers", "w1", stream=stream, block_ms=100))
    assert [e.event_id for _, e in got] == [f"s-{n}" for n in range(5)]
    assert got[3][1].to_dict() == payloads[3] and got[3][1].data["extra_field"] == 3
    client.xack(stream, "workers", *[entry for entry, _ in got])
    assert client.xpending(stream, "workers")["pending"] == 0


def test_a_failed_dispatch_answers_503_and_lets_the_retry_through() -> None:
    attempts: list[str] = []

    def flaky_queue(event: Event) -> None:
        attempts.append(event.event_id)
        if len(attempts) == 1:
            raise ConnectionError("queue unreachable")

    handler = WebhookHandler(SECRET, dispatch=flaky_queue)
    payload = event_payload(event_id="d-1")
    assert handler.handle(*signed(payload)).status == 503
    assert handler.handle(*signed(payload)).status == 200
    assert attempts == ["d-1", "d-1"] and handler.stats()["dispatch_failed"] == 1
    with pytest.raises(ValueError):
        WebhookHandler(SECRET)


def test_a_forked_child_gets_a_pool_of_its_own() -> None:
    recorder = Recorder()
    handler = WebhookHandler(SECRET, recorder)
    assert handler.handle(*signed(event_payload(event_id="parent"))).status == 200
    assert handler.drain(5)

    def child() -> str:  # its pool's threads were not copied by fork()
        ok = handler.handle(*signed(event_payload(event_id="child"))).status == 200 and handler.drain(5)
        return f"{ok}:" + ",".join(e.event_id for e in recorder.events)

    assert in_forked_child(child) == "True:parent,child"
    handler.close(5)
