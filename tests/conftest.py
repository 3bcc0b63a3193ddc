"""Shared fixtures: a Customer.io emulator on 127.0.0.1, a Tracker factory bound to it, and a tiny
recording HTTP server (for what the emulator deliberately hides, e.g. the Authorization header, or
plays a proxy / a strict server)."""

from __future__ import annotations

import asyncio
import json
import pathlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import pytest

from ciotrack.emulator import Emulator
from redis_harness import RedisServer

if TYPE_CHECKING:
    from ciotrack.tracker import Tracker

SITE_ID = "site-test"
API_KEY = "key-test-SECRET-9f2c"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: a long test (run it explicitly or in CI)")


@pytest.fixture(autouse=True)
def _no_proxy_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # Test traffic must stay on 127.0.0.1: an HTTP(S)_PROXY inherited from a CI machine would
    # otherwise carry it elsewhere (requests honours these variables, and so does a Tracker).
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    with Emulator(workspaces={SITE_ID: API_KEY}) as em:
        yield em


TrackerFactory = Callable[..., "Tracker"]


@pytest.fixture
def make_tracker(emulator: Emulator) -> Iterator[TrackerFactory]:
    """``make_tracker(**options)``: a Tracker pointed at the emulator, closed at teardown.

    Test defaults: a short linger (batches go out quickly) and no client-side rate limit, unless the
    test passes its own."""
    from ciotrack.tracker import Tracker

    made: list[Tracker] = []

    def factory(**options: Any) -> Tracker:
        options.setdefault("endpoint", emulator.url)
        options.setdefault("flush_interval", 0.02)
        options.setdefault("rate_limit", 0)
        options.setdefault("backoff_base", 0.01)
        options.setdefault("backoff_cap", 0.1)
        site_id = options.pop("site_id", SITE_ID)
        api_key = options.pop("api_key", API_KEY)
        tracker = Tracker(site_id, api_key, **options)
        made.append(tracker)
        return tracker

    yield factory
    for tracker in made:
        tracker.close(timeout=5)


@dataclass
class Recorded:
    request_line: str
    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    at: float


Responder = Callable[[Recorded], tuple[int, dict[str, str], bytes]]


@dataclass
class RecordingServer:
    """Answers every request with ``responder(recorded)`` (default ``200 {}``) and keeps a copy."""

    url: str
    requests: list[Recorded] = field(default_factory=list)
    responder: Responder = field(default=lambda rec: (200, {}, b"{}"))
    lock: threading.Lock = field(default_factory=threading.Lock)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def wait_requests(self, n: int, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        with self.changed:
            while len(self.requests) < n:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.changed.wait(remaining)
        return True

    def ops(self) -> list[dict[str, Any]]:
        with self.lock:
            bodies = [r.body for r in self.requests if r.method == "POST"]
        return [op for body in bodies for op in json.loads(body)["batch"]]


@pytest.fixture
def recorder() -> Iterator[RecordingServer]:
    holder: list[RecordingServer] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _handle(self) -> None:
            server = holder[0]
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            rec = Recorded(self.requestline, self.command, self.path, dict(self.headers.items()), body,
                           time.monotonic())
            status, headers, payload = server.responder(rec)
            with server.lock:
                server.requests.append(rec)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            with server.changed:
                server.changed.notify_all()

        do_GET = do_POST = do_PUT = do_DELETE = _handle

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    holder.append(RecordingServer(url=f"http://127.0.0.1:{httpd.server_address[1]}"))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield holder[0]
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def redis_server(tmp_path: pathlib.Path) -> Iterator[RedisServer]:
    """A real redis-server with append-only persistence, on a free port, for this test only."""
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One throwaway redis-server for the whole session (the webhook tests' shared dedup)."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def all_events(state: dict[str, Any]) -> list[dict[str, Any]]:
    """Every stored event of an emulator workspace snapshot (people's and anonymous)."""
    events = [e for person in state.get("people", {}).values() for e in person.get("events", [])]
    events += [e for evs in state.get("anonymous_events", {}).values() for e in evs]
    return events


def flush_async_counting_loop_ticks(tracker: Tracker, timeout: float) -> tuple[bool, int]:
    """``await tracker.flush_async(timeout)`` inside a fresh event loop, beside a task ticking every
    10 ms: returns flush's result and how many ticks the loop managed meanwhile (a loop blocked by
    the flush would manage none)."""
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    async def main() -> bool:
        task = asyncio.create_task(ticker())
        try:
            return await tracker.flush_async(timeout)
        finally:
            task.cancel()

    ok = asyncio.run(main())
    return ok, ticks
