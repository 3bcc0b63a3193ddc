"""Misbehaving receivers, over real sockets: every operation delivered or reported, nothing raised
into the application, and the sender alive afterwards (a later event is delivered).

Receivers: a redirect (301/302/303 to elsewhere), hostile 207 bodies, a Retry-After past year 9999,
an endless response body, and one that trickles its answer a byte at a time.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ciotrack import ConfigError, DeliveryError, Tracker

from conftest import API_KEY, SITE_ID, Recorded, RecordingServer


def _tracker(url: str, errors: list[DeliveryError], **options: Any) -> Tracker:
    options.setdefault("flush_interval", 0.02)
    options.setdefault("rate_limit", 0)
    options.setdefault("backoff_base", 0.01)
    options.setdefault("backoff_cap", 0.05)
    options.setdefault("max_retries", 2)
    return Tracker(SITE_ID, API_KEY, endpoint=url, on_error=errors.append, **options)


Answer = tuple[int, dict[str, str], bytes]


def _answer_first(recorder: RecordingServer, first: list[Answer]) -> list[dict[str, Any]]:
    """The receiver gives these answers, then ``200``; returns the list of operations it accepted
    (answered 200), filled in as requests arrive."""
    answers = iter(first)
    accepted: list[dict[str, Any]] = []

    def respond(rec: Recorded) -> Answer:
        answer = next(answers, (200, {}, b"{}"))
        if answer[0] == 200 and rec.method == "POST":
            accepted.extend(json.loads(rec.body)["batch"])
        return answer

    recorder.responder = respond
    return accepted


def _sender_alive(tracker: Tracker, recorder: RecordingServer) -> None:
    """The background sender still delivers: a new event reaches the (now healthy) receiver."""
    accepted = _answer_first(recorder, [])
    tracker.track("after", "still-alive")
    assert tracker.flush(timeout=10)
    assert [op.get("name") for op in accepted] == ["still-alive"]


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_never_followed_and_the_batch_is_reported(
        recorder: RecordingServer, status: int, caplog: pytest.LogCaptureFixture) -> None:
    elsewhere = recorder.url + "/captive-portal"
    recorder.responder = lambda rec: (status, {"Location": elsewhere}, b"")
    errors: list[DeliveryError] = []
    with caplog.at_level(logging.ERROR, logger="ciotrack"):
        tracker = _tracker(recorder.url, errors)
        for i in range(20):
            tracker.track(f"user-{i}", "checkout")
        assert tracker.flush(timeout=10)
    # Never followed: no request ever went to the Location, and nothing counted as delivered.
    assert all(r.target == "/api/v2/batch" and r.method == "POST" for r in recorder.requests)
    assert len(recorder.requests) == 3  # first try + max_retries
    assert sum(len(e.ops) for e in errors) == 20
    assert all("redirect" in e.reason and elsewhere in e.reason for e in errors)
    assert tracker.stats().counters.get("delivered", 0) == 0
    loud = [r for r in caplog.records if r.levelno == logging.ERROR and elsewhere in r.getMessage()]
    assert len(loud) == 1 and "never follows redirects" in loud[0].getMessage()
    _sender_alive(tracker, recorder)
    tracker.close()


def test_a_redirect_then_recovery_delivers_everything(recorder: RecordingServer) -> None:
    accepted = _answer_first(recorder, [(302, {"Location": "https://login.example.invalid/"}, b"")] * 2)
    errors: list[DeliveryError] = []
    tracker = _tracker(recorder.url, errors)
    for i in range(20):
        tracker.track(f"user-{i}", "checkout")
    assert tracker.flush(timeout=10)
    assert sorted(op["identifiers"]["id"] for op in accepted) == sorted(f"user-{i}" for i in range(20))
    assert errors == []
    tracker.close()


HOSTILE_207 = {
    "null entry": b'{"errors":[null]}',
    "a list": b'["x"]',
    "errors not a list": b'{"errors":"x"}',
    "huge float index": b'{"errors":[{"batch_index":1e400,"reason":"x"}]}',
    "string index": b'{"errors":[{"batch_index":"0","reason":"x"}]}',
    "deep nesting": b'{"errors":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "not json": b"\xff\xfe<html>",
}


@pytest.mark.parametrize("body", HOSTILE_207.values(), ids=HOSTILE_207.keys())
def test_hostile_207_bodies_never_stop_the_sender(recorder: RecordingServer, body: bytes) -> None:
    _answer_first(recorder, [(207, {}, body)])
    errors: list[DeliveryError] = []
    tracker = _tracker(recorder.url, errors)
    for i in range(5):
        tracker.track(f"user-{i}", "checkout")
    assert tracker.flush(timeout=10)  # answered 207: accepted, failures not attributable
    assert errors == []
    _sender_alive(tracker, recorder)
    tracker.close()


def test_a_207_naming_one_index_twice_reports_it_once(recorder: RecordingServer) -> None:
    body = json.dumps({"errors": [{"batch_index": 1, "reason": "invalid"}, {"batch_index": 1, "reason": "again"},
                                  {"batch_index": 99, "reason": "out of range"}]}).encode()
    _answer_first(recorder, [(207, {}, body)])
    errors: list[DeliveryError] = []
    tracker = _tracker(recorder.url, errors)
    for i in range(3):
        tracker.track(f"user-{i}", "checkout")
    assert tracker.flush(timeout=10)
    assert [len(e.ops) for e in errors] == [1]
    assert json.loads(errors[0].ops[0])["identifiers"]["id"] == "user-1"
    tracker.close()


def test_a_retry_after_past_year_9999_is_ignored(recorder: RecordingServer) -> None:
    accepted = _answer_first(recorder, [(429, {"Retry-After": "Sat, 01 Jan 10000 00:00:00 GMT"}, b"{}")])
    errors: list[DeliveryError] = []
    tracker = _tracker(recorder.url, errors)
    tracker.track("user-1", "checkout")
    assert tracker.flush(timeout=10)
    assert len(accepted) == 1 and errors == []
    tracker.close()


@pytest.mark.parametrize("field", ["site_id", "api_key"])
def test_credentials_http_cannot_carry_are_a_config_error(field: str) -> None:
    bad = {"site_id": SITE_ID, "api_key": API_KEY}
    bad[field] = bad[field] + "\u200b"  # a pasted zero-width space
    with pytest.raises(ConfigError, match=f"{field} has a character HTTP cannot carry") as info:
        Tracker(bad["site_id"], bad["api_key"], endpoint="http://127.0.0.1:9")
    assert API_KEY not in str(info.value)


class RawServer:
    """A TCP server whose answer is written by ``behave(conn)``; counts the bytes it managed to send."""

    def __init__(self, behave: Callable[[socket.socket, RawServer], None]) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.behave = behave
        self.sent = 0
        self.stop = threading.Event()
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        self.sock.settimeout(0.1)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:  # closed by close()
                return
            self.connections += 1
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            _read_request(conn)
            try:
                self.behave(conn, self)
            except OSError:
                pass  # the client hung up: what we wanted

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


def _read_request(conn: socket.socket) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length")), 0)
    while len(body) < length:
        body += conn.recv(65536)


@pytest.fixture
def raw_server() -> Iterator[Callable[[Callable[[socket.socket, RawServer], None]], RawServer]]:
    made: list[RawServer] = []

    def factory(behave: Callable[[socket.socket, RawServer], None]) -> RawServer:
        server = RawServer(behave)
        made.append(server)
        return server

    yield factory
    for server in made:
        server.close()


def test_an_endless_body_is_read_only_up_to_a_cap(raw_server: Any) -> None:
    def endless(conn: socket.socket, server: RawServer) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n")
        chunk = b"0" * 65536
        deadline = time.monotonic() + 20
        while not server.stop.is_set() and time.monotonic() < deadline:
            server.sent += conn.send(chunk)

    server = raw_server(endless)
    errors: list[DeliveryError] = []
    tracker = _tracker(server.url, errors)
    tracker.track("user-1", "checkout")
    assert tracker.flush(timeout=15)
    assert errors == [] and tracker.stats().counters.get("delivered") == 1
    # The client stopped reading at the cap and hung up: the server could not push much more than
    # the cap plus what the two socket buffers hold.
    assert server.sent < 64 << 20
    tracker.close()


def test_a_trickling_receiver_cannot_hold_a_sender_past_the_deadline(raw_server: Any) -> None:
    def trickle(conn: socket.socket, server: RawServer) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\n")
        deadline = time.monotonic() + 60
        while not server.stop.is_set() and time.monotonic() < deadline:
            conn.sendall(b"X")  # a header line that never ends, one byte at a time
            time.sleep(0.1)

    server = raw_server(trickle)
    errors: list[DeliveryError] = []
    # 0.5 s read timeout: each byte arrives well inside it, so only a total deadline (1 s) stops it.
    tracker = _tracker(server.url, errors, timeout=(0.5, 0.5), max_retries=1)
    tracker.track("user-1", "checkout")
    assert tracker.flush(timeout=30)  # without a total deadline this would still be reading
    assert [len(e.ops) for e in errors] == [1]
    assert "deadline" in errors[0].reason
    tracker.close()
