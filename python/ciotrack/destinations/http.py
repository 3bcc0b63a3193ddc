"""HTTP plumbing for destinations: a total deadline per request, and bounded response reads.

``requests`` has per-socket-operation timeouts only: a receiver that trickles one byte a second
holds a sender forever despite a 2 s read timeout, and one that streams an endless body fills
memory. Two guards fix that without leaving ``requests`` and its pooled Session:

* :class:`DeadlineAdapter` gives every request a total deadline. The adapter's connections record
  themselves, per thread, when a request starts; one watchdog thread (:class:`Watchdog`) shuts the
  socket of any request still running at its deadline, so the blocked read fails at once and the
  attempt is a retryable ``deadline`` error. One thread serves every Session, and it only wakes
  for the earliest deadline.
* :func:`read_capped` reads at most ``cap`` bytes of a streamed response and drops the connection
  when there is more (a real Customer.io answer is a few KB; a 207 for a full batch a few hundred).

A caller with a deadline of its own (an inline ``flush(timeout)``/``close(timeout)``, which delivers
on the application's thread) opens :func:`caller_deadline`: requests made on that thread inside it
end by then (:func:`time_left` caps their timeouts and their watchdog deadline), instead of taking
the full per-request timeout past it.
"""

from __future__ import annotations

import heapq
import itertools
import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from ciotrack.lifecycle import block_exit_signals

if TYPE_CHECKING:
    from requests.adapters import _HostParams, _PoolKwargs

__all__ = ["RESPONSE_CAP", "DeadlineAdapter", "DeadlineExceeded", "Watchdog", "caller_deadline", "read_capped",
           "capped_timeout", "deadline_passed", "time_left", "watchdog"]

RESPONSE_CAP = 4 << 20
"""Most bytes of a response body read; Customer.io's largest answers are far below a megabyte."""

_current = threading.local()  # .armed: this thread's _Armed request, if any; .deadline: see caller_deadline

MIN_TIME_LEFT = 0.01
"""What :func:`time_left` gives once the caller's deadline has passed: a request that starts then
(the second half of a split, say) fails at once as a retryable timeout, and is kept with its batch.
Not zero: ``requests`` reads a zero timeout as non-blocking, which fails differently."""


@contextmanager
def caller_deadline(deadline: float | None) -> Iterator[None]:
    """Requests made on this thread inside the block end by ``deadline`` (a ``time.monotonic()``
    value; None: no deadline of the caller's). Nested blocks keep the earlier deadline."""
    outer: float | None = getattr(_current, "deadline", None)
    if deadline is None or (outer is not None and outer <= deadline):
        yield
        return
    _current.deadline = deadline
    try:
        yield
    finally:
        _current.deadline = outer


def capped_timeout(timeout: float | tuple[float, float], cap: float) -> tuple[float, float]:
    """A requests timeout (one number, or ``(connect, read)``) as ``(connect, read)``, each at most ``cap``."""
    connect, read = timeout if isinstance(timeout, tuple) else (timeout, timeout)
    return min(float(connect), cap), min(float(read), cap)


def deadline_passed() -> bool:
    """This thread is inside a :func:`caller_deadline` that has passed."""
    deadline: float | None = getattr(_current, "deadline", None)
    return deadline is not None and time.monotonic() >= deadline


def time_left() -> float | None:
    """Seconds until this thread's :func:`caller_deadline` (at least :data:`MIN_TIME_LEFT`); None
    outside one (the sender threads: their requests take the configured timeouts)."""
    deadline: float | None = getattr(_current, "deadline", None)
    if deadline is None:
        return None
    return max(MIN_TIME_LEFT, deadline - time.monotonic())


class _Armed:
    """One request under a deadline: the connection it runs on, once it has one. Written by the
    request's thread, read by the watchdog's (a plain attribute store/load: atomic under the GIL)."""

    __slots__ = ("conn",)

    def __init__(self) -> None:
        self.conn: HTTPConnection | None = None


def _track(conn: HTTPConnection) -> None:
    armed = getattr(_current, "armed", None)
    if armed is not None:
        armed.conn = conn


class DeadlineExceeded(Exception):
    """A request ran past its total deadline (its socket was shut by the watchdog)."""


class _OneSend:
    """Sends a request's header block and its body (bytes, or a ``memoryview`` of the native batch)
    in one system call, not two.

    urllib3 sends the headers, then the body: with a socket timeout, each ``sendall`` is a ``poll``
    and a ``send``, and each releases the GIL, which an application thread running Python takes,
    so the sender waits up to the 5 ms switch interval to get it back (benches/README.md, "Sender
    cost"). On a plain TCP socket the two go out in one ``sendmsg`` (a gather write: no copy); over
    TLS, where ``sendmsg`` does not exist, they are joined first (a ~500 KB copy, which costs less
    than the second hand-over).
    """

    _held: bytes | None = None
    _holding = False

    def request(self, method: str, url: str, body: Any = None, headers: Any = None, **kwargs: Any) -> None:
        _track(self)  # type: ignore[arg-type]  # mixed into an HTTPConnection below
        self._holding = isinstance(body, (bytes, memoryview)) and bool(body) and not kwargs.get("chunked")
        self._held = None
        try:
            super().request(method, url, body, headers, **kwargs)  # type: ignore[misc]
        finally:
            held, self._held, self._holding = self._held, None, False
            if held is not None:  # no body went out after all: the headers must not be lost
                super().send(held)

    def send(self, data: Any) -> None:
        if self._holding:
            held = self._held
            if held is None:  # the header block (http.client's _send_output): wait for the body
                self._held = bytes(data)
                return
            self._held, self._holding = None, False
            sock = getattr(self, "sock", None)
            # Plain TCP and connected (a fresh connection connects in super().send). An SSLSocket is
            # a socket.socket too, but its sendmsg raises NotImplementedError.
            if isinstance(sock, socket.socket) and not isinstance(sock, ssl.SSLSocket):
                _send_both(sock, held, data)
                return
            data = held + data
        super().send(data)  # type: ignore[misc]


