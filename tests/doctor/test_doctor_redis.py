"""``ciotrack doctor --redis-url`` against a real redis-server: healthy, evicting, and without AOF."""

from __future__ import annotations

from typing import Any

import redis

from ciotrack.doctor import Report, diagnose
from ciotrack.emulator import Emulator
from redis_harness import RedisServer, free_port

from conftest import API_KEY, SITE_ID


def _redis_checks(emulator: Emulator, url: str) -> dict[str, Any]:
    report: Report = diagnose({"site_id": SITE_ID, "api_key": API_KEY, "endpoint": emulator.url, "redis_url": url},
                              environ={"NO_PROXY": "127.0.0.1"})
    return {c.name: c for c in report.checks if c.name.startswith(("redis", "fleet"))}


def test_healthy_redis(emulator: Emulator, redis_server: RedisServer) -> None:
    checks = _redis_checks(emulator, redis_server.url)
    assert checks["redis_version"].status == "ok" and "Redis 7" in checks["redis_version"].detail
    assert checks["redis_persistence"].status == "ok"
    assert checks["redis_eviction"].status == "ok"


def test_an_evicting_redis_fails(emulator: Emulator, redis_server: RedisServer) -> None:
    redis.Redis.from_url(redis_server.url).config_set("maxmemory-policy", "allkeys-lru")
    check = _redis_checks(emulator, redis_server.url)["redis_eviction"]
    assert check.status == "fail" and "allkeys-lru" in check.detail
    assert "noeviction" in check.advice


def test_redis_without_aof_fails(emulator: Emulator, redis_server: RedisServer) -> None:
    redis.Redis.from_url(redis_server.url).config_set("appendonly", "no")
    check = _redis_checks(emulator, redis_server.url)["redis_persistence"]
    assert check.status == "fail" and "appendonly yes" in check.advice


def test_unreachable_redis_fails(emulator: Emulator) -> None:
    check = _redis_checks(emulator, f"redis://127.0.0.1:{free_port()}/0")["redis"]
    assert check.status == "fail" and "CIOTRACK_REDIS_URL" in check.advice


def test_fleet_streams_group_dead_letters_and_workers(emulator: Emulator, redis_server: RedisServer) -> None:
    from ciotrack.fleet.streams import StreamKeys, ensure_group

    client = redis.Redis.from_url(redis_server.url)
    keys = StreamKeys.for_site(SITE_ID)
    assert _redis_checks(emulator, redis_server.url)["fleet_group"].status == "warn"  # no stream yet
    ensure_group(client, keys)
    client.xadd(keys.work, {"v": "1"})
    client.xadd(keys.dead, {"v": "1", "error": "http_400"})
    checks = _redis_checks(emulator, redis_server.url)
    assert checks["fleet_group"].status == "ok" and "lag 1" in checks["fleet_group"].detail
    assert checks["fleet_deadletters"].status == "warn" and "1 dead-lettered" in checks["fleet_deadletters"].detail
    assert checks["fleet_workers"].status == "fail"  # a backlog and nobody reading it
    client.xreadgroup(keys.group, "worker-1", {keys.work: ">"}, count=1)  # a worker shows up
    assert _redis_checks(emulator, redis_server.url)["fleet_workers"].status == "ok"


def test_aof_without_fsync_always_is_a_warning(emulator: Emulator, redis_server: RedisServer) -> None:
    redis.Redis.from_url(redis_server.url).config_set("appendfsync", "everysec")
    check = _redis_checks(emulator, redis_server.url)["redis_persistence"]
    assert check.status == "warn" and "appendfsync always" in check.advice
