"""The destination's connections send a request's header block and its body in one ``sendall``
(each ``sendall`` is a GIL hand-over), and a request without a body still sends its headers."""

from __future__ import annotations

import socket
import threading
from typing import Any

import pytest

from ciotrack.destinations.http import _TrackedHTTPConnection


class RecordingSocket:
    """A real connected socket that also notes each ``sendall``."""

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

    def __init__(self, server: socket.socket) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.data = b""

    def run(self) -> None:
        while chunk := self.server.recv(1 << 20):
            self.data += chunk

    def received(self, client: socket.socket) -> bytes:
        client.shutdown(socket.SHUT_WR)
        self.join(10)
        return self.data


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
def test_headers_and_body_go_out_in_one_sendall(body_bytes: int) -> None:
    body = b'{"batch":[' + b"x" * (body_bytes - 12) + b']}'
    sent = _sent("POST", "/api/v2/batch", body=body, headers={"Content-Type": "application/json"})
    head, _, rest = sent.partition(b"\r\n\r\n")
    assert head.startswith(b"POST /api/v2/batch HTTP/1.1\r\n")
    assert f"Content-Length: {len(body)}".encode() in head
    assert rest == body


def test_a_request_without_a_body_sends_its_headers() -> None:
    sent = _sent("GET", "/api/v1/accounts/region")
    assert sent.startswith(b"GET /api/v1/accounts/region HTTP/1.1\r\n") and sent.endswith(b"\r\n\r\n")
