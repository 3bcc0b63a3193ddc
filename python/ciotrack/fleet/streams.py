"""The Redis schema of fleet mode: key names, the work-stream entry, the dead-letter entry.

Keys (one workspace = one Redis Cluster hash slot, thanks to the ``{...}`` tag)::

    ciotrack:{<ws>}:work        stream  ready batches, written by producers (XADD NOMKSTREAM), read by
                                        the consumer group ``ciotrack-workers`` (XREADGROUP), removed
                                        by XACK + XDEL once Customer.io accepted them. NEVER trimmed by
                                        length: MAXLEN/XTRIM would delete entries still pending.
    ciotrack:{<ws>}:tries       hash    ``<entry id>`` -> tries counted against --max-deliveries,
                                        ``<entry id>:err`` -> the last error; deleted with the entry.
    ciotrack:{<ws>}:dead        stream  dead letters (the work entry's fields plus ``error``,
                                        ``tries``, ``dead_at``, ``source_id``); trimmed only by an
                                        operator (``ciotrack deadletter purge``).
    ciotrack:{<ws>:<region>}:gcra, ...:paused_until   the shared limiter (:mod:`ciotrack.fleet.limiter`).

``<ws>`` is the site id when it is made of ``[A-Za-z0-9_-]`` (at most 64 characters, readable in
KEDA and redis-cli), else ``h`` + the first 16 hex digits of its SHA-256. The API key is never part
of a key, a field or a value: workers get it from their own configuration.

Work entry fields (all bytes; version ``v`` = 1)::

    v        b"1"                         format version (a worker refuses versions it does not know)
    region   b"us" | b"eu"                where the batch goes
    count    decimal                      number of operations
    body     ``{"batch":[op,op,...]}``    the exact request body, at most 500 KB
    offsets  2 x count little-endian uint32: start and end byte offset of each op in ``body``,
             so a worker can split a batch (after a 413) without parsing it
    producer ``host:pid:random``          which process wrote it (for debugging)
    created  decimal ms since the epoch   when the producer wrote it
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ciotrack.errors import CiotrackError

if TYPE_CHECKING:
    import redis

__all__ = [
    "FORMAT_VERSION", "GROUP", "StoredBatch", "StreamKeys", "decode_entry", "encode_entry", "ensure_group",
    "entry_time", "op_offsets", "remove_idle_consumers",
]

FORMAT_VERSION = b"1"
GROUP = "ciotrack-workers"
_PLAIN = re.compile(r"[A-Za-z0-9_-]{1,64}")


def workspace_tag(site_id: str) -> str:
    """The ``<ws>`` part of every key: the site id when it is plain, else a hash of it."""
    if _PLAIN.fullmatch(site_id):
        return site_id
    return "h" + hashlib.sha256(site_id.encode("utf-8", "surrogatepass")).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class StreamKeys:
    """The key names of one workspace (see the module docstring)."""

    work: str
    dead: str
    tries: str
    group: str = GROUP

    @classmethod
    def for_site(cls, site_id: str, prefix: str = "ciotrack") -> StreamKeys:
        tag = workspace_tag(site_id)
        return cls(work=f"{prefix}:{{{tag}}}:work", dead=f"{prefix}:{{{tag}}}:dead",
                   tries=f"{prefix}:{{{tag}}}:tries")


def ensure_group(client: redis.Redis, keys: StreamKeys) -> bool:
    """Create the stream and its consumer group at ``0`` (idempotent). True when created now.

    ``0``, not ``$``: a group made after producers started must still see their earlier entries.
    """
    import redis as redis_module

    try:
        client.xgroup_create(keys.work, keys.group, id="0", mkstream=True)
        return True
    except redis_module.ResponseError as exc:
        if "BUSYGROUP" in str(exc):
            return False
        raise


# Deletes a consumer only when its PEL is empty, atomically: XGROUP DELCONSUMER drops a consumer's
# pending entries with it, which would orphan them.
_DELETE_IF_EMPTY = """
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #pending > 0 then return -1 end
return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
"""


def remove_idle_consumers(client: redis.Redis, keys: StreamKeys, idle_ms: int, keep: str) -> list[str]:
    """Delete the group's consumers idle for more than ``idle_ms`` with no pending entries (a restarted
    pod leaves one behind each time); never ``keep`` (the caller). Returns the names removed."""
    delete_if_empty = client.register_script(_DELETE_IF_EMPTY)
    removed = []
    consumers: Any = client.xinfo_consumers(keys.work, keys.group)
    for info in consumers:
        name = info["name"].decode() if isinstance(info["name"], bytes) else str(info["name"])
        if name != keep and not info.get("pending") and int(info.get("idle") or 0) > idle_ms:
            if delete_if_empty(keys=[keys.work], args=[keys.group, name]) != -1:
                removed.append(name)
    return removed


def entry_time(entry_id: str) -> float:
    """The XADD time (Redis' clock, seconds) encoded in a stream entry id."""
    try:
        return int(entry_id.split("-", 1)[0]) / 1000.0
    except ValueError:
        return time.time()


_WRAPPER_OPEN = b'{"batch":['
_WRAPPER_CLOSE = b"]}"


@dataclass(frozen=True, slots=True)
class StoredBatch:
    """A batch read back from the stream: satisfies ``ciotrack.delivery.Deliverable``."""

    body: bytes
    offsets: tuple[tuple[int, int], ...]

    @property
    def count(self) -> int:
        return len(self.offsets)

    def ops(self) -> list[bytes]:
        body = self.body
        return [body[start:end] for start, end in self.offsets]

    def split(self) -> tuple[StoredBatch, StoredBatch]:
        ops = self.ops()
        if len(ops) < 2:
            raise ValueError("a batch of one operation cannot be split")
        half = len(ops) // 2
        return StoredBatch.from_ops(ops[:half]), StoredBatch.from_ops(ops[half:])

    @classmethod
    def from_ops(cls, ops: list[bytes]) -> StoredBatch:
        offsets = []
        position = len(_WRAPPER_OPEN)
        for op in ops:
            offsets.append((position, position + len(op)))
            position += len(op) + 1
        return cls(_WRAPPER_OPEN + b",".join(ops) + _WRAPPER_CLOSE, tuple(offsets))


def op_offsets(body: bytes) -> tuple[tuple[int, int], ...]:
    """Start and end byte offsets of each operation of a ``{"batch":[...]}`` body.

    The JSON decoder's ``raw_decode`` walks one op at a time at C speed (a 500 KB body takes a few
    ms, on a sender thread, never in ``track()``). Raises ValueError for anything else.
    """
    text = body.decode("utf-8")
    start = text.find("[")
    if start < 0 or not text.lstrip().startswith("{"):
        raise ValueError("not a batch body")
    decoder = _DECODER
    spans: list[tuple[int, int]] = []
    i = start + 1
    n = len(text)
    while True:
        while i < n and text[i] in " \t\r\n":
            i += 1
        if i < n and text[i] == "]":
            break
        _, end = decoder.raw_decode(text, i)
        spans.append((i, end))
        i = end
        while i < n and text[i] in " \t\r\n":
            i += 1
        if i < n and text[i] == ",":
            i += 1
        elif i < n and text[i] == "]":
            break
        else:
            raise ValueError("malformed batch body")
    if text.isascii():
        return tuple(spans)
    # Character offsets -> byte offsets (non-ASCII text is rare: the core escapes little).
    out = []
    byte_pos = char_pos = 0
    for a, b in spans:
        byte_pos += len(text[char_pos:a].encode("utf-8"))
        byte_a = byte_pos
        byte_pos += len(text[a:b].encode("utf-8"))
        out.append((byte_a, byte_pos))
        char_pos = b
    return tuple(out)


_DECODER = json.JSONDecoder()


def encode_entry(body: bytes, region: str, producer: str, offsets: tuple[tuple[int, int], ...] | None = None,
                 created_ms: int | None = None) -> dict[str, bytes]:
    """The fields of one work entry (see the module docstring)."""
    spans = op_offsets(body) if offsets is None else offsets
    flat = [value for span in spans for value in span]
    return {
        "v": FORMAT_VERSION,
        "region": region.encode(),
        "count": str(len(spans)).encode(),
        "body": body,
        "offsets": struct.pack(f"<{len(flat)}I", *flat),
        "producer": producer.encode(),
        "created": str(int(time.time() * 1000) if created_ms is None else created_ms).encode(),
    }


class EntryFormatError(CiotrackError, ValueError):
    """A stream entry this version cannot read (unknown format version, missing field)."""


@dataclass(frozen=True, slots=True)
class WorkEntry:
    """One decoded work entry."""

    entry_id: str
    region: str
    batch: StoredBatch
    created_ms: int
    fields: dict[bytes, bytes]


def decode_entry(entry_id: bytes | str, fields: dict[Any, Any]) -> WorkEntry:
    """Read one work entry; :class:`EntryFormatError` when it is not a version-1 entry."""
    ident = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
    raw = {(k.encode() if isinstance(k, str) else k): v for k, v in fields.items()}
    if raw.get(b"v") != FORMAT_VERSION:
        raise EntryFormatError(f"entry {ident}: format version {raw.get(b'v')!r} is not {FORMAT_VERSION!r}")
    try:
        body = raw[b"body"]
        packed = raw[b"offsets"]
        flat = struct.unpack(f"<{len(packed) // 4}I", packed)
        offsets = tuple(zip(flat[0::2], flat[1::2], strict=True))
        if len(offsets) != int(raw[b"count"]) or any(end > len(body) or start > end for start, end in offsets):
            raise EntryFormatError(f"entry {ident}: offsets do not match the body")
        region = raw[b"region"].decode()
        created = int(raw.get(b"created", b"0"))
    except (KeyError, ValueError, struct.error) as exc:
        raise EntryFormatError(f"entry {ident}: unreadable ({type(exc).__name__})") from None
    return WorkEntry(ident, region, StoredBatch(body, offsets), created, raw)
