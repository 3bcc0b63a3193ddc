"""``Delivery.deliver``, the one delivery loop, on its own: native batches from a real core, a real
limiter, and destinations that are real objects (a scripted one written here, and Track API v2 against
the emulator over a socket). No pipeline, no lanes: what the fleet worker will drive."""

from __future__ import annotations

import threading
import time
from typing import Any

from ciotrack import _core
from ciotrack.delivery import DESTINATION_DOWN, Delivery, Health, Job, Result, Verdict
from ciotrack.destinations import Outcome
from ciotrack.destinations.track_v2 import TrackV2Destination
from ciotrack.emulator import Emulator
from ciotrack.ratelimit import local_limiter
from ciotrack.retry import RetryPolicy

from conftest import API_KEY, SITE_ID, all_events, free_port

FAST = RetryPolicy(max_retries=5, retry_budget=30.0, backoff_base=0.001, backoff_cap=0.005)


class Scripted:
    """Answers its script in order, then ``Outcome.delivered()``; keeps every body it was sent."""

    name = "scripted"

    def __init__(self, *answers: Outcome, stop_on_send: threading.Event | None = None) -> None:
        self.answers = list(answers)
        self.bodies: list[bytes] = []
        self.times: list[float] = []
        self._stop_on_send = stop_on_send

    def send(self, body: bytes) -> Outcome:
        self.bodies.append(body)
        self.times.append(time.monotonic())
        if self._stop_on_send is not None:
            self._stop_on_send.set()  # as a close() arriving while this request is under way
        return self.answers.pop(0) if self.answers else Outcome.delivered()

    def probe(self) -> bool:
        return True

    def close(self) -> None:
        pass


def batch_of(count: int) -> _core.Batch:
    core = _core.Core()
    for i in range(count):
        core.event(0, "event", f"c{i}", None, "delivered", {"i": i})
    batch = core.lane(0).next_batch(500_000)
    assert batch is not None and batch.count == count
    return batch


def make(destination: Any, **options: Any) -> tuple[Delivery, _core.Core]:
    recorder = _core.Core()  # the native core is a Recorder: counters under their Stats names
    options.setdefault("limiter", None)
    options.setdefault("policy", FAST)
    options.setdefault("stop", threading.Event())
    return Delivery(destination, recorder=recorder, **options), recorder


def counters(core: _core.Core) -> dict[str, int]:
    return {k: v for k, v in core.stats()["counters"].items() if v}


def test_retry_then_delivered_resends_the_same_bytes() -> None:
    destination = Scripted(Outcome.retry(503), Outcome.retry(reason="connection_error: reset"))
    delivery, recorder = make(destination)
    batch = batch_of(3)
    [result] = delivery.deliver(Job(batch))
    assert result.verdict is Verdict.DELIVERED and result.status == 200 and result.failures == ()
    assert result.job.attempts == 2 and result.job.batch is batch
    assert destination.bodies == [batch.body] * 3
    seen = counters(recorder)
    assert seen["requests_503"] == 1 and seen["requests_error"] == 1 and seen["requests_200"] == 1
    assert seen["retried"] == 2 and seen["bytes_sent"] == len(batch.body)


def test_retry_after_is_a_floor_and_a_429_pauses_the_limiter_for_every_sender() -> None:
    limiter = local_limiter(1000.0, 1000.0)
    destination = Scripted(Outcome.retry(429, retry_after=0.3))
    delivery, _ = make(destination, limiter=limiter)
    [result] = delivery.deliver(Job(batch_of(1)))
    assert result.verdict is Verdict.DELIVERED and result.job.attempts == 1
    first, second = destination.times
    assert second - first >= 0.3  # not the policy's 1-5 ms: the server's Retry-After

    other = Scripted(Outcome.retry(429, retry_after=0.5))
    paused, _ = make(other, limiter=limiter)
    waiting = threading.Thread(target=lambda: list(paused.deliver(Job(batch_of(1)))))
    waiting.start()
    while not other.times:
        time.sleep(0.001)
    # The 429 paused the shared limiter: a sender that did not see it gets no token meanwhile.
    assert limiter.acquire(0.05) is False
    waiting.join(5)


