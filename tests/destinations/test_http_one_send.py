"""The destination's connections send a request's header block and its body in one system call (each
is a GIL hand-over): a ``sendmsg`` of both on a plain TCP socket (no copy), one ``sendall`` of the two
joined where there is no ``sendmsg`` (TLS); a request without a body still sends its headers."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pytest

from ciotrack.destinations.http import _TrackedHTTPConnection


class RecordingSocket:
    """A real connected socket that also notes each ``sendall``; not a ``socket.socket`` (like an
    ``SSLSocket``, as far as the connection is concerned: it has no usable ``sendmsg``)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sent: list[bytes] = []

    def sendall(self, data: Any) -> None:
        self.sent.append(bytes(data))
        self.sock.sendall(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


class Reader(threading.Thread):
    """Reads the other end while the request is sent (a 500 KB body fills the socket buffers)."""

    def __init__(self, server: socket.socket, start_after: float = 0.0) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.data = b""
        self.start_after = start_after

    def run(self) -> None:
        time.sleep(self.start_after)
        while chunk := self.server.recv(1 << 20):
            self.data += chunk

    def received(self, client: socket.socket) -> bytes:
        client.shutdown(socket.SHUT_WR)
        self.join(10)
        return self.data


class RecordingPlainSocket(socket.socket):
    """A real connected plain socket that notes each ``sendmsg`` and ``sendall`` (what it was given)."""

    calls: list[tuple[str, list[bytes]]]

    def sendmsg(self, buffers: Any, *args: Any) -> int:  # type: ignore[override]
        buffers = list(buffers)
        self.calls.append(("sendmsg", [bytes(b) for b in buffers]))
        return super().sendmsg(buffers, *args)

    def sendall(self, data: Any, *args: Any) -> None:  # type: ignore[override]
        self.calls.append(("sendall", [bytes(data)]))
        super().sendall(data, *args)


def _sent_plain(body: Any, send_buffer: int | None = None) -> tuple[list[tuple[str, list[bytes]]], bytes]:
    """One POST of ``body`` on a tracked connection over a real plain socket pair: the socket calls
    made, and the bytes that arrived at the other end."""
    server, client = socket.socketpair()
    if send_buffer is not None:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
    server.settimeout(10)
    plain = RecordingPlainSocket(client.family, client.type, fileno=client.detach())
    plain.calls = []
    with server, plain:
        # With a small send buffer and nobody reading yet, the first sendmsg cannot take it all.
        reader = Reader(server, start_after=0.0 if send_buffer is None else 0.2)
        reader.start()
        # A timeout, as the sender's connections have (urllib3 puts it on the socket before sending):
        # the socket is then non-blocking underneath, and a send takes what fits in the buffer.
        conn = _TrackedHTTPConnection("127.0.0.1", 9, timeout=10)
        conn.sock = plain
        conn.request("POST", "/api/v2/batch", body=body, headers={"Content-Type": "application/json"})
        return plain.calls, reader.received(plain)


def test_on_a_plain_socket_headers_and_a_memoryview_body_go_out_in_one_sendmsg_without_a_join() -> None:
    body = b'{"batch":[' + b"x" * 1000 + b']}'
    calls, received = _sent_plain(memoryview(body))
    [(call, buffers)] = calls
    assert call == "sendmsg"
    head = buffers[0]
    assert buffers == [head, body]  # two buffers, gathered by the kernel: nothing joined them
    assert head.startswith(b"POST /api/v2/batch HTTP/1.1\r\n") and head.endswith(b"\r\n\r\n")
    assert f"Content-Length: {len(body)}".encode() in head
    assert received == head + body


def test_what_one_sendmsg_leaves_over_is_sent_after_it() -> None:
    # A 500 KB body through a send buffer of a few KB: sendmsg takes part, sendall the rest.
    body = b'{"batch":[' + bytes(range(48, 58)) * 50_000 + b']}'
    calls, received = _sent_plain(body, send_buffer=4096)
    assert calls[0][0] == "sendmsg" and len(calls) >= 2
    head = calls[0][1][0]
    assert received == head + body


def _sent(method: str, path: str, **request: Any) -> bytes:
    """What one ``request()`` on a tracked connection handed to the socket: exactly one send call,
    and what arrived at the other end of a real socket pair is the same bytes."""
    server, client = socket.socketpair()
    server.settimeout(10)
    with server, client:
        reader = Reader(server)
        reader.start()
        conn = _TrackedHTTPConnection("127.0.0.1", 9)
        recording = RecordingSocket(client)
        conn.sock = recording  # type: ignore[assignment]
        conn.request(method, path, **request)
        [sent] = recording.sent
        assert reader.received(client) == sent  # and it is what went over the socket
        return sent


@pytest.mark.parametrize("body_bytes", [12, 500_000])
def test_without_sendmsg_headers_and_body_go_out_in_one_sendall(body_bytes: int) -> None:
    body = b'{"batch":[' + b"x" * (body_bytes - 12) + b']}'
    sent = _sent("POST", "/api/v2/batch", body=body, headers={"Content-Type": "application/json"})
    head, _, rest = sent.partition(b"\r\n\r\n")
    assert head.startswith(b"POST /api/v2/batch HTTP/1.1\r\n")
    assert f"Content-Length: {len(body)}".encode() in head
    assert rest == body


def test_a_request_without_a_body_sends_its_headers() -> None:
    sent = _sent("GET", "/api/v1/accounts/region")
    assert sent.startswith(b"GET /api/v1/accounts/region HTTP/1.1\r\n") and sent.endswith(b"\r\n\r\n")
