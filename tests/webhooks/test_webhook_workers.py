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
