"""Checks of the Redis server behind fleet mode (read-only: INFO, CONFIG GET, XINFO, XLEN)."""

from __future__ import annotations

import importlib
from typing import Any

from ciotrack.doctor.report import Report

__all__ = ["check_redis"]

_NEEDED = ("xautoclaim", "xreadgroup", "xack", "xinfo", "evalsha")
WORKER_ALIVE_IDLE_MS = 60_000


def check_redis(report: Report, redis_url: str, site_id: str) -> None:
    try:
        import redis
    except ModuleNotFoundError:
        report.add("redis", "fail", "redis_url is set but redis-py is not installed",
                   "pip install 'ciotrack[fleet]'")
        return
    client: Any = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        info = client.info("server")
    except redis.exceptions.RedisError as exc:
        report.add("redis", "fail", f"cannot reach Redis: {type(exc).__name__}: {exc}",
                   "check redis_url (CIOTRACK_REDIS_URL), the network and the password")
        return
    try:
        _check_server(report, client, info)
        _check_streams(report, client, site_id)
    except redis.exceptions.RedisError as exc:
        report.add("redis", "fail", f"Redis refused a read-only check: {type(exc).__name__}: {exc}",
                   "grant the doctor's user INFO, CONFIG GET and XINFO (or run it with the worker's credentials)")
    finally:
        client.close()


def _check_server(report: Report, client: Any, info: dict[str, Any]) -> None:
    version = str(info.get("redis_version", "0"))
    major_minor = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    # COMMAND INFO answers nil for a command the server does not know (read-only, any version).
    infos = client.execute_command("COMMAND", "INFO", *_NEEDED)
    missing = [name for name, known in zip(_NEEDED, infos, strict=False) if not known]
    if major_minor < (6, 2) or missing:
        report.add("redis_version", "fail", f"Redis {version}; missing: {', '.join(missing) or 'XAUTOCLAIM (6.2+)'}",
                   "run Redis 7.0 or newer")
    else:
        report.add("redis_version", "ok", f"Redis {version}: stream commands present (XAUTOCLAIM, consumer groups)")
    config = {**client.config_get("appendonly"), **client.config_get("maxmemory-policy"),
              **client.config_get("appendfsync")}
    fsync = config.get("appendfsync")
    if config.get("appendonly") != "yes":
        report.add("redis_persistence", "fail", "append-only file is off: a Redis restart loses every batch not yet "
                   "delivered", "set appendonly yes and appendfsync always")
    elif fsync != "always":
        # Redis 7.0 may postpone an AOF write behind a slow fsync while it goes on answering: with
        # everysec an acknowledged XADD was lost to a crash in this project's own fleet tests.
        report.add("redis_persistence", "warn", f"append-only file on, appendfsync {fsync}: a Redis crash can lose "
                   "batches it already acknowledged", "set appendfsync always (a batch is one write per request)")
    else:
        report.add("redis_persistence", "ok", "append-only file on (appendfsync always)")
    policy = config.get("maxmemory-policy", "")
    if policy != "noeviction":
        report.add("redis_eviction", "fail", f"maxmemory-policy {policy}: under memory pressure Redis deletes "
                   "stream keys, and queued events with them", "set maxmemory-policy noeviction")
    else:
        report.add("redis_eviction", "ok", "maxmemory-policy noeviction")


def _check_streams(report: Report, client: Any, site_id: str) -> None:
    try:
        streams: Any = importlib.import_module("ciotrack.fleet.streams")
    except ModuleNotFoundError:
        report.add("fleet", "warn", "ciotrack.fleet is not available: stream checks skipped",
                   "pip install 'ciotrack[fleet]'")
        return
    keys = streams.StreamKeys.for_site(site_id)
    if not client.exists(keys.work):
        report.add("fleet_group", "warn", f"no work stream {keys.work!r} yet (no producer has written)",
                   "create the group at deploy time: ciotrack worker --create-group (KEDA needs it)")
        return
    groups = {g["name"].decode() if isinstance(g["name"], bytes) else g["name"]: g
              for g in client.xinfo_groups(keys.work)}
    group = groups.get(keys.group)
    if group is None:
        report.add("fleet_group", "fail", f"consumer group {keys.group!r} missing on {keys.work!r}",
                   "start a worker (it creates the group) or create it at deploy time")
        return
    lag, pending = group.get("lag"), int(group.get("pending", 0))
    report.add("fleet_group", "ok", f"group {keys.group!r}: lag {lag if lag is not None else 'unknown'}, "
               f"{pending} pending")
    dead = int(client.xlen(keys.dead)) if client.exists(keys.dead) else 0
    if dead:
        report.add("fleet_deadletters", "warn", f"{dead} dead-lettered batch(es) waiting",
                   "inspect with `ciotrack deadletter list`, then replay or purge")
    else:
        report.add("fleet_deadletters", "ok", "no dead letters")
    consumers = client.xinfo_consumers(keys.work, keys.group)
    alive = [c for c in consumers if int(c.get("idle", 1 << 62)) < WORKER_ALIVE_IDLE_MS]
    if not alive:
        report.add("fleet_workers", "fail" if lag else "warn", f"no worker seen in the last "
                   f"{WORKER_ALIVE_IDLE_MS // 1000} s ({len(consumers)} consumer(s) known)",
                   "start `ciotrack worker` processes (see deploy/k8s)")
    else:
        report.add("fleet_workers", "ok", f"{len(alive)} worker(s) active")