def test_413_splits_and_yields_one_result_per_half_in_order() -> None:
    splits: list[tuple[Any, Any, Any]] = []
    destination = Scripted(Outcome.split())
    delivery, recorder = make(destination, on_split=lambda parent, a, b: splits.append((parent, a, b)))
    batch = batch_of(4)
    results = list(delivery.deliver(Job(batch)))
    assert [r.verdict for r in results] == [Verdict.DELIVERED, Verdict.DELIVERED]
    halves = [r.job.batch for r in results]
    assert [(parent, a.batch, b.batch) for parent, a, b in splits] == [(batch, halves[0], halves[1])]
    assert [(a, b) for _, a, b in splits] == [(results[0].job, results[1].job)]  # the jobs it then delivered
    assert [op for half in halves for op in half.ops()] == batch.ops()  # order kept, nothing twice
    assert destination.bodies[1:] == [halves[0].body, halves[1].body]
    assert counters(recorder)["split"] == 1


def test_a_final_answer_fails_at_once_and_a_single_op_413_is_final() -> None:
    destination = Scripted(Outcome.final(401, "http_401: unauthorized"), Outcome.split())
    delivery, _ = make(destination)
    [failed] = delivery.deliver(Job(batch_of(2)))
    assert (failed.verdict, failed.status, failed.reason) == (Verdict.FAILED, 401, "http_401: unauthorized")
    [too_big] = delivery.deliver(Job(batch_of(1)))
    assert (too_big.verdict, too_big.status) == (Verdict.FAILED, 413)
    assert len(destination.bodies) == 2


def test_exhausted_after_max_retries_then_known_down_without_a_request() -> None:
    destination = Scripted(*[Outcome.retry(reason="connection_error: refused")] * 10)
    health = Health(destination)
    policy = RetryPolicy(max_retries=2, retry_budget=30.0, backoff_base=0.001, backoff_cap=0.005)
    delivery, _ = make(destination, policy=policy, health=health)
    [result] = delivery.deliver(Job(batch_of(1)))
    assert result.verdict is Verdict.EXHAUSTED and result.reason == "retries exhausted: connection_error: refused"
    assert result.job.attempts == 3 and len(destination.bodies) == 3
    assert health.down
    [again] = delivery.deliver(Job(batch_of(1)))
    assert (again.verdict, again.reason, again.status) == (Verdict.EXHAUSTED, DESTINATION_DOWN, None)
    assert len(destination.bodies) == 3  # no request while down
    assert health.probe() and health.up  # Scripted.probe() answers True


def test_deadline_keeps_the_retry_state_and_the_untried_half() -> None:
    destination = Scripted(Outcome.split(), Outcome.retry(503, retry_after=0.5))
    delivery, _ = make(destination)
    batch = batch_of(4)
    results = list(delivery.deliver(Job(batch), deadline=time.monotonic() + 0.1))
    assert [r.verdict for r in results] == [Verdict.DEADLINE, Verdict.DEADLINE]
    first, second = (r.job for r in results)
    assert first.attempts == 1 and first.first_attempt is not None  # kept, to resume
    assert second.attempts == 0 and second.first_attempt is None and second.batch.count == 2
    resumed: list[Result] = [r for job in (first, second) for r in delivery.deliver(job)]
    assert [r.verdict for r in resumed] == [Verdict.DELIVERED, Verdict.DELIVERED]
    assert resumed[0].job is first and first.attempts == 1


def test_stop_ends_a_retry_wait_and_refuses_to_start() -> None:
    stop = threading.Event()
    destination = Scripted(Outcome.retry(503, retry_after=10.0), stop_on_send=stop)
    delivery, _ = make(destination, stop=stop)
    [result] = delivery.deliver(Job(batch_of(1)))  # would wait 10 s for the retry
    assert result.verdict is Verdict.STOPPED and result.job.attempts == 1
    [never] = delivery.deliver(Job(batch_of(1)))
    assert never.verdict is Verdict.STOPPED and len(destination.bodies) == 1


def test_track_v2_over_a_socket_retry_after_then_delivered(emulator: Emulator) -> None:
    destination = TrackV2Destination(None, emulator.url, SITE_ID, API_KEY, timeout=5.0)
    limiter = local_limiter(100.0, 5.0)
    delivery, recorder = make(destination, limiter=limiter, health=Health(destination))
    emulator.storm_429(0.2, retry_after=1)
    [result] = delivery.deliver(Job(batch_of(5)))
    assert result.verdict is Verdict.DELIVERED and result.job.attempts >= 1
    assert counters(recorder)["requests_429"] == result.job.attempts
    assert len(all_events(emulator.state())) == 5
    destination.close()


def test_health_probe_goes_through_the_destination(emulator: Emulator) -> None:
    reachable = Health(TrackV2Destination(None, emulator.url, SITE_ID, API_KEY, timeout=2.0))
    assert reachable.probe() and reachable.up
    dead = Health(TrackV2Destination(None, f"http://127.0.0.1:{free_port()}", SITE_ID, API_KEY, timeout=2.0))
    assert not dead.probe() and dead.down
