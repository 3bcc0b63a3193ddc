"""Disk spool: durable, append-only segment files of encoded Track API v2 operations.

Operations land here when they cannot be delivered now (Customer.io unreachable past the retry
budget, the queue full, exit before delivery finished) and are replayed later, by this process or
the next, as their original bytes (so with their original event ids).

A spool directory holds segments named ``{time_ns:020d}-{pid:010d}-{seq:08d}.spool``: fixed widths,
so names sort in creation order across processes and replay goes oldest first. A segment is born
as ``.{name}.creating``, locked, then renamed, so no claimer ever sees it before its writer holds
the lock. Files are 0600: they hold personal data.

Records are framed by :mod:`ciotrack.spool.records` (the format and its damage policy).

Entries that are not regular files (a directory or FIFO named like a segment) and files that cannot
be opened are skipped (logged once), never a reason to stop replaying the rest. A segment deleted
under its writer (a tmp cleaner, ``rm -rf`` of the spool) is noticed before the next write: the
write goes to a fresh segment (the directory is made again), and what the deleted one held is
reported through ``on_deleted``.

Locking (``flock``, so local filesystems only): a writer holds ``LOCK_EX`` on its segment until it
rotates or closes. ``claim`` takes ``LOCK_EX|LOCK_NB`` and then checks that the path still names
the locked inode (a segment deleted between our open and our lock is skipped), and ``done``
unlinks before unlocking: two replayers never replay one file twice. A dead process's locks die
with it, so its leftovers are claimable. Locks are dropped only by closing, never ``LOCK_UN``:
a forked child shares its parent's locks and must close its copies without releasing them.

Durability: each ``append`` reaches the OS in one unbuffered ``write``, so a killed process loses
nothing ``append`` returned from; a kernel crash or power loss can lose the unsynced tail unless
``fsync=True`` (then appends, segment creation and deletion are synced).
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import pathlib
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Final

from ciotrack.spool.records import (
    HEADER_BYTES,
    MAGIC,
    VERSION,
    HeaderScan,
    encode_record,
    scan_headers,
)
from ciotrack.spool.segment_file import Segment, fsync_dir, lock_existing, skip_once

__all__ = ["HEADER_BYTES", "MAGIC", "SEGMENT_BYTES", "VERSION", "Segment", "Spool", "encode_record", "spool_directory"]

log = logging.getLogger("ciotrack.spool")

SEGMENT_BYTES = 16 << 20
"""A segment is rotated once it holds this many bytes (the default of ``Spool(segment_bytes=)``): the
grain of replay (a segment is deleted once all of it is delivered) and of size-cap eviction."""
SEGMENT_SUFFIX: Final = ".spool"
_CREATING_SUFFIX: Final = ".creating"
# How stale our view of other processes' spool bytes may get before append re-reads the directory.
_RESCAN_SECONDS: Final = 1.0


@dataclass
class _Writer:
    fd: int
    name: str
    size: int = 0


class Spool:
    """A directory of segment files, shared safely by threads and by processes."""

    def __init__(self, directory: str | os.PathLike[str], *, max_bytes: int = 1 << 30,
                 segment_bytes: int | None = None, fsync: bool = False,
                 on_evict: Callable[[int], None] | None = None,
                 on_deleted: Callable[[int], None] | None = None,
                 on_refuse: Callable[[int], None] | None = None) -> None:
        if segment_bytes is None:
            segment_bytes = SEGMENT_BYTES
        if max_bytes <= 0 or segment_bytes <= 0:
            raise ValueError("max_bytes and segment_bytes must be positive")
        self.directory = pathlib.Path(directory)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        self._on_evict = on_evict
        self._on_deleted = on_deleted
        self._on_refuse = on_refuse
        self._foreign_only: set[str] = set()  # segments we wrote back for a newer version: never ours to claim
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._writer: _Writer | None = None
        self._seq = 0
        self._last_ns = 0
        self._scans: dict[str, HeaderScan] = {}
        self._claimed: set[Segment] = set()
        self._estimated_bytes = 0  # bytes in the directory as of the last scan, plus our appends since
        self._scanned_at = float("-inf")
        self._closed = False

    # -- public API -------------------------------------------------------------------------------

    def append(self, ops: Sequence[bytes], *, region: str = "us") -> int:
        """Write ``ops`` as one record; the number of ops written. Over ``max_bytes``, the oldest
        unlocked segments are deleted first and their op count reported to ``on_evict``. A record
        larger than ``max_bytes`` is written as smaller ones; one that still cannot fit (a single
        op over ``max_bytes``, or everything else is locked) is refused: not written, its op count
        reported to ``on_refuse``."""
        record = encode_record(region, ops)
        if not ops:
            return 0
        if len(record) > self.max_bytes and len(ops) > 1:
            half = len(ops) // 2
            return self.append(ops[:half], region=region) + self.append(ops[half:], region=region)
        written = 0
        with self._guard():
            if self._closed:
                raise ValueError("append to a closed spool")
            # Before anything reads the directory: if it was deleted (rm -rf of the spool), the loss
            # of our writer segment is noticed and reported whichever path this append takes.
            deleted = self._check_writer()
            evicted, fits = self._make_room(len(record))
            if fits:
                self._write(record, len(ops))
                written = len(ops)
            else:
                log.warning("spool %s is full (max_bytes=%d): refused a record of %d ops, %d bytes",
                            self.directory, self.max_bytes, len(ops), len(record))
        # The losses, reported outside the lock: a hook may call us back.
        _report(self._on_deleted, deleted, "on_deleted")
        _report(self._on_evict, evicted, "on_evict")
        _report(self._on_refuse, 0 if written else len(ops), "on_refuse")
        return written

    def pending(self) -> tuple[int, int]:
        """``(ops, bytes)`` in every segment of the directory, other processes' included. Ops are
        counted from record headers of complete records; bytes are file sizes."""
        with self._guard():
            total, segments = self._scan_dir()
            return sum(self._scans[name].ops for name, _ in segments), total

    def claim(self) -> Iterator[Segment]:
        """Lock and yield, oldest first, every segment no process holds. Our own writer segment is
        rotated first so its records are included. Runs lazily, as the iterator is consumed. Finish
        every segment with ``done()`` or ``release()``; ``close()`` releases any still held."""
        with self._guard():
            if self._closed:
                raise ValueError("claim from a closed spool")
            self._close_writer()
            self._sweep_stale_creating()
            names = [n for n in self._segment_names() if n not in self._foreign_only]
        for name in names:
            fd = lock_existing(self.directory / name)
            if fd is None:
                continue
            segment = Segment(self.directory / name, fd, fsync=self.fsync, on_finish=self._forget,
                              keep_foreign=self._write_foreign)
            with self._guard():
                if self._closed:
                    segment._finish(notify=False)
                    return
                self._claimed.add(segment)
            yield segment

    def close(self) -> None:
        """Close the writer segment (fsync'd when ``fsync=True``) and release claimed segments."""
        with self._guard():
            if self._closed:
                return
            self._closed = True
            self._close_writer()
            claimed, self._claimed = list(self._claimed), set()
        for segment in claimed:
            segment.release()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- internals (called with self._lock held unless noted) -------------------------------------

    def _guard(self) -> threading.Lock:
        """The instance lock, renewed in a forked child (another thread may have held it at fork).
        The child also drops its copies of the parent's descriptors: the parent keeps its writer
        segment and its claims, the child starts a segment of its own."""
        if os.getpid() != self._pid:
            self._pid = os.getpid()
            self._lock = threading.Lock()
            if self._writer is not None:
                os.close(self._writer.fd)
                self._writer = None
            for segment in self._claimed:
                segment._finish(notify=False)
            self._claimed = set()
        return self._lock

    def _forget(self, segment: Segment) -> None:  # called without the lock, from Segment
        with self._guard():
            self._claimed.discard(segment)

    def _segment_names(self) -> list[str]:
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            # The directory was deleted (a tmp cleaner, rm -rf): it holds nothing; make it again so
            # the spool keeps working instead of failing every append from now on.
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            return []
        return sorted(n for n in names if n.endswith(SEGMENT_SUFFIX) and not n.startswith("."))

    def _scan_dir(self) -> tuple[int, list[tuple[str, int]]]:
        """Total bytes and ``(name, size)`` of every segment, oldest first; refreshes op counts."""
        segments: list[tuple[str, int]] = []
        for name in self._segment_names():
            path = self.directory / name
            try:
                size = os.stat(path).st_size
                scan = self._scans.setdefault(name, HeaderScan())
                if scan.offset < size and not scan.stopped:
                    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                    try:
                        scan_headers(fd, scan, size)
                    finally:
                        os.close(fd)
            except FileNotFoundError:  # replayed or evicted by someone else just now
                continue
            except OSError as exc:  # not ours to read (a foreign file, a directory): not counted
                skip_once(path, exc.strerror or str(exc))
                continue
            segments.append((name, size))
        kept = {name for name, _ in segments}
        if self._writer is not None:  # even when deleted under us: _check_writer reports its ops from it
            kept.add(self._writer.name)
        self._scans = {name: scan for name, scan in self._scans.items() if name in kept}
        total = sum(size for _, size in segments)
        self._estimated_bytes, self._scanned_at = total, time.monotonic()
        return total, segments

    def _make_room(self, record_bytes: int) -> tuple[int, bool]:
        """Evict oldest-first until ``record_bytes`` fits; returns (ops evicted, whether it fits)."""
        if record_bytes > self.max_bytes:
            return 0, False
        fresh = time.monotonic() - self._scanned_at < _RESCAN_SECONDS
        if fresh and self._estimated_bytes + record_bytes <= self.max_bytes:
            return 0, True
        total, segments = self._scan_dir()
        evicted = 0
        for name, size in segments:
            if total + record_bytes <= self.max_bytes:
                break
            if self._writer is not None and name == self._writer.name:
                continue
            ops = self._evict(name)
            if ops is not None:
                evicted, total = evicted + ops, total - size
        writer = self._writer
        if total + record_bytes > self.max_bytes and writer is not None and writer.size > 0:
            # Everything older is held by someone else: our own current segment goes next.
            self._close_writer()
            ops = self._evict(writer.name)
            if ops is not None:
                evicted, total = evicted + ops, total - writer.size
        self._estimated_bytes = total
        return evicted, total + record_bytes <= self.max_bytes

    def _evict(self, name: str) -> int | None:
        """Delete one unlocked segment; its op count, or None when it is held or already gone."""
        path = self.directory / name
        fd = lock_existing(path)
        if fd is None:
            return None
        try:
            scan = self._scans.pop(name, None) or HeaderScan()
            scan_headers(fd, scan, os.fstat(fd).st_size)
            os.unlink(path)
        finally:
            os.close(fd)
        if self.fsync:
            fsync_dir(self.directory)
        log.warning("spool over max_bytes=%d: evicted segment %s with %d ops", self.max_bytes, name, scan.ops)
        return scan.ops

    def _write(self, record: bytes, ops: int) -> None:
        writer = self._writer
        if writer is not None and writer.size > 0 and writer.size + len(record) > self.segment_bytes:
            self._close_writer()
            writer = None
        if writer is None:
            writer = self._writer = self._open_writer()
        view = memoryview(record)
        try:
            while view:
                view = view[os.write(writer.fd, view):]
            if self.fsync:
                os.fsync(writer.fd)
        except OSError:
            # A partial record left mid-file would hide every later record behind a bad header:
            # cut it off, and end the segment here so the next record starts a fresh one.
            try:
                os.ftruncate(writer.fd, writer.size)
            except OSError:
                pass
            self._close_writer()
            raise
        writer.size += len(record)
        scan = self._scans.setdefault(writer.name, HeaderScan())
        scan.offset, scan.ops = writer.size, scan.ops + ops
        self._estimated_bytes += len(record)

    def _check_writer(self) -> int:
        """Ops lost when our segment was unlinked under us (a tmp cleaner, ``rm -rf``): what it held is
        gone. Never write into it; the caller reports the loss; the next write starts a fresh segment."""
        writer = self._writer
        if writer is None or os.fstat(writer.fd).st_nlink > 0:
            return 0
        self._close_writer()
        scan = self._scans.pop(writer.name, None)
        lost = scan.ops if scan is not None else 0
        log.warning("spool segment %s was deleted by someone else; %d spooled operation(s) in it are lost",
                    writer.name, lost)
        return lost

    def _write_foreign(self, records: list[bytes]) -> None:
        """Write raw records of a newer format version to a segment of their own, which this process
        will not claim again (a newer reader will). Called from ``Segment.done``."""
        with self._guard():
            writer = self._open_writer()
            try:
                for raw in records:
                    view = memoryview(raw)
                    while view:
                        view = view[os.write(writer.fd, view):]
                if self.fsync:
                    os.fsync(writer.fd)
            except OSError:
                os.close(writer.fd)
                os.unlink(self.directory / writer.name)
                raise
            os.close(writer.fd)
            self._foreign_only.add(writer.name)
            self._scans.pop(writer.name, None)

    def _open_writer(self) -> _Writer:
        # The directory itself may have been removed (rm -rf of the spool): make it again.
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        error: OSError | None = None
        for _ in range(5):
            ns = self._last_ns = max(time.time_ns(), self._last_ns + 1)
            self._seq += 1
            name = f"{ns:020d}-{self._pid:010d}-{self._seq:08d}{SEGMENT_SUFFIX}"
            creating = self.directory / f".{name}{_CREATING_SUFFIX}"
            fd = os.open(creating, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.rename(creating, self.directory / name)
            except (BlockingIOError, FileNotFoundError) as exc:
                # A claimer's sweep took our fresh empty file for a crashed writer's; take a new name.
                os.close(fd)
                error = exc
                continue
            except BaseException:
                os.close(fd)
                raise
            if self.fsync:
                fsync_dir(self.directory)
            self._scans[name] = HeaderScan()
            return _Writer(fd, name)
        assert error is not None
        raise error

    def _close_writer(self) -> None:
        writer, self._writer = self._writer, None
        if writer is None:
            return
        try:
            if self.fsync:
                os.fsync(writer.fd)
        finally:
            os.close(writer.fd)

    def _sweep_stale_creating(self) -> None:
        """Remove empty ``.creating`` files of writers that died before renaming them."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:  # deleted: _segment_names makes it again
            return
        for name in names:
            if not (name.startswith(".") and name.endswith(_CREATING_SUFFIX)):
                continue
            fd = lock_existing(self.directory / name)
            if fd is None:
                continue
            try:
                if os.fstat(fd).st_size == 0:
                    os.unlink(self.directory / name)
            finally:
                os.close(fd)


_SAFE_SITE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def spool_directory(spool_dir: str | os.PathLike[str], site_id: str) -> pathlib.Path:
    """The workspace's own subdirectory: replayed operations are sent with the replaying tracker's
    credentials, so one ``spool_dir`` shared by two workspaces must never mix their records."""
    name = site_id if _SAFE_SITE.fullmatch(site_id) and not site_id.startswith(".") else (
        hashlib.sha256(site_id.encode("utf-8", "surrogatepass")).hexdigest()[:24])
    return pathlib.Path(spool_dir) / f"site-{name}"


def _report(hook: Callable[[int], None] | None, count: int, name: str) -> None:
    """Tell ``hook`` of ``count`` lost ops, if any; what it raises is logged, never propagated."""
    if count and hook is not None:
        try:
            hook(count)
        except Exception:
            log.exception("spool %s hook raised", name)
