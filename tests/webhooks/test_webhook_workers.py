"""The handler threads: order, a backlog bringing in more workers, waking from deep sleep, stop."""

from __future__ import annotations

import threading
import time

from ciotrack.webhooks.workers import HELP_BACKLOG, Workers


def test_items_run_in_order_and_stop_finishes_the_submitted_ones() -> None:
    done: list[int] = []
    workers: Workers[int] = Workers(1, done.append, linger=0.001)
    for n in range(500):
        workers.submit(n)
    workers.stop(5)
    assert done == list(range(500))


def test_a_backlog_brings_in_a_second_worker() -> None:
    both_running = threading.Barrier(2)
    broken: list[int] = []
    threads: set[str] = set()

    finished = threading.Semaphore(0)

    def slow(n: int) -> None:
        threads.add(threading.current_thread().name)
        finished.release()
        if n == 0:
            try:  # only passes if another worker runs an item while this one waits
                both_running.wait(timeout=5)
            except threading.BrokenBarrierError:
                broken.append(n)
        elif n == 1:
            try:
                both_running.wait(timeout=5)
            except threading.BrokenBarrierError:
                broken.append(n)

    workers: Workers[int] = Workers(4, slow, linger=0.001, safety_wake=300)
    time.sleep(0.2)  # one worker naps, the other three sleep until woken
    for n in range(HELP_BACKLOG + 10):
        workers.submit(n)
    for _ in range(HELP_BACKLOG + 10):  # all done before stop(), which would wake everyone anyway
        assert finished.acquire(timeout=30)
    workers.stop(10)
    assert not broken and len(threads) >= 2


def test_a_deep_sleeping_worker_is_woken_by_submit() -> None:
    done = threading.Event()
    workers: Workers[str] = Workers(2, lambda item: done.set(), linger=0.001, deep_after=0.01, safety_wake=300)
    time.sleep(0.2)  # long past deep_after: every worker sleeps until woken (or 300 s pass)
    workers.submit("wake up")
    assert done.wait(60)
    workers.stop(5)


def test_a_worker_survives_an_item_that_raises_past_its_handler() -> None:
    done: list[int] = []

    def run(n: int) -> None:
        if n == 0:
            raise SystemExit("user code called sys.exit()")
        done.append(n)

    workers: Workers[int] = Workers(1, run, linger=0.001)
    for n in range(3):
        workers.submit(n)
    workers.stop(5)
    assert done == [1, 2]


def test_after_two_empty_naps_the_worker_sleeps_until_submit_wakes_it() -> None:
    done: list[str] = []
    handled = threading.Semaphore(0)

    def run(item: str) -> None:
        done.append(item)
        handled.release()

    # safety_wake=300: only submit() can wake a deep sleeper within the test's timeouts.
    workers: Workers[str] = Workers(1, run, linger=0.01, safety_wake=300)
    workers.submit("first")
    assert handled.acquire(timeout=30)
    deadline = time.monotonic() + 30
    while workers._deep_sleepers != 1 and time.monotonic() < deadline:  # two empty 10 ms naps, then deep
        time.sleep(0.01)
    assert workers._deep_sleepers == 1 and workers._napper is None
    workers.submit("second")
    assert handled.acquire(timeout=60)
    workers.stop(5)
    assert done == ["first", "second"]


def test_while_items_keep_coming_the_napper_serves_them_without_being_woken() -> None:
    handled = threading.Semaphore(0)
    workers: Workers[int] = Workers(2, lambda item: handled.release(), linger=0.005, safety_wake=300)
    for n in range(200):
        workers.submit(n)
        time.sleep(0.001)
        if n == 100:  # mid-stream: one worker naps, the other sleeps deeply (nobody was woken per item)
            assert workers._napper is not None and workers._deep_sleepers == 1
    for _ in range(200):
        assert handled.acquire(timeout=30)
    workers.stop(5)
