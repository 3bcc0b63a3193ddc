"""Helpers of the webhook tests: signing that computes the HMAC by hand from the documented formula
(independently of ciotrack.webhooks.sign), free ports."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Callable
from typing import Any

SECRET = "whsec-test-7d1f"


def hand_signature(secret: str, timestamp: str, body: bytes) -> str:
    """HMAC-SHA256 written out (RFC 2104) over ``v0:<timestamp>:<body>``, lowercase hex."""
    key = secret.encode()
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    key = key.ljust(64, b"\0")
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in key) + b"v0:" + timestamp.encode() + b":" + body).digest()
    return hashlib.sha256(bytes(b ^ 0x5C for b in key) + inner).hexdigest()


def signed(payload: dict[str, Any] | bytes, secret: str = SECRET, timestamp: int | None = None
           ) -> tuple[bytes, dict[str, str]]:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    ts = str(int(time.time()) if timestamp is None else timestamp)
    return body, {"X-CIO-Timestamp": ts, "X-CIO-Signature": hand_signature(secret, ts, body),
                  "Content-Type": "application/json"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def in_forked_child(body: Callable[[], str]) -> str:
    """``body()`` run in a forked child, its text passed back through a pipe. The child ends with
    ``os._exit`` whatever happens (never pytest's teardown twice); a child that failed fails the test."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(read_end)
            os.write(write_end, body().encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    assert status == 0, f"the child exited with status {status}"
    return answer
