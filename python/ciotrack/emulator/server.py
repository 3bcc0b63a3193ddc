"""The HTTP layer: one thread per connection, HTTP/1.1 keep-alive, optional TLS, faults on demand.

Order of a Track API request (each step answers and stops when it fires; none of them applies
anything): reset fault -> 429 storm -> error fault -> slow read -> latency -> auth (401) -> rate
limit (429; its token is taken at arrival, before the latency) -> size (413) -> apply ->
apply-then-drop fault -> answer (the App API's ``/v1/send/*`` branches off after the latency step:
Bearer auth, its own rate limit, see ``transactional.py``). The body is always read
(or drained) before answering so a keep-alive connection stays in sync.

Handshakes run on the connection's thread, never on the accept loop, so a slow or broken TLS
client cannot stall other clients.
"""

from __future__ import annotations

import email.utils
import io
import logging
import socket
import socketserver
import ssl
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any

from ciotrack.emulator import transactional, v1, v2
from ciotrack.emulator.validate import MAX_BATCH_BYTES, MAX_ENTITY_BYTES

if TYPE_CHECKING:
    from ciotrack.emulator.emulator import Emulator

logger = logging.getLogger("ciotrack.emulator")

HANDSHAKE_TIMEOUT = 10.0
# Oversized bodies are read and discarded up to this size so the client sees the 413 rather than a
# broken pipe; beyond it the connection is closed after answering.
MAX_DRAIN_BYTES = 64 * 1024 * 1024
# Bodies from this size up are read straight from the socket (see RequestHandler._read_large).
LARGE_BODY = 64 * 1024
REASONS = {200: "OK", 207: "Multi-Status", 301: "Moved Permanently", 400: "Bad Request", 401: "Unauthorized",
           404: "Not Found",
           405: "Method Not Allowed", 411: "Length Required", 413: "Payload Too Large",
           429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway",
           503: "Service Unavailable", 504: "Gateway Timeout"}
UNAUTHORIZED = b'{"meta":{"errors":["unauthorized: check your site id and api key"]}}'
# The body of a Track API 429 is not documented either; this one has the v2 error shape.
RATE_LIMITED = b'{"errors":[{"reason":"rate_limited","field":"","message":"rate limit exceeded"}]}'
_LINGER_RESET = struct.pack("ii", 1, 0)


class _Abandon(Exception):
    """The connection was deliberately reset or dropped; nothing more is written."""


class RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: EmulatorHTTPServer

    def do_GET(self) -> None:
        self._serve()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_GET

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        logger.debug("%s %s", self.address_string(), format % args)

    # -- body --------------------------------------------------------------------------------

    def _content_length(self) -> int | None:
        """Declared body length; None for a chunked body."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            return None
        try:
            return max(0, int(self.headers.get("Content-Length") or 0))
        except ValueError:
            return 0

    def _read_body(self, length: int | None, limit: int = MAX_DRAIN_BYTES) -> bytes:
        if length is not None:
            if length >= LARGE_BODY and self.server.ssl_context is None:
                return self._read_large(length)
            return self.rfile.read(length) if length else b""
        parts: list[bytes] = []
        total = 0
        while True:
            size = int(self.rfile.readline(1024).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            total += size
            chunk = self.rfile.read(size)
            if total <= limit:
                parts.append(chunk)
            self.rfile.readline(1024)

    def _read_large(self, length: int) -> bytes:
        """Read a big body with as few GIL round trips as possible.

        ``rfile.read`` takes the GIL back after every ``recv`` (tens of KB), which preempts the
        thread applying another connection's batch; one ``MSG_WAITALL`` receive blocks without
        the GIL until the whole body is in. Bytes already buffered by ``rfile`` (read along with
        the headers) are taken from it first, so the stream stays in order.
        """
        buf = bytearray(length)
        view = memoryview(buf)
        rfile = self.rfile
        assert isinstance(rfile, io.BufferedReader)
        got = len(rfile.peek(1)[:length])
        view[:got] = rfile.read(got)
        sock = self.connection
        while got < length:
            n = sock.recv_into(view[got:], length - got, socket.MSG_WAITALL)
            if n == 0:
                break
            got += n
        view.release()
        return bytes(buf[:got]) if got < length else bytes(buf)

    def _drain(self, length: int | None) -> int:
        """Discard the body; returns its size. Closes the connection when it is too big to drain."""
        if length is None:
            return len(self._read_body(None))
        if length > MAX_DRAIN_BYTES:
            self.close_connection = True
            return 0
        remaining = length
        while remaining:
            chunk = self.rfile.read(min(remaining, 1 << 20))
            if not chunk:
                break
            remaining -= len(chunk)
        return length - remaining

    # -- answers -----------------------------------------------------------------------------

    def _send(self, status: int, payload: bytes, headers: tuple[tuple[str, str], ...] = ()) -> None:
        # Every real server sends Date; clients (and ``ciotrack doctor``'s clock check) read it.
        date = email.utils.formatdate(time.time() + self.server.app.fault_state.faults.clock_skew, usegmt=True)
        lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}", f"Date: {date}",
                 "Content-Type: application/json", f"Content-Length: {len(payload)}"]
        lines.extend(f"{k}: {v}" for k, v in headers)
        if self.close_connection:
            lines.append("Connection: close")
        self.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload)

    def _reset(self) -> None:
        """Abort with a TCP RST (SO_LINGER 0): the client sees 'connection reset by peer'."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        self._close_now()

    def _close_now(self) -> None:
        self.close_connection = True
        try:
            self.connection.close()  # the fd closes once rfile lets go of it, below
            self.rfile.close()
        except OSError:
            pass
        raise _Abandon

    def finish(self) -> None:
        try:
            super().finish()
        except (OSError, ValueError):
            pass

    # -- dispatch ----------------------------------------------------------------------------

    def _serve(self) -> None:
        app = self.server.app
        path, _, query = self.path.partition("?")
        if path.startswith("/_emulator/"):
            body = self._read_body(self._content_length())
            status, payload = app.control(self.command, path, query, body)
            self._send(status, payload)
            return
        app.request_started()
        record: dict[str, Any] = {"method": self.command, "path": path, "query": query, "status": None}
        try:
            self._track(app, path, query, record)
        except _Abandon:
            pass
        except (ConnectionError, TimeoutError, ssl.SSLError) as err:
            logger.debug("connection lost while answering %s %s: %s", self.command, path, err)
            self.close_connection = True
        except Exception:
            # An emulator bug: make it loud (500 + a logged traceback) rather than a silent hang-up.
            logger.exception("emulator failed on %s %s", self.command, path)
            self.close_connection = True
            if record["status"] is None:
                try:
                    self._answer(app, record, 500, b'{"errors":[{"reason":"emulator_error","field":"",'
                                 b'"message":"the emulator failed; see its log"}]}')
                except OSError:
                    pass
        finally:
            app.request_finished(record)

    def _answer(self, app: Emulator, record: dict[str, Any], status: int, payload: bytes,
                headers: tuple[tuple[str, str], ...] = ()) -> None:
        record["status"] = status
        app.count_status(status)
        # Logged before the answer goes out: once a client has its answer, requests() shows it.
        app.log_request(record)
        self._send(status, payload, headers)

    def _track(self, app: Emulator, path: str, query: str, record: dict[str, Any]) -> None:
        length = self._content_length()
        faults_state = app.fault_state
        faults = faults_state.faults
        record["headers"] = {k: v for k, v in self.headers.items() if k.lower() != "authorization"}

        if faults_state.chance(faults.reset_rate):
            # Take part of the request so the client is mid-exchange, then reset.
            if length:
                self.rfile.read(max(1, length // 2))
            app.count_fault("reset")
            record["fault"] = "reset"
            self._reset()
        if faults.redirect_to:
            app.count_bytes(self._drain(length))
            app.count_fault("redirect")
            record["fault"] = "redirect"
            self._answer(app, record, 301, b"", (("Location", faults.redirect_to + path),))
            return
        if faults.storm_429_until > time.time():
            app.count_bytes(self._drain(length))
            app.count_fault("storm_429")
            record["fault"] = "storm_429"
            retry_after = str(faults.storm_429_retry_after)
            self._answer(app, record, 429, b'{"errors":[{"reason":"rate_limited","field":"",'
                         b'"message":"429 storm injected by the emulator"}]}', (("Retry-After", retry_after),))
            return
        if faults_state.chance(faults.error_rate):
            app.count_bytes(self._drain(length))
            status = faults.error_statuses[int(faults_state.uniform(len(faults.error_statuses))) %
                                           len(faults.error_statuses)]
            app.count_fault("error")
            record["fault"] = "error"
            self._answer(app, record, status, b'{"errors":[{"reason":"injected","field":"",'
                         b'"message":"error injected by the emulator"}]}')
            return
        if faults.slow_read > 0:
            app.count_bytes(self._drain(length))
            app.count_fault("slow_read")
            record["fault"] = "slow_read"
            app.stopping.wait(faults.slow_read)
            self.close_connection = True
            self._answer(app, record, 503, b'{"errors":[{"reason":"timeout","field":"",'
                         b'"message":"slow read injected by the emulator; not applied"}]}')
            return
        # The rate limit is taken at arrival, before the latency: a real service's limiter sits at its
        # edge, so a random processing time must not reorder (and bunch) requests past it.
        # (The App API's paths have their own auth and limit, after the latency.)
        track_api = not path.startswith(transactional.PATH_PREFIX)
        workspace = app.authenticate(self.headers.get("Authorization")) if track_api else None
        wait = app.rate_limit_wait(workspace) if workspace is not None else 0.0
        if faults.latency > 0 or faults.latency_jitter > 0:
            delay = faults_state.latency()
            app.count_fault("latency")
            app.stopping.wait(delay)

        if not track_api:
            self._transactional(app, path, length, record)
            return

        record["site_id"] = workspace.site_id if workspace is not None else None
        if workspace is None and path not in v1.NO_AUTH_PATHS:
            app.count_bytes(self._drain(length))
            self._answer(app, record, 401, UNAUTHORIZED)
            return
        if workspace is not None:
            if wait > 0:
                app.count_bytes(self._drain(length))
                app.count_fault("rate_limited")
                record["fault"] = "rate_limited"
                # No Retry-After: Customer.io documents neither a 429 body nor a Retry-After header for the
                # Track API (customerio-api.md §6), so the limiter does not promise one; a client must
                # pace itself. (The 429 storm fault sends one on purpose, for Retry-After handling.)
                self._answer(app, record, 429, RATE_LIMITED)
                return

        # The status for an oversized body is not documented (v2 lists 200, 207, 400, 401). 413 is the
        # HTTP answer, and what a proxy or load balancer in front of the API would send; a client should
        # never send Customer.io a body over the limits in the first place.
        limit = MAX_ENTITY_BYTES if path == "/api/v2/entity" else MAX_BATCH_BYTES
        if faults.max_body_bytes:
            limit = min(limit, faults.max_body_bytes)
        if length is not None and length > limit:
            app.count_bytes(self._drain(length))
            self._answer(app, record, 413, f'{{"errors":[{{"reason":"too_large","field":"",'
                         f'"message":"request body is over {limit} bytes"}}]}}'.encode())
            return
        body = self._read_body(length)
        app.count_bytes(len(body))
        record["body"] = body
        if len(body) > limit:
            self._answer(app, record, 413, b'{"errors":[{"reason":"too_large","field":"","message":"body too large"}]}')
            return

        now = int(time.time())
        if path == "/api/v2/batch" and self.command == "POST":
            assert workspace is not None
            (status, payload), accepted, rejected = v2.handle_batch(workspace, body, now)
            app.count_batch()
        elif path == "/api/v2/entity" and self.command == "POST":
            assert workspace is not None
            (status, payload), accepted, rejected = v2.handle_entity(workspace, body, now)
        elif path.startswith("/api/v1/"):
            (status, payload), accepted, rejected = v1.handle(workspace, self.command, path, query, body, now,
                                                              app.url, app.region)
        else:
            status, payload, accepted, rejected = 404, b'{"errors":[{"reason":"not_found","field":"",' \
                                                       b'"message":"no such endpoint"}]}', 0, 0
        app.count_operations(accepted, rejected)

        if status < 300 and faults_state.chance(faults.apply_then_drop_rate):
            app.count_fault("apply_then_drop")
            record["fault"] = "apply_then_drop"
            record["status"] = "dropped"
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._close_now()
        self._answer(app, record, status, payload)


    def _transactional(self, app: Emulator, path: str, length: int | None, record: dict[str, Any]) -> None:
        """The App API's ``/v1/send/*`` (after the faults): Bearer auth, its own rate limit, 1 MB + attachments."""
        workspace = app.authenticate_app(self.headers.get("Authorization"))
        record["site_id"] = workspace.site_id if workspace is not None else None
        if workspace is None:
            app.count_bytes(self._drain(length))
            self._answer(app, record, 401, transactional.UNAUTHORIZED)
            return
        wait = app.rate_limit_wait(workspace, "app")
        if wait > 0:
            app.count_bytes(self._drain(length))
            app.count_fault("rate_limited")
            record["fault"] = "rate_limited"
            # No Retry-After here either: none is documented for the App API (customerio-api.md §6).
            self._answer(app, record, 429, transactional.error_body("rate limit exceeded"))
            return
        if length is not None and length > transactional.MAX_BODY_BYTES:
            app.count_bytes(self._drain(length))
            self._answer(app, record, 413, transactional.error_body("request body too large"))
            return
        body = self._read_body(length)
        app.count_bytes(len(body))
        record["body"] = body
        if self.command != "POST":
            self._answer(app, record, 405, transactional.error_body("use POST"))
            return
        status, payload = app.transactional.handle(workspace.site_id, path[len(transactional.PATH_PREFIX):], body,
                                                   int(time.time()))
        self._answer(app, record, status, payload)


class EmulatorHTTPServer(socketserver.TCPServer):
    """TCPServer with one daemon thread per connection, tracked so ``close_all`` can end them."""

    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], app: Emulator, ssl_context: ssl.SSLContext | None) -> None:
        self.app = app
        self.ssl_context = ssl_context
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._closing = False
        super().__init__(address, RequestHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(target=self._serve_connection, args=(request, client_address),
                                  name="ciotrack-emulator-conn", daemon=True)
        with self._lock:
            if self._closing:
                request.close()
                return
            self._threads.add(thread)
        thread.start()

    def _serve_connection(self, request: socket.socket, client_address: Any) -> None:
        conn = request
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.ssl_context is not None:
                request.settimeout(HANDSHAKE_TIMEOUT)
                conn = self.ssl_context.wrap_socket(request, server_side=True)
                conn.settimeout(None)
            with self._lock:
                if self._closing:
                    return
                self._connections.add(conn)
            self.RequestHandlerClass(conn, client_address, self)  # type: ignore[arg-type]
        except Exception as err:  # a broken client must never take the server down
            logger.debug("connection from %s ended: %r", client_address, err)
        finally:
            with self._lock:
                self._connections.discard(conn)
                self._threads.discard(threading.current_thread())
            try:
                conn.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            conn.close()

    def close_all(self, timeout: float) -> None:
        """Unblock and end every connection thread (keep-alive readers block in recv otherwise)."""
        with self._lock:
            self._closing = True
            connections = list(self._connections)
            threads = list(self._threads)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
