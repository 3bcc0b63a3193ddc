"""Dead letters: spooled operations that keep failing on replay are set aside, not replayed forever.

A batch the destination refuses with "retry" every time (a 5xx triggered by one malformed operation,
say) would otherwise cycle for ever: retries run out, it is spooled, a probe finds the API up, it is
replayed, its retries run out again. :class:`PoisonWatch` counts, per operation, how many times replay
requeued it; an operation handed back to the spool after :data:`MAX_REPLAYS` replays goes to a
dead-letter file in the spool directory instead (``dead-<time>-<pid>.dead``: the spool's record
format, so the spool's own reader opens it; never claimed nor replayed, kept for inspection), counted
and reported (``on_drop("dead_letter", n)``).

Only replays count, and replay runs only while the destination answers its probe: an outage (probes
failing) does not age operations. Counts are kept in memory, per process: a restart starts them over
(the poison batch then cycles :data:`MAX_REPLAYS` more times before it is set aside again).
"""

from __future__ import annotations

import os
import pathlib
import threading
import time
from collections.abc import Sequence

from ciotrack.spool.records import encode_record

__all__ = ["MAX_REPLAYS", "PoisonWatch"]

MAX_REPLAYS = 5
"""Replays of one operation after which, handed back to the spool once more, it is a dead letter."""
MAX_TRACKED = 200_000
"""Operations whose replay count is kept (past it, the counts start over: memory stays bounded)."""


class PoisonWatch:
    """Replay counts of spooled operations (keyed by ``hash(op)``: a collision can only set an
    operation aside early, onto disk, never lose it) and the dead-letter file they go to."""

    def __init__(self, directory: pathlib.Path, *, fsync: bool) -> None:
        self.directory = directory
        self._fsync = fsync
        self._counts: dict[int, int] = {}
        self._lock = threading.Lock()
        self._path: pathlib.Path | None = None

    def replayed(self, ops: Sequence[bytes]) -> None:
        """Replay requeued ``ops`` (once more)."""
        with self._lock:
            counts = self._counts
            if len(counts) + len(ops) > MAX_TRACKED:
                counts.clear()
            for op in ops:
                key = hash(op)
                counts[key] = counts.get(key, 0) + 1

    def split(self, ops: Sequence[bytes]) -> tuple[list[bytes], list[bytes]]:
        """``(to_spool, dead)``: the operations handed back to the spool that replayed too often."""
        counts = self._counts
        if not counts:
            return list(ops), []
        keep: list[bytes] = []
        dead: list[bytes] = []
        with self._lock:
            for op in ops:
                if counts.get(hash(op), 0) >= MAX_REPLAYS:
                    counts.pop(hash(op), None)
                    dead.append(op)
                else:
                    keep.append(op)
        return keep, dead

    def write(self, ops: Sequence[bytes], region: str) -> pathlib.Path:
        """Append ``ops`` to this process's dead-letter file (one record); its path."""
        with self._lock:
            if self._path is None or not self._path.parent.is_dir():
                self.directory.mkdir(parents=True, exist_ok=True)
                self._path = self.directory / f"dead-{time.time_ns()}-{os.getpid()}.dead"
            fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, encode_record(region, ops))
                if self._fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            return self._path
