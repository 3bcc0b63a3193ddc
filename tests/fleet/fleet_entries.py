"""Work entries written straight to the stream, and a worker run in this process: for tests that set up
an exact stream and PEL state (idle entries of a dead peer, busy ones of a live peer) before a worker
sees it, or call one of its steps directly."""

from __future__ import annotations

import json
import threading
from collections import Counter
from typing import Any

from ciotrack.fleet.streams import StreamKeys, encode_entry, ensure_group
from ciotrack.fleet.worker import Worker, WorkerConfig

from .fleet_procs import SITE_ID, event_op

KEYS = StreamKeys.for_site(SITE_ID)


def write_entries(client: Any, n: int, per: int = 5, keys: StreamKeys = KEYS) -> list[str]:
    """``n`` entries of ``per`` events each (customer ``c<entry>``); their ids. ``client`` may be a
    pipeline (then the group must exist and the ids are only known at ``execute()``)."""
    if not hasattr(client, "command_stack"):
        ensure_group(client, keys)
    ids = []
    for e in range(n):
        body = b'{"batch":[' + b",".join(event_op(e, s) for s in range(per)) + b"]}"
        entry_id = client.xadd(keys.work, encode_entry(body, "us", "test:1:x"))
        ids.append(entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id))
    return ids


def leave_idle(client: Any, consumer: str, ids: list[str], keys: StreamKeys = KEYS) -> None:
    """``consumer`` read ``ids`` (the next undelivered entries) long ago and never acknowledged them: a
    dead worker's."""
    client.xreadgroup(keys.group, consumer, {keys.work: ">"}, count=len(ids))
    client.xclaim(keys.work, keys.group, consumer, 0, ids, idle=600_000, justid=True)


def start_worker(config: WorkerConfig) -> tuple[Worker, threading.Thread]:
    """A worker running on a thread of this process; ``worker.drain()`` then ``thread.join(...)``."""
    worker = Worker(config)
    thread = threading.Thread(target=worker.run, name="test-worker", daemon=True)
    thread.start()
    return worker, thread


def posts_per_event(emulator: Any) -> Counter[str]:
    """How many Track API requests carried each event id (the emulator's store keeps an id once, so
    ``stored_events`` cannot see a duplicate send)."""
    out: Counter[str] = Counter()
    for request in emulator.requests():
        body = request.get("body")
        if body:
            out.update(op["id"] for op in json.loads(body)["batch"] if "id" in op)
    return out