def _send_both(sock: socket.socket, head: bytes, body: bytes | memoryview) -> None:
    """``sendall(head + body)`` without making ``head + body``: one ``sendmsg``, then whatever it
    did not take (the kernel takes what fits in the socket's buffer)."""
    sent = sock.sendmsg([head, body])
    if sent < len(head):
        sock.sendall(memoryview(head)[sent:])
        sock.sendall(body)
        return
    rest = memoryview(body)[sent - len(head):]
    if rest:
        sock.sendall(rest)


class _TrackedHTTPConnection(_OneSend, HTTPConnection):
    pass


class _TrackedHTTPSConnection(_OneSend, HTTPSConnection):
    pass


class _TrackedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _TrackedHTTPConnection


class _TrackedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _TrackedHTTPSConnection


class Watchdog:
    """Shuts the socket of a request still running at its deadline. ``arm`` before the request,
    ``disarm`` after it (in a ``finally``); ``expired`` tells whether it fired."""

    def __init__(self) -> None:
        self._cv = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int]] = []
        self._armed: dict[int, _Armed] = {}
        self._fired: set[int] = set()
        self._tokens = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, seconds: float) -> int:
        token = next(self._tokens)
        armed = _current.armed = _Armed()
        with self._cv:
            heapq.heappush(self._heap, (time.monotonic() + seconds, token))
            self._armed[token] = armed
            if self._thread is None or not self._thread.is_alive():
                thread = threading.Thread(target=self._run, name="ciotrack-deadline", daemon=True)
                try:
                    thread.start()
                    self._thread = thread
                except RuntimeError:  # at interpreter shutdown: per-read timeouts still bound the request
                    self._thread = None
            # Wake the watchdog only when this deadline is now the earliest: otherwise it already
            # wakes sooner and sees this one then. Requests share one timeout, so that is the first
            # one after a quiet spell, not every request: a wake-up per request cost the sender a
            # GIL hand-over and a quarter of its GIL time (benches/README.md, "Sender cost").
            if self._heap[0][1] == token:
                self._cv.notify()
        return token

    def disarm(self, token: int) -> bool:
        """Forget ``token``; True when its deadline fired (the request was cut)."""
        _current.armed = None
        with self._cv:
            self._armed.pop(token, None)
            if token in self._fired:
                self._fired.discard(token)
                return True
            return False

    def _run(self) -> None:
        block_exit_signals()  # SIGTERM must reach the main thread, not this one (lifecycle.py)
        with self._cv:
            while True:
                while self._heap and self._heap[0][1] not in self._armed:
                    heapq.heappop(self._heap)  # disarmed in time
                if not self._heap:
                    self._cv.wait(30.0)
                    if not self._heap:
                        self._thread = None  # idle: end; the next arm starts a new one
                        return
                    continue
                deadline, token = self._heap[0]
                wait = deadline - time.monotonic()
                if wait > 0:
                    self._cv.wait(wait)
                    continue
                heapq.heappop(self._heap)
                armed = self._armed.pop(token)
                self._fired.add(token)
                _shut(armed.conn)


def _shut(conn: HTTPConnection | None) -> None:
    sock = getattr(conn, "sock", None)
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked recv/send in the request's thread
    except OSError:
        pass


_WATCHDOG = Watchdog()


def watchdog() -> Watchdog:
    """The process's one watchdog (a fresh one after a fork: the parent's thread is not ours)."""
    return _WATCHDOG


class DeadlineAdapter(HTTPAdapter):
    """An ``HTTPAdapter`` whose connections register with the watchdog (no retries of its own)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pool_keys: dict[tuple[Any, ...], tuple[_HostParams, _PoolKwargs]] = {}

    def build_connection_pool_key_attributes(self, request: requests.PreparedRequest, verify: Any,
                                             cert: Any = None) -> tuple[_HostParams, _PoolKwargs]:
        # requests parses the URL and stats a CA bundle path (os.path.isdir: a GIL release) on every
        # request; a tracker sends every batch to one URL with one setting, so remember the answer.
        key = (request.url, verify, cert)
        known = self._pool_keys.get(key)
        if known is None:
            known = super().build_connection_pool_key_attributes(request, verify, cert)
            if len(self._pool_keys) < 64:  # a handful of URLs per tracker; never a leak
                self._pool_keys[key] = known
        return known[0].copy(), known[1].copy()

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _TrackedHTTPPool, "https": _TrackedHTTPSPool}

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not getattr(manager, "_ciotrack_tracked", False):
            manager.pool_classes_by_scheme = {"http": _TrackedHTTPPool, "https": _TrackedHTTPSPool}
            manager._ciotrack_tracked = True
        return manager


def read_capped(response: requests.Response, cap: int = RESPONSE_CAP) -> tuple[bytes, bool]:
    """The body of a ``stream=True`` response, at most ``cap`` bytes; True when it was longer (the
    connection is then closed rather than drained)."""
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_content(65536):
        chunks.append(chunk)
        size += len(chunk)
        if size > cap:
            response.close()
            return b"".join(chunks)[:cap], True
    return b"".join(chunks), False


def _reset_after_fork() -> None:
    global _WATCHDOG
    _WATCHDOG = Watchdog()


os.register_at_fork(after_in_child=_reset_after_fork)
