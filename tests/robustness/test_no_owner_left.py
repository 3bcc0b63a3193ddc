"""Batches with no owner left, and hooks or signals that interrupt delivery, over real sockets,
threads, processes and signals: every operation delivered, spooled or reported exactly once.

* A batch still inside a request at close()/exit (a stalled receiver, a slowloris, SIGTERM, SIGINT)
  without a spool: reported through the ledger (``shutdown_in_flight``), once, even when the request
  answers later.
* A hook raising SystemExit/KeyboardInterrupt on a sender thread: logged, the sender goes on.
* An inline flush (``sync=True``) interrupted by a KeyboardInterrupt mid-request: the batch is put
  back and the next flush delivers it.
* A second concurrent close() waits for the first and returns its result.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import ciotrack.delivery
from ciotrack import DeliveryError, Tracker
from ciotrack.destinations import Outcome
from ciotrack.logs import ThrottledLog

from conftest import API_KEY, SITE_ID, Recorded, RecordingServer

N = 50


class HeldServer:
    """Reads each request, then holds it (``hold(conn)``: stall, or trickle header bytes) until
    ``release`` is set, then answers ``200 {}``. ``ops`` are the operations of every request held."""

    def __init__(self, trickle: bool = False) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.trickle = trickle
        self.release = threading.Event()
        self.arrived = threading.Semaphore(0)
        self.ops: list[dict[str, Any]] = []
        self.closed = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            try:
                while True:
                    body = _read_request(conn)
                    if body is None:
                        return
                    self.ops.extend(json.loads(body)["batch"])
                    self.arrived.release()
                    if self.trickle:
                        conn.sendall(b"HTTP/1.1 200 OK\r\n")
                        while not self.release.wait(0.05):
                            conn.sendall(b"X-Slow: x\r\n")  # a header at a time, well inside any read timeout
                        conn.sendall(b"Content-Length: 2\r\n\r\n{}")
                    else:
                        self.release.wait(60)
                        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
            except OSError:
                return  # the client hung up

    def wait_arrived(self, timeout: float = 10.0) -> bool:
        return self.arrived.acquire(timeout=timeout)

    def close(self) -> None:
        self.release.set()
        self.closed.set()
        self.sock.close()


def _read_request(conn: socket.socket) -> bytes | None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length")), 0)
    while len(body) < length:
        body += conn.recv(65536)
    return body


@pytest.fixture
def held() -> Iterator[Callable[..., HeldServer]]:
    made: list[HeldServer] = []

    def factory(trickle: bool = False) -> HeldServer:
        server = HeldServer(trickle)
        made.append(server)
        return server

    yield factory
    for server in made:
        server.close()


def _wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.mark.parametrize("trickle", [False, True], ids=["stalled", "slowloris"])
def test_a_batch_stuck_in_a_request_at_close_is_reported_once(held: Callable[..., HeldServer],
                                                             trickle: bool) -> None:
    server = held(trickle)
    errors: list[DeliveryError] = []
    # A request deadline far past close()'s: only close() can give up on this batch.
    tracker = Tracker(SITE_ID, API_KEY, endpoint=server.url, on_error=errors.append, timeout=(5.0, 30.0),
                      flush_interval=0.02, rate_limit=0)
    for i in range(N):
        tracker.track(f"user-{i}", "checkout")
    assert server.wait_arrived()
    assert tracker.close(timeout=0.5) is False
    assert [e.reason.split(":")[0] for e in errors] == ["shutdown_in_flight"]
    assert sorted(json.loads(op)["identifiers"]["id"] for op in errors[0].ops) == sorted(f"user-{i}" for i in range(N))
    counters = tracker.stats().counters
    assert counters["failed"] == N and counters["failed_shutdown_in_flight"] == N
    # The request answers after all: counted, never reported a second time.
    server.release.set()
    assert _wait_for(lambda: tracker.stats().counters.get("delivered_after_shutdown", 0) == N)
    counters = tracker.stats().counters
    assert len(errors) == 1 and counters["failed"] == N and counters.get("delivered", 0) == 0
    assert tracker.stats().in_flight == 0


def test_a_batch_waiting_out_a_retry_delay_at_close_is_reported_with_its_attempts(
        recorder: RecordingServer, caplog: pytest.LogCaptureFixture) -> None:
    # Between two attempts the sender holds the batch but no request: close() past its deadline takes it
    # as not delivered (``shutdown``) with the requests really made, not as stuck in one.
    recorder.responder = lambda rec: (503, {}, b"{}")
    errors: list[DeliveryError] = []
    tracker = Tracker(SITE_ID, API_KEY, endpoint=recorder.url, on_error=errors.append, flush_interval=0.02,
                      rate_limit=0, backoff_base=0.05, backoff_cap=0.05, senders=1)
    tracker.track("user-1", "checkout")
    assert recorder.wait_requests(3)
    recorder.responder = lambda rec: (503, {"Retry-After": "30"}, b"{}")  # the next delay outlasts close()
    made = len(recorder.requests) + 1
    assert recorder.wait_requests(made)
    time.sleep(0.1)  # the sender is inside its 30 s wait now
    with caplog.at_level(logging.WARNING, logger="ciotrack"):
        assert tracker.close(timeout=0) is False
    assert len(errors) == 1, [e.reason for e in errors]
    assert errors[0].reason.split(":")[0] == "shutdown" and errors[0].attempts == len(recorder.requests)
    assert tracker.stats().counters["failed_shutdown"] == 1
    assert not any("in a request" in r.getMessage() for r in caplog.records), caplog.text


def test_the_halves_of_a_split_batch_waiting_at_close_are_reported_as_not_sent(
        recorder: RecordingServer, caplog: pytest.LogCaptureFixture) -> None:
    # A 413 splits the batch; the first half then waits out a 30 s Retry-After and the second was never
    # sent. Neither is in a request when close() gives up on the sender: both ``shutdown``, with the
    # requests each really had (1 and 0).
    def respond(rec: Recorded) -> tuple[int, dict[str, str], bytes]:
        if rec.method == "POST" and len(json.loads(rec.body)["batch"]) > 2:
            return 413, {}, b"{}"
        return 503, {"Retry-After": "30"}, b"{}"

    recorder.responder = respond
    errors: list[DeliveryError] = []
    tracker = Tracker(SITE_ID, API_KEY, endpoint=recorder.url, on_error=errors.append, flush_interval=0.05,
                      rate_limit=0, senders=1)
    for i in range(4):
        tracker.track(f"user-{i}", "checkout")
    assert recorder.wait_requests(2)  # the 413, then the first half's 503
    time.sleep(0.1)  # the sender is inside its 30 s wait now
    assert tracker.close(timeout=0) is False
    assert sorted((e.reason.split(":")[0], len(e.ops), e.attempts) for e in errors) == [
        ("shutdown", 2, 0), ("shutdown", 2, 1)]
    assert len(recorder.requests) == 2


PREAMBLE = f"""
import json, os, sys, time
from ciotrack import Tracker
SITE_ID, API_KEY = {SITE_ID!r}, {API_KEY!r}

