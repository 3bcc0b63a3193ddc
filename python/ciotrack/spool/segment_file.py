"""One claimed segment file: reading its records under the damage policy, then deleting or releasing it.

Also the file-level helpers the directory (:mod:`ciotrack.spool.segments`) shares with it: taking a
segment's lock only when the path still names the locked inode, skipping entries that are not
readable regular files, and syncing a directory.
"""

from __future__ import annotations

import fcntl
import logging
import os
import pathlib
import stat
import zlib
from collections.abc import Callable, Iterator
from types import TracebackType

from ciotrack.spool.records import HEADER_BYTES, Header, parse_header, resync

__all__ = ["Segment", "fsync_dir", "lock_existing", "skip_once"]

log = logging.getLogger("ciotrack.spool")


def lock_existing(path: pathlib.Path) -> int | None:
    """Open and exclusively lock ``path``; None when it is gone, someone else holds it, or it is not
    a readable regular file (a directory or FIFO named like a segment, a file we may not open)."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            skip_once(path, "not a regular file")
            return None
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        skip_once(path, exc.strerror or str(exc))
        return None
    held = False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # Between our open and our lock, the previous holder may have finished and unlinked it:
        # a lock on a dead inode proves nothing, and replaying it again would duplicate events.
        locked, current = os.fstat(fd), os.stat(path)
        held = (locked.st_dev, locked.st_ino) == (current.st_dev, current.st_ino)
    except (BlockingIOError, FileNotFoundError):
        pass
    finally:
        if not held:
            os.close(fd)
    return fd if held else None


_skipped: set[str] = set()


def skip_once(path: pathlib.Path, why: str) -> None:
    if str(path) not in _skipped:
        _skipped.add(str(path))
        log.warning("spool: skipping %s (%s); the rest of the spool is replayed", path, why)


def fsync_dir(directory: pathlib.Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Segment:
    """A claimed segment file. Finish each with ``done()`` or ``release()`` (or use it as a context
    manager, which releases it unless ``done()`` was called)."""

    path: pathlib.Path

    def __init__(self, path: pathlib.Path, fd: int, *, fsync: bool,
                 on_finish: Callable[[Segment], None] | None = None,
                 keep_foreign: Callable[[list[bytes]], None] | None = None) -> None:
        self.path = path
        self._fd: int | None = fd
        self._fsync = fsync
        self._on_finish = on_finish
        self._keep_foreign = keep_foreign
        self.foreign: list[bytes] = []
        """Raw records of a newer format version, from the last ``records()`` read: kept by ``done()``."""
        self.damaged_bytes = 0
        """Bytes skipped while resynchronising after damaged headers, in the last ``records()`` read."""
        self._deleted = False
        self.skipped_records = 0
        """Records skipped by the last ``records()`` read (bad payload CRC, unknown version)."""
        self.dropped_tail_bytes = 0
        """Bytes after the last frameable record (torn tail or damaged header) in the last read."""
        self.skipped_ops = 0
        """Ops in the records the last read skipped whose header CRC was good (so whose op count can be
        trusted): a bad payload CRC. Damaged spans and torn tails have no trustworthy count."""
        self.read_failed = False
        """The last ``records()`` could not read the file (EMFILE, EIO, ...): it yielded nothing, and
        the file must be released (kept), never deleted: ``done()`` refuses."""
        self._read_started = False
        self._read_whole = False

    def records(self) -> Iterator[tuple[str, list[bytes]]]:
        """``(region, ops)`` of every complete, checksum-valid record, in write order."""
        # Read through our own duplicate: a release() from another thread (Spool.close) then
        # cannot pull the descriptor, or let its number be reused, under this loop.
        self.skipped_records = self.dropped_tail_bytes = self.damaged_bytes = self.skipped_ops = 0
        self.foreign = []
        self.read_failed = self._read_whole = False
        self._read_started = True
        problems: list[str] = []
        try:
            with open(os.dup(self._held_fd()), "rb") as stream:
                data = stream.read()
        except (OSError, MemoryError) as exc:
            log.warning("spool segment %s cannot be read (%s); kept for a later replay", self.path.name, exc)
            self.read_failed = True
            return
        size = len(data)
        offset = 0
        try:
            while offset < size:
                header = parse_header(data[offset:offset + HEADER_BYTES])
                if header is None and offset + HEADER_BYTES <= size:
                    found = resync(data, offset + 1)
                    if found is not None:
                        problems.append(f"damaged header at byte {offset} ({found - offset} bytes skipped)")
                        self.damaged_bytes += found - offset
                        self.skipped_records += 1
                        offset = found
                        continue
                if header is None or offset + HEADER_BYTES + header.length > size:
                    # A short header or a payload past EOF with nothing frameable after it: a torn
                    # tail (a crash mid-write), or damage up to the end of the file.
                    torn = offset + HEADER_BYTES > size or header is not None
                    problems.append(f"{'torn tail' if torn else 'damaged header'} at byte {offset}")
                    self.dropped_tail_bytes = size - offset
                    self._read_whole = True
                    return
                end = offset + HEADER_BYTES + header.length
                payload = data[offset + HEADER_BYTES:end]
                if not header.readable and zlib.crc32(payload) == header.payload_crc:
                    self.foreign.append(data[offset:end])  # a newer writer's: keep it for a newer reader
                    offset = end
                    continue
                offset = end
                record = self._decode(header, payload)
                if record is None:
                    self.skipped_records += 1
                    self.skipped_ops += header.ops  # the header CRC vouches for this count
                    problems.append(f"bad record ending at byte {offset}")
                    continue
                yield record
            self._read_whole = True
        finally:
            if problems:
                log.warning("spool segment %s: %s; skipped %d damaged record(s), %d damaged and %d tail byte(s)",
                            self.path.name, "; ".join(problems[:3]), self.skipped_records, self.damaged_bytes,
                            self.dropped_tail_bytes)

    @staticmethod
    def _decode(header: Header, payload: bytes) -> tuple[str, list[bytes]] | None:
        if not header.readable or len(payload) != header.length or zlib.crc32(payload) != header.payload_crc:
            return None
        region, *ops = payload.split(b"\n")
        if len(ops) != header.ops:
            return None
        try:
            return region.decode(), ops
        except UnicodeDecodeError:
            return None

    def done(self) -> None:
        """Every record was delivered: delete the file (still under our lock), then release it.

        Refused (ValueError) after a ``records()`` read that failed or was not read to its end: what
        was not read was not delivered, and deleting the file would lose it without a trace."""
        if self._fd is None:
            if self._deleted:
                return
            raise ValueError(f"spool segment {self.path.name} was released; claim it again to delete it")
        if self._read_started and not self._read_whole:
            raise ValueError(f"spool segment {self.path.name} was not read to its end; release it")
        if self.foreign:
            if self._keep_foreign is None:
                raise ValueError(f"spool segment {self.path.name} holds records of a newer version; release it")
            self._keep_foreign(self.foreign)  # raises OSError: then the file stays, nothing is lost
            self.foreign = []
        try:
            os.unlink(self.path)
        except FileNotFoundError:  # only if someone ignored the lock; there is nothing left to delete
            pass
        self._deleted = True
        if self._fsync:
            fsync_dir(self.path.parent)
        self._finish()

    def release(self) -> None:
        """Keep the file for a later replay and drop the lock. Idempotent."""
        if self._fd is not None:
            self._finish()

    def _held_fd(self) -> int:
        if self._fd is None:
            raise ValueError(f"spool segment {self.path.name} is not claimed (released or done)")
        return self._fd

    def _finish(self, *, notify: bool = True) -> None:
        """Close our descriptor. ``notify=False`` in a forked child: the parent keeps the claim."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
        if notify and self._on_finish is not None:
            self._on_finish(self)

    def __enter__(self) -> Segment:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
