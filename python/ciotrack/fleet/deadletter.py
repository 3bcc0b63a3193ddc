"""``ciotrack deadletter list|replay|purge``: inspect and handle the dead-letter stream of a workspace.

* ``list`` prints one line per dead entry: id, region, operations, tries, error.
* ``replay`` moves dead entries back to the work stream (as new entries, the same bodies; event ids
  inside them keep redeliveries harmless), e.g. after fixing what made Customer.io refuse them.
* ``purge`` deletes dead entries (all, or ``--id`` ones).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from ciotrack.fleet import require_extra
from ciotrack.fleet.producer import connect
from ciotrack.fleet.streams import StreamKeys, ensure_group

__all__ = ["configure_parser", "replay", "run"]

require_extra("redis")  # a missing fleet extra is named by `ciotrack deadletter` at once

_WORK_FIELDS = (b"v", b"region", b"count", b"body", b"offsets", b"producer", b"created")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("list", "replay", "purge"))
    parser.add_argument("--redis-url", default=os.environ.get("CIOTRACK_REDIS_URL"),
                        help="redis://host:6379/0 (env CIOTRACK_REDIS_URL)")
    parser.add_argument("--site-id", default=os.environ.get("CIOTRACK_SITE_ID"), help="env CIOTRACK_SITE_ID")
    parser.add_argument("--key-prefix", default="ciotrack",
                        help="the key prefix the workers were started with (`ciotrack worker --key-prefix`)")
    parser.add_argument("--id", action="append", default=[], help="only these dead entries (repeatable)")
    parser.add_argument("--limit", type=int, default=100, help="list: at most this many")


def replay(client: Any, keys: StreamKeys, ids: list[str] | None = None) -> int:
    """Move dead entries (all, or ``ids``) back to the work stream; returns how many moved."""
    ensure_group(client, keys)
    moved = 0
    for entry_id, fields in _entries(client, keys, ids):
        pipe = client.pipeline(transaction=True)
        pipe.xadd(keys.work, {k: v for k, v in fields.items() if k in _WORK_FIELDS})
        pipe.xdel(keys.dead, entry_id)
        pipe.execute()
        moved += 1
    return moved


def _entries(client: Any, keys: StreamKeys, ids: list[str] | None, limit: int | None = None) -> list[Any]:
    if ids:
        out = []
        for entry_id in ids:
            out.extend(client.xrange(keys.dead, entry_id, entry_id))
        return out
    return list(client.xrange(keys.dead, count=limit))


def run(args: argparse.Namespace) -> int:
    if not args.redis_url or not args.site_id:
        print("ciotrack deadletter: --redis-url and --site-id (or CIOTRACK_REDIS_URL/CIOTRACK_SITE_ID) are required",
              file=sys.stderr)
        return 2
    client = connect(args.redis_url)
    keys = StreamKeys.for_site(args.site_id, args.key_prefix)
    if args.action == "list":
        entries = _entries(client, keys, args.id, args.limit)
        for entry_id, fields in entries:
            print("\t".join([
                entry_id.decode(), fields.get(b"region", b"?").decode(), fields.get(b"count", b"?").decode(),
                f"tries={fields.get(b'tries', b'?').decode()}",
                fields.get(b"error", b"").decode("utf-8", "replace").replace("\n", " ")[:300],
            ]))
        print(f"{client.xlen(keys.dead)} dead entries in {keys.dead}", file=sys.stderr)
    elif args.action == "replay":
        print(f"replayed {replay(client, keys, args.id)} entries to {keys.work}")
    else:
        if args.id:
            removed = int(client.xdel(keys.dead, *args.id))
        else:
            removed = int(client.xlen(keys.dead))
            client.delete(keys.dead)
        print(f"purged {removed} dead entries")
    client.close()
    return 0
