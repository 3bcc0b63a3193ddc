"""Leased claims: inline handling and a hand-off hold an event's id only while they run, so a retry that
arrives meanwhile is told to come back (503), never acknowledged as a duplicate of an attempt that may
still fail; and a claim that cannot be given back (Redis gone) ends by itself. Also: empty signing keys
are refused, and a forked child counts its first concurrent webhooks right."""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

import pytest
from webhook_helpers import SECRET, in_forked_child, signed

from ciotrack.webhooks import Claim, Event, MemoryDedup, RedisDedup, WebhookHandler, sign, verify
from ciotrack.webhooks.samples import event_payload


def test_memory_dedup_leases_end_in_confirm_release_or_time() -> None:
    dedup = MemoryDedup()
    assert dedup.claim("a", lease=5.0) is Claim.FIRST
    assert dedup.claim("a") is Claim.IN_PROGRESS and dedup.claim("a", lease=5.0) is Claim.IN_PROGRESS
    dedup.confirm("a")
    assert dedup.claim("a", lease=5.0) is Claim.DUPLICATE and dedup.claim("a") is Claim.DUPLICATE
    assert dedup.claim("b", lease=5.0) is Claim.FIRST
    dedup.release("b")
    assert dedup.claim("b", lease=0.05) is Claim.FIRST
    time.sleep(0.08)  # a lease nobody confirmed or released (a request that died): it ends by itself
    assert dedup.claim("b") is Claim.FIRST and dedup.claim("b") is Claim.DUPLICATE
    assert bool(Claim.FIRST) and not Claim.DUPLICATE and not Claim.IN_PROGRESS


