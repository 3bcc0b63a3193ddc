"""Every adapter over its real server: a body over ``max_body`` is refused with 413 before it is read
(declared or chunked), a genuine large webhook is taken alike by all of them, and the ASGI adapters keep
the event loop free while ``handle()`` waits on I/O."""

from __future__ import annotations

import json
import socket
import threading
import urllib.parse
from typing import Any

import pytest
from webhook_helpers import SECRET, signed
from webhook_servers import ADAPTERS, request, serve_adapter

from ciotrack.webhooks import Event, MemoryDedup, RedisDedup, WebhookHandler
from ciotrack.webhooks.samples import event_payload

LIMIT = 64 * 1024


def _raw_exchange(url: str, head: bytes, body_pieces: list[bytes]) -> tuple[int, dict[str, Any]]:
    """Send ``head`` and ``body_pieces`` on a socket, then read the answer until the server closes or
    the answer is complete. The sender stops after the pieces, whatever the head declared: an adapter
    that waited for the rest of the body would time the read out."""
    parts = urllib.parse.urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(head)
        for piece in body_pieces:
            try:
                sock.sendall(piece)
            except OSError:  # the server answered and closed before taking it all: fine
                break
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        head_part, _, rest = received.partition(b"\r\n\r\n")
        status = int(head_part.split(b" ", 2)[1])
        headers = {line.split(b":", 1)[0].strip().lower(): line.split(b":", 1)[1].strip()
                   for line in head_part.split(b"\r\n")[1:] if b":" in line}
        length = int(headers.get(b"content-length", b"0"))
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
    return status, json.loads(rest[:length]) if length else {}


def _head(path: str, *lines: str) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n" + "".join(line + "\r\n" for line in lines)
            + "\r\n").encode()


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_a_declared_body_over_max_body_is_refused_unread(adapter: str) -> None:
    received: list[Event] = []
    handler = WebhookHandler(SECRET, received.append, max_body=LIMIT)
    with serve_adapter(adapter, handler) as url:
        path = urllib.parse.urlsplit(url).path
        # 64 MiB declared, 16 KiB sent: the answer must come without the rest.
        status, answer = _raw_exchange(url, _head(path, f"Content-Length: {64 << 20}",
                                                  "Content-Type: application/json"), [b"x" * 16384])
        assert (status, answer) == (413, {"error": "body_too_large"})
        # Just under the limit is read, verified and (unsigned) refused as usual.
        body = b"x" * (LIMIT - 1)
        assert request(url, body=body, headers=[("Content-Type", "application/json")])[0] == 401
        # A genuine webhook goes through as before.
        assert request(url, body=(signed_one := signed(event_payload(event_id=f"lim-{adapter}")))[0],
                       headers=list(signed_one[1].items())) == (200, {"ok": True})
    assert handler.close(5) and [e.event_id for e in received] == [f"lim-{adapter}"]
    assert handler.stats()["rejected:body_too_large"] == 1


