"""A lean HTTP/1.1 batch sink on 127.0.0.1 that every benchmarked client can deliver to.

It speaks each client's batch endpoint just enough: ``POST /v1/batch`` (segment-analytics-python and
customerio-cdp-analytics), ``POST /batch/`` (PostHog) and ``POST /api/v2/batch`` (ciotrack). Each
request body is parsed (gunzipped when ``Content-Encoding: gzip``) and the length of its ``batch``
list is counted; the answer is always ``200 {}``. It checks no auth and keeps no events, so it costs
the clients under test as little CPU as possible on this 2-core machine: it is deliberately leaner
than the Customer.io emulator, and the same for every client.

Control (no auth): ``GET /_sink/stats`` -> ``{"events", "requests", "bytes", "bad", "paths"}``,
``POST /_sink/reset``.

Run it on its own with ``python benches/peers/sink.py --port 0``: it prints its URL on the first line
of stdout once listening, and stops on SIGTERM/SIGINT or when its stdin closes (so it never outlives
the harness that started it).
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import select
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from typing import Any

_loads: Callable[[bytes], Any]
try:  # orjson parses a 500 KB batch several times faster; the sink runs in the main venv, which has it.
    from orjson import loads as _loads
except ImportError:  # pragma: no cover - the peers' venvs never run the sink
    _loads = json.loads

BATCH_PATHS = ("/v1/batch", "/batch/", "/api/v2/batch")
_OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
_NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
_BAD = b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
# A header block larger than this is not a client we benchmark: drop the connection.
_MAX_HEAD = 64 * 1024


class SinkCounters:
    """Totals since start or the last reset. Only the event-loop thread mutates them."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.events = 0
        self.requests = 0
        self.bytes = 0
        self.bad = 0
        self.paths: dict[str, int] = {}

    def snapshot(self) -> dict[str, Any]:
        return {"events": self.events, "requests": self.requests, "bytes": self.bytes, "bad": self.bad,
                "paths": dict(self.paths)}


class _SinkConnection(asyncio.Protocol):
    """One keep-alive connection: parse head, read Content-Length bytes, answer, repeat."""

    def __init__(self, counters: SinkCounters) -> None:
        self._counters = counters
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        # None while reading a head; else (method, path, gzipped, bytes still needed for the body).
        self._pending: tuple[str, str, bool, int] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while self._transport is not None:
            if self._pending is None:
                end = self._buffer.find(b"\r\n\r\n")
                if end < 0:
                    if len(self._buffer) > _MAX_HEAD:
                        self._transport.close()
                    return
                head = bytes(self._buffer[:end]).decode("latin-1")
                del self._buffer[: end + 4]
                self._pending = self._parse_head(head)
                if self._pending is None:
                    return
            method, path, gzipped, length = self._pending
            if len(self._buffer) < length:
                return
            body = bytes(self._buffer[:length])
            del self._buffer[:length]
            self._pending = None
            self._transport.write(self._answer(method, path, gzipped, body))

    def _parse_head(self, head: str) -> tuple[str, str, bool, int] | None:
        lines = head.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3:
            assert self._transport is not None
            self._transport.close()
            return None
        length = 0
        gzipped = False
        for line in lines[1:]:
            name, _, value = line.partition(":")
            key = name.strip().lower()
            if key == "content-length":
                length = int(value.strip())
            elif key == "content-encoding":
                gzipped = value.strip().lower() == "gzip"
            elif key == "transfer-encoding":
                # None of the benchmarked clients stream bodies; refusing keeps the parser tiny.
                assert self._transport is not None
                self._transport.write(b"HTTP/1.1 411 Length Required\r\nContent-Length: 0\r\n\r\n")
                self._transport.close()
                return None
        return parts[0], parts[1].split("?", 1)[0], gzipped, length

    def _answer(self, method: str, path: str, gzipped: bool, body: bytes) -> bytes:
        counters = self._counters
        if method == "POST" and path in BATCH_PATHS:
            counters.requests += 1
            counters.bytes += len(body)
            try:
                batch = _loads(gzip.decompress(body) if gzipped else body)["batch"]
                count = len(batch)
            except (ValueError, KeyError, TypeError, OSError):
                counters.bad += 1
                return _BAD
            counters.events += count
            counters.paths[path] = counters.paths.get(path, 0) + count
            return _OK
        if path == "/_sink/stats" and method == "GET":
            payload = json.dumps(counters.snapshot()).encode()
            return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
                len(payload), payload)
        if path == "/_sink/reset" and method == "POST":
            counters.reset()
            return _OK
        return _NOT_FOUND


async def serve(host: str, port: int, ready: Callable[[str], None], stop: asyncio.Event) -> None:
    counters = SinkCounters()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _SinkConnection(counters), host, port, backlog=256)
    bound = server.sockets[0].getsockname()
    ready(f"http://{bound[0]}:{bound[1]}")
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)

        def on_stdin() -> None:
            # The parent holds our stdin open; EOF means it died without stopping us.
            try:
                if os.read(stdin_fd, 4096):
                    return
            except OSError:
                pass
            loop.remove_reader(stdin_fd)
            stop.set()

        stdin_fd = sys.stdin.fileno()
        if not os.isatty(stdin_fd):
            try:
                loop.add_reader(stdin_fd, on_stdin)
            except OSError:  # a regular file or /dev/null cannot be polled: nobody to watch then
                pass

        def ready(url: str) -> None:
            print(url, flush=True)

        await serve(args.host, args.port, ready, stop)

    asyncio.run(run())
    return 0


class SinkProcess:
    """The sink in a subprocess (its own GIL and core), with the control endpoints as methods."""

    def __init__(self, python: str = sys.executable, start_timeout: float = 15.0) -> None:
        self._process = subprocess.Popen(
            [python, os.path.abspath(__file__), "--port", "0"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        assert self._process.stdout is not None
        readable, _, _ = select.select([self._process.stdout], [], [], start_timeout)
        line = self._process.stdout.readline().strip() if readable else ""
        if not line.startswith("http://"):
            self.stop()
            raise RuntimeError(f"sink did not start within {start_timeout} s (got {line!r})")
        self.url = line

    @property
    def pid(self) -> int:
        return self._process.pid

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "/_sink/stats", timeout=10) as response:
            result: dict[str, Any] = json.loads(response.read())
            return result

    def events(self) -> int:
        return int(self.stats()["events"])

    def reset(self) -> None:
        request = urllib.request.Request(self.url + "/_sink/reset", data=b"", method="POST")
        with urllib.request.urlopen(request, timeout=10):
            pass

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        for stream in (self._process.stdin, self._process.stdout):
            if stream is not None:
                stream.close()

    def __enter__(self) -> SinkProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    sys.exit(main())
