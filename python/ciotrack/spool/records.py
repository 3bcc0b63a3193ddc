"""The spool's record format: one CRC-framed record per hand-over of operations.

Record format (integers big-endian)::

    0   2  magic b"\xc1S"  (0xC1 never occurs in UTF-8: easy to spot in a hexdump)
    2   1  version (1)
    3   1  flags (0, reserved)
    4   4  op count
    8   4  payload length
    12  4  CRC32 of the payload
    16  4  CRC32 of bytes 0..15 (the header check)
    20  n  payload: region + b"\n" + op + b"\n" + op ...   (ops never hold a raw newline)

Damage policy of ``Segment.records`` (every skip is counted on the segment and logged once):

* Torn tail (short header, or payload past end of file: a crash mid-write): skipped; every
  record before it is returned.
* Damaged header (magic or header CRC wrong): its length cannot be trusted, so nothing after it can
  be framed: reading stops; earlier records are returned.
* Bad payload CRC or op count under a good header: the header CRC vouches for the length, so only
  that record is skipped and reading goes on. One lost record beats losing every later good one.
* Good header, unknown version or flags (a newer writer): skipped by length.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple

__all__ = ["HEADER_BYTES", "MAGIC", "VERSION", "Header", "HeaderScan", "encode_record", "parse_header", "scan_headers"]

MAGIC: Final = b"\xc1S"
VERSION: Final = 1
CHECKED = struct.Struct(">2sBBIII")  # the header fields covered by the header CRC
HEADER_BYTES: Final = CHECKED.size + 4

class Header(NamedTuple):
    ops: int
    length: int
    payload_crc: int
    readable: bool  # False: a version/flags this reader does not know; skip by length


def parse_header(raw: bytes) -> Header | None:
    """None when the header is short or damaged (its length field cannot be trusted)."""
    if len(raw) < HEADER_BYTES:
        return None
    magic, version, flags, ops, length, payload_crc = CHECKED.unpack_from(raw)
    (header_crc,) = struct.unpack_from(">I", raw, CHECKED.size)
    if magic != MAGIC or zlib.crc32(raw[: CHECKED.size]) != header_crc:
        return None
    return Header(ops, length, payload_crc, version == VERSION and flags == 0)


def encode_record(region: str, ops: Sequence[bytes]) -> bytes:
    """One record as written to disk (exposed for tests and tools)."""
    if not region or "\n" in region:
        raise ValueError(f"spool region must be a non-empty string without newlines, got {region!r}")
    payload = b"\n".join((region.encode(), *ops))
    if payload.count(b"\n") != len(ops):
        bad = next(i for i, op in enumerate(ops) if b"\n" in op)
        raise ValueError(f"ops[{bad}] contains a raw newline; spooled ops must be compact JSON")
    checked = CHECKED.pack(MAGIC, VERSION, 0, len(ops), len(payload), zlib.crc32(payload))
    return checked + struct.pack(">I", zlib.crc32(checked)) + payload


@dataclass
class HeaderScan:
    """How far the headers of one segment have been walked, for ``pending`` and eviction counts."""

    offset: int = 0
    ops: int = 0
    stopped: bool = False  # hit a damaged header: nothing after it will ever be framed


def scan_headers(fd: int, scan: HeaderScan, size: int) -> None:
    # Only complete records advance the scan, so a segment another process is still writing is
    # re-walked from its last complete record next time.
    while not scan.stopped and scan.offset + HEADER_BYTES <= size:
        header = parse_header(os.pread(fd, HEADER_BYTES, scan.offset))
        if header is None:
            scan.stopped = True
            return
        end = scan.offset + HEADER_BYTES + header.length
        if end > size:
            return
        if header.readable:
            scan.ops += header.ops
        scan.offset = end