@pytest.mark.parametrize("adapter", [a for a in ADAPTERS if a != "django"])  # wsgiref has no chunked bodies
def test_a_chunked_body_is_refused_once_it_grows_over_max_body(adapter: str) -> None:
    handler = WebhookHandler(SECRET, lambda e: None, max_body=LIMIT)
    with serve_adapter(adapter, handler) as url:
        path = urllib.parse.urlsplit(url).path
        piece = b"x" * 16384
        chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
        # Ten chunks (160 KiB) and then nothing: no terminating chunk is ever sent.
        status, answer = _raw_exchange(url, _head(path, "Transfer-Encoding: chunked"), [chunk] * 10)
        assert (status, answer) == (413, {"error": "body_too_large"})
        # A signed chunked webhook under the limit is read to its end and taken.
        body, headers = signed(event_payload(event_id=f"chunked-{adapter}"))
        pieces = [body[:50], body[50:]]
        wire = b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in pieces) + b"0\r\n\r\n"
        lines = ["Transfer-Encoding: chunked", *(f"{k}: {v}" for k, v in headers.items())]
        assert _raw_exchange(url, _head(path, *lines), [wire]) == (200, {"ok": True})
    assert handler.close(5)


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_a_genuine_3_mb_webhook_is_taken_by_every_adapter(adapter: str) -> None:
    """A "sent" event with Body Content on carries the message: 3 MB is over Django's 2.5 MB
    ``DATA_UPLOAD_MAX_MEMORY_SIZE``, which must not turn it into a 400 (a 400 holds back the feed)."""
    received: list[Event] = []
    handler = WebhookHandler(SECRET, received.append)
    payload = event_payload("email", "sent", event_id=f"big-{adapter}", content="<p>" + "x" * 3_000_000 + "</p>")
    body, headers = signed(payload)
    with serve_adapter(adapter, handler) as url:
        assert request(url, body=body, headers=list(headers.items())) == (200, {"ok": True})
    assert handler.close(5)
    assert [(e.event_id, len(e.data["content"])) for e in received] == [(f"big-{adapter}", 3_000_007)]


def test_may_block_says_when_handle_waits_on_io_or_user_code(redis_url: str) -> None:
    def nothing(event: Event) -> None:
        pass

    assert not WebhookHandler(SECRET, nothing).may_block
    assert not WebhookHandler(SECRET, nothing, dedup=MemoryDedup(10)).may_block
    assert not WebhookHandler(SECRET, nothing, dedup=None).may_block
    assert WebhookHandler(SECRET, nothing, dedup=RedisDedup(url=redis_url)).may_block
    assert WebhookHandler(SECRET, nothing, inline=True).may_block
    assert WebhookHandler(SECRET, dispatch=nothing).may_block


@pytest.mark.parametrize("adapter", ["fastapi", "starlette", "asgi"])
def test_asgi_adapters_hand_off_concurrently_off_the_event_loop(adapter: str) -> None:
    """Three webhooks whose hand-off each waits for the other two (a barrier): only if no hand-off runs
    on the event loop can all three be inside it at once. On the loop, the first would hold it, the
    barrier would break after its timeout, and every answer would be 503."""
    barrier = threading.Barrier(3, timeout=10)
    threads: list[str] = []

    def queue(event: Event) -> None:
        threads.append(threading.current_thread().name)
        barrier.wait()

    handler = WebhookHandler(SECRET, dispatch=queue)
    answers: list[tuple[int, dict[str, Any]]] = []
    with serve_adapter(adapter, handler) as url:
        def post(n: int) -> None:
            body, headers = signed(event_payload(event_id=f"loop-{adapter}-{n}"))
            answers.append(request(url, body=body, headers=list(headers.items())))

        clients = [threading.Thread(target=post, args=(n,)) for n in range(3)]
        for client in clients:
            client.start()
        for client in clients:
            client.join(20)
    assert answers == [(200, {"ok": True})] * 3
    assert len(threads) == 3 and not any(name.startswith("test-uvicorn") for name in threads)


def test_redis_dedup_from_a_url_gives_up_on_a_stalled_redis_and_fails_open(redis_url: str) -> None:
    """A Redis that stops answering writes (``CLIENT PAUSE``, as in a failover) must not hold a webhook
    past Customer.io's 4 s: the client RedisDedup builds from a url times out and the event is taken
    without dedup (fail open). Without a timeout the claim would wait out the pause and succeed."""
    import redis

    received: list[Event] = []
    dedup = RedisDedup(url=redis_url, prefix="stalled:")
    handler = WebhookHandler(SECRET, received.append, dedup=dedup)
    admin = redis.Redis.from_url(redis_url)
    admin.execute_command("CLIENT", "PAUSE", "8000", "WRITE")
    try:
        response = handler.handle(*signed(event_payload(event_id="stalled-1")))
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")
    assert response.status == 200 and dedup.errors == 1
    assert handler.close(5) and [e.event_id for e in received] == ["stalled-1"]