def idle(seconds):
    # Short sleeps, not one long one: CPython's time.sleep() misses a signal that lands after the
    # last bytecode and before the sleep starts (seen under load), and a waiting app loops anyway.
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.05)
"""


def _child(script: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", PREAMBLE + textwrap.dedent(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_with_a_batch_in_a_stalled_request_reports_it(held: Callable[..., HeldServer],
                                                               signum: int) -> None:
    server = held()
    proc = _child(f"""
        def on_error(error):
            print("on_error", error.reason.split(":")[0], len(error.ops), flush=True)
        tracker = Tracker(SITE_ID, API_KEY, endpoint={server.url!r}, on_error=on_error, timeout=(5.0, 30.0),
                          flush_interval=0.02, rate_limit=0, exit_timeout=0.5)
        for i in range({N}):
            tracker.track(f"user-{{i}}", "checkout")
        print("ready", flush=True)
        idle(60)
    """)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        assert server.wait_arrived()
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert f"on_error shutdown_in_flight {N}" in out.splitlines(), err
    assert "shutdown_in_flight" in err  # logged, with its cause


@pytest.mark.parametrize("raised", [SystemExit, KeyboardInterrupt])
def test_a_hook_raising_a_base_exception_on_a_sender_does_not_stop_it(
        recorder: RecordingServer, raised: type[BaseException]) -> None:
    answers: Iterator[tuple[int, dict[str, str], bytes]] = iter([(400, {}, b'{"meta":{"error":"bad"}}')])
    recorder.responder = lambda rec: next(answers, (200, {}, b"{}"))
    threads: list[str] = []

    def on_error(error: DeliveryError) -> None:
        threads.append(threading.current_thread().name)
        raise raised(3)

    tracker = Tracker(SITE_ID, API_KEY, endpoint=recorder.url, on_error=on_error, flush_interval=0.02, rate_limit=0)
    tracker.track("user-0", "rejected")
    assert tracker.flush(timeout=10)
    assert threads and threads[0].startswith("ciotrack-sender")
    tracker.track("user-1", "after")
    assert tracker.flush(timeout=10)  # the sender delivered it: alive
    assert [op["name"] for op in recorder.ops()] == ["rejected", "after"]
    tracker.close()


def test_on_drop_raising_system_exit_on_a_sender_does_not_stop_it(held: Callable[..., HeldServer]) -> None:
    server = held()
    calls: list[str] = []

    def on_drop(reason: str, count: int) -> None:
        name = threading.current_thread().name
        calls.append(name)
        if name.startswith("ciotrack-sender"):
            sys.exit(1)

    tracker = Tracker(SITE_ID, API_KEY, endpoint=server.url, on_drop=on_drop, on_full="drop_oldest",
                      max_queue_ops=10, flush_interval=0.02, rate_limit=0, senders=1)
    tracker.track("user-0", "first")
    assert server.wait_arrived()  # the only sender is held in that request
    for i in range(100):
        tracker.track(f"user-{i}", "evicting")
    server.release.set()  # the sender comes back and reports the evictions: on_drop raises SystemExit there
    assert _wait_for(lambda: any(name.startswith("ciotrack-sender") for name in calls))
    tracker.track("user-x", "after")
    assert _wait_for(lambda: any(op["name"] == "after" for op in server.ops))
    tracker.close()


@pytest.fixture
def interrupt_main() -> Iterator[Callable[[], None]]:
    """A function that makes the main thread raise KeyboardInterrupt (through SIGUSR1, thread-directed,
    so a main thread blocked in recv() is interrupted there, mid-request)."""
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGUSR1, handler)
    main = threading.main_thread().ident
    assert main is not None
    yield lambda: signal.pthread_kill(main, signal.SIGUSR1)
    signal.signal(signal.SIGUSR1, previous)


def test_an_inline_flush_interrupted_mid_request_puts_its_batch_back(
        recorder: RecordingServer, interrupt_main: Callable[[], None]) -> None:
    assert threading.current_thread() is threading.main_thread()
    first = threading.Event()

    def respond(rec: Any) -> tuple[int, dict[str, str], bytes]:
        if not first.is_set():
            first.set()
            interrupt_main()
            time.sleep(0.5)  # the client is gone by then: this answer is never read
        return 200, {}, b"{}"

    recorder.responder = respond
    errors: list[DeliveryError] = []
    tracker = Tracker(SITE_ID, API_KEY, endpoint=recorder.url, on_error=errors.append, sync=True, rate_limit=0)
    for i in range(N):
        tracker.track(f"user-{i}", "checkout")
    with pytest.raises(KeyboardInterrupt):
        tracker.flush(timeout=10)
    assert tracker.stats().in_flight == 1  # parked, not lost
    assert tracker.flush(timeout=10)
    delivered = [op["identifiers"]["id"] for op in recorder.ops()]
    # At least once: the interrupted request may have reached the receiver, and is repeated.
    assert sorted(set(delivered)) == sorted(f"user-{i}" for i in range(N))
    assert errors == [] and tracker.stats().counters["delivered"] == N
    assert tracker.close(timeout=5)


def test_a_hook_interrupting_an_inline_flush_leaves_nothing_in_flight(recorder: RecordingServer) -> None:
    assert threading.current_thread() is threading.main_thread()
    answers: Iterator[tuple[int, dict[str, str], bytes]] = iter(
        [(207, {}, b'{"errors":[{"batch_index":0,"reason":"invalid"}]}')])
    recorder.responder = lambda rec: next(answers, (200, {}, b"{}"))

    def on_error(error: DeliveryError) -> None:
        raise KeyboardInterrupt  # the application's own wish, on its own thread: it goes on

    tracker = Tracker(SITE_ID, API_KEY, endpoint=recorder.url, on_error=on_error, sync=True, rate_limit=0)
    tracker.track("user-0", "rejected")
    tracker.track("user-1", "accepted")
    with pytest.raises(KeyboardInterrupt):
        tracker.flush(timeout=10)
    stats = tracker.stats()
    assert stats.in_flight == 0 and stats.counters["failed"] == 1 and stats.counters["delivered"] == 1
    tracker.track("user-2", "later")
    assert tracker.flush(timeout=10)
    assert [op["name"] for op in recorder.ops()] == ["rejected", "accepted", "later"]
    assert tracker.close(timeout=5)


def test_a_second_concurrent_close_waits_for_the_first(held: Callable[..., HeldServer]) -> None:
    server = held()
    tracker = Tracker(SITE_ID, API_KEY, endpoint=server.url, timeout=(5.0, 30.0), flush_interval=0.02,
                      rate_limit=0)
    tracker.track("user-0", "checkout")
    assert server.wait_arrived()
    results: dict[str, bool] = {}

    def close(name: str, timeout: float) -> None:
        results[name] = tracker.close(timeout=timeout)

    first = threading.Thread(target=close, args=("first", 1.0))
    first.start()
    assert _wait_for(lambda: tracker._pipeline.closed)  # the first close() is under way
    close("second", 20.0)  # returned True at once before: the batch in the stalled request not settled
    first.join()
    assert results == {"first": False, "second": False}
    assert tracker.close(timeout=0) is False  # and later calls too: the same answer


def test_an_event_tracked_from_an_earlier_at_fork_hook_survives(recorder: RecordingServer) -> None:
    proc = _child(f"""
        tracker = None
        def child_hook():
            tracker.track("from-hook", "forked")  # runs before ciotrack's own child hook
        os.register_at_fork(after_in_child=child_hook)
        tracker = Tracker(SITE_ID, API_KEY, endpoint={recorder.url!r}, flush_interval=0.02, rate_limit=0)
        tracker.track("parent", "before-fork")
        assert tracker.flush(timeout=10)
        pid = os.fork()
        if pid == 0:
            tracker.track("child", "after-fork")
            ok = tracker.flush(timeout=10)
            print("child delivered", tracker.stats().counters.get("delivered"), flush=True)
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        print("child", os.waitstatus_to_exitcode(status), flush=True)
        tracker.close(timeout=5)
    """)
    out, err = proc.communicate(timeout=60)
    # The child's own tracker delivered both (before, the hook's event went to a pipeline that the
    # child hook then discarded: lost, unless its orphaned sender happened to be quick enough).
    assert "child 0" in out.splitlines() and "child delivered 2" in out.splitlines(), (out, err)
    names = sorted(op["name"] for op in recorder.ops())
    assert names == ["after-fork", "before-fork", "forked"], err


class OddOutcomeDestination:
    """A destination (the plugin API) that posts over a real socket, then answers with an Outcome the
    delivery loop cannot handle: a 207 whose failure index is not a number."""

    name = "odd"

    def __init__(self, url: str) -> None:
        self.url = url
        self.odd = True

    def send(self, body: bytes) -> Outcome:
        host, port = self.url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            conn.request("POST", "/api/v2/batch", body=body, headers={"Content-Type": "application/json"})
            status = conn.getresponse().status
        finally:
            conn.close()
        if self.odd:
            self.odd = False
            return Outcome("partial", status, "partial", failures=(("zero", "invalid"),))  # type: ignore[arg-type]
        return Outcome.delivered(status)

    def probe(self) -> bool:
        return True

    def close(self) -> None:
        pass


def test_an_answer_the_delivery_loop_cannot_handle_is_a_failure_not_a_crash(recorder: RecordingServer) -> None:
    errors: list[DeliveryError] = []
    tracker = Tracker(SITE_ID, API_KEY, destination=OddOutcomeDestination(recorder.url), on_error=errors.append,
                      flush_interval=0.02, rate_limit=0)
    for i in range(N):
        tracker.track(f"user-{i}", "checkout")
    assert tracker.flush(timeout=10)
    assert sum(len(e.ops) for e in errors) == N and {e.reason for e in errors} == {"handling_failed: TypeError"}
    tracker.track("user-x", "after")
    assert tracker.flush(timeout=10)  # the sender is alive
    assert recorder.ops()[-1]["name"] == "after" and len(errors) == 1
    tracker.close()


def test_a_207_index_outside_the_batch_is_logged(recorder: RecordingServer, caplog: pytest.LogCaptureFixture,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # A fresh throttle: an earlier test in this process may have logged the same warning moments ago.
    monkeypatch.setattr(ciotrack.delivery, "_warn", ThrottledLog(ciotrack.delivery.log))
    recorder.responder = lambda rec: (207, {}, b'{"errors":[{"batch_index":99,"reason":"invalid"}]}')
    errors: list[DeliveryError] = []
    tracker = Tracker(SITE_ID, API_KEY, endpoint=recorder.url, on_error=errors.append, flush_interval=0.02,
                      rate_limit=0)
    with caplog.at_level(logging.WARNING, logger="ciotrack"):
        tracker.track("user-0", "checkout")
        assert tracker.flush(timeout=10)
    assert errors == []
    assert [r for r in caplog.records if "outside its batch of 1" in r.getMessage()]
    tracker.close()


def test_a_hook_calling_sys_exit_during_close_does_not_cut_its_accounting_short(
        held: Callable[..., HeldServer]) -> None:
    server = held()
    errors: list[str] = []
    drops: list[tuple[str, int]] = []

    def on_error(error: DeliveryError) -> None:
        errors.append(error.reason.split(":")[0])
        sys.exit(1)

    tracker = Tracker(SITE_ID, API_KEY, endpoint=server.url, on_error=on_error, timeout=(5.0, 30.0), senders=1,
                      on_drop=lambda reason, n: drops.append((reason, n)), flush_interval=0.02, rate_limit=0)
    tracker.track("user-0", "in-flight")
    assert server.wait_arrived()  # the only sender is stuck in that request
    for i in range(N):
        tracker.track(f"user-{i}", "queued")
    assert tracker.close(timeout=0.5) is False  # no SystemExit out of close(), on the main thread
    assert errors == ["shutdown_in_flight"] and drops == [("shutdown", N)]


def test_a_close_interrupted_mid_request_still_accounts_for_everything(
        recorder: RecordingServer, interrupt_main: Callable[[], None]) -> None:
    assert threading.current_thread() is threading.main_thread()

    def respond(rec: Any) -> tuple[int, dict[str, str], bytes]:
        interrupt_main()
        time.sleep(0.5)  # the client is gone by then
        return 200, {}, b"{}"

    recorder.responder = respond
    errors: list[DeliveryError] = []
    tracker = Tracker(SITE_ID, API_KEY, endpoint=recorder.url, on_error=errors.append, sync=True, rate_limit=0)
    for i in range(N):
        tracker.track(f"user-{i}", "checkout")
    with pytest.raises(KeyboardInterrupt):
        tracker.close(timeout=10)
    # The interrupted batch was put back, then reported by the rest of close() (no spool here).
    assert sum(len(e.ops) for e in errors) == N and {e.reason.split(":")[0] for e in errors} == {"shutdown"}
    assert tracker.stats().in_flight == 0