def test_redis_dedup_leases_are_keys_that_expire_and_confirm_for_the_full_ttl(redis_url: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    prefix = f"lease:{time.monotonic_ns()}:"
    dedup = RedisDedup(url=redis_url, prefix=prefix, ttl=3600)
    assert dedup.claim("e1", lease=30.0) is Claim.FIRST
    assert client.get(prefix + "e1") == b"leased" and 0 < client.pttl(prefix + "e1") <= 30_000
    other_process = RedisDedup(client, prefix=prefix, ttl=3600)
    assert other_process.claim("e1") is Claim.IN_PROGRESS
    dedup.confirm("e1")
    assert client.get(prefix + "e1") == b"1" and 3590 < client.ttl(prefix + "e1") <= 3600
    assert other_process.claim("e1", lease=30.0) is Claim.DUPLICATE
    assert dedup.claim("e2", lease=0.2) is Claim.FIRST
    time.sleep(0.3)
    assert other_process.claim("e2") is Claim.FIRST
    client.set(prefix + "old", b"1")  # an id remembered before leases existed: accepted
    assert dedup.claim("old", lease=30.0) is Claim.DUPLICATE


def _retry_during_first_attempt(handler: WebhookHandler, started: threading.Event, finish: threading.Event
                                ) -> tuple[int, Any]:
    """The first attempt runs in a thread until ``finish``; Customer.io's retry (re-signed) arrives
    meanwhile. Returns the first attempt's status and the retry's answer."""
    payload = event_payload(event_id="slow-1")
    first: list[int] = []
    thread = threading.Thread(target=lambda: first.append(handler.handle(*signed(payload)).status))
    thread.start()
    assert started.wait(5)
    retry = handler.handle(*signed(payload))
    finish.set()
    thread.join(10)
    return first[0], retry


def test_inline_a_retry_during_a_failing_first_attempt_is_told_to_come_back() -> None:
    started, finish = threading.Event(), threading.Event()
    calls: list[str] = []

    def slow_then_fails_once(event: Event) -> None:
        calls.append(event.event_id)
        if len(calls) == 1:
            started.set()
            finish.wait(10)
            raise RuntimeError("downstream timed out")

    handler = WebhookHandler(SECRET, slow_then_fails_once, inline=True, retries=0)
    first, retry = _retry_during_first_attempt(handler, started, finish)
    assert first == 500
    assert (retry.status, json.loads(retry.body)) == (503, {"error": "in_progress"})
    assert dict(retry.headers)["Retry-After"] == "5"
    # The first attempt failed and gave its claim back: the next retry is handled and acknowledged.
    assert handler.handle(*signed(event_payload(event_id="slow-1"))).status == 200
    assert calls == ["slow-1", "slow-1"]
    assert handler.handle(*signed(event_payload(event_id="slow-1"))).body == b'{"ok":true,"duplicate":true}'
    assert handler.stats()["in_progress"] == 1


def test_dispatch_a_retry_during_a_failing_hand_off_is_told_to_come_back() -> None:
    started, finish = threading.Event(), threading.Event()
    handed: list[str] = []

    def hanging_then_failing_queue(event: Event) -> None:
        if not started.is_set():
            started.set()
            finish.wait(10)
            raise ConnectionError("queue went away")
        handed.append(event.event_id)

    handler = WebhookHandler(SECRET, dispatch=hanging_then_failing_queue)
    first, retry = _retry_during_first_attempt(handler, started, finish)
    assert first == 503 and retry.status == 503 and json.loads(retry.body) == {"error": "in_progress"}
    assert handler.handle(*signed(event_payload(event_id="slow-1"))).status == 200
    assert handed == ["slow-1"]


def test_redis_dies_between_claim_and_hand_off_and_the_retry_is_taken_once_the_lease_ends(
        redis_server: Any) -> None:
    """The fleet set-up (RedisDedup + RedisStreamDispatch on one Redis). Redis is killed after the claim:
    the XADD fails, the give-back fails too, and Redis comes back from its append-only file with the
    leased claim in it. The retry meanwhile is told to come back; the one after the lease reaches the
    stream, once."""
    import redis

    from ciotrack.webhooks.streams import RedisStreamDispatch

    url = redis_server.url
    xadd = RedisStreamDispatch(url=url, stream="leases:stream")
    killed: list[bool] = []

    def dispatch(event: Event) -> None:
        if not killed:
            killed.append(True)
            redis_server.kill()
        xadd(event)

    handler = WebhookHandler(SECRET, dispatch=dispatch, dedup=RedisDedup(url=url, prefix="leases:seen:"), lease=1.5)
    payload = event_payload(event_id="killed-1")
    assert handler.handle(*signed(payload)).status == 503
    redis_server.start()
    client = redis.Redis.from_url(url)
    assert client.get("leases:seen:killed-1") == b"leased"  # the give-back was lost with Redis
    assert handler.handle(*signed(payload)).status == 503  # in progress, as far as anyone can tell
    deadline = time.monotonic() + 10
    while client.exists("leases:seen:killed-1") and time.monotonic() < deadline:
        time.sleep(0.05)
    retry = handler.handle(*signed(payload))
    assert (retry.status, retry.body) == (200, b'{"ok":true}')
    assert client.xlen("leases:stream") == 1 and client.get("leases:seen:killed-1") == b"1"
    assert handler.handle(*signed(payload)).body == b'{"ok":true,"duplicate":true}'


def test_an_empty_signing_key_is_refused_alone_or_in_a_rotation_list() -> None:
    body = json.dumps(event_payload()).encode()
    ts = str(int(time.time()))
    forged = {"X-CIO-Timestamp": ts, "X-CIO-Signature": sign(body, "", ts)}  # anyone can compute this
    for keys in ("", [SECRET, ""], [SECRET, b""]):
        with pytest.raises(ValueError, match="secret"):
            WebhookHandler(keys, lambda e: None)
        with pytest.raises(ValueError, match="secret"):
            verify(body, forged, keys)
    assert verify(*signed(event_payload(event_id="real")), [SECRET, "old"]).event_id == "real"


def _at_once(barrier: threading.Barrier, handler: WebhookHandler, request: tuple[bytes, dict[str, str]]) -> None:
    barrier.wait()
    handler.handle(*request)


@pytest.mark.skipif(sys.platform == "win32", reason="fork")
def test_a_forked_child_counts_its_first_concurrent_webhooks() -> None:
    """A handler made before the fork (a pre-loading server), then two webhooks at once in the child:
    both are counted in the child's fresh pending count, so drain() sees them done."""
    handler = WebhookHandler(SECRET, lambda e: None)

    def child() -> str:
        sys.setswitchinterval(1e-6)  # let the two threads interleave as much as they can
        barrier = threading.Barrier(2)
        threads = [threading.Thread(target=_at_once, args=(barrier, handler, signed(event_payload())))
                   for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return f"{handler.drain(2)} {handler.stats()['pending']}"

    results = [in_forked_child(child) for _ in range(10)]
    assert results == ["True 0"] * 10
