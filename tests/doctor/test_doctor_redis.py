"""``ciotrack doctor --redis-url`` against a real redis-server: healthy, evicting, and without AOF."""

from __future__ import annotations

import pathlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from ciotrack.doctor import Report, diagnose
from ciotrack.emulator import Emulator

from conftest import API_KEY, SITE_ID


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def redis_url(tmp_path: pathlib.Path) -> Iterator[str]:
    server = shutil.which("redis-server")
    assert server, "redis-server is not installed (.ci/run installs it with apt-get)"
    port = _free_port()
    proc = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path),
                             "--save", "", "--appendonly", "yes", "--maxmemory-policy", "noeviction"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.exceptions.ConnectionError:
            assert proc.poll() is None and time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
    client.close()
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def _redis_checks(emulator: Emulator, url: str) -> dict[str, Any]:
    report: Report = diagnose({"site_id": SITE_ID, "api_key": API_KEY, "endpoint": emulator.url, "redis_url": url},
                              environ={"NO_PROXY": "127.0.0.1"})
    return {c.name: c for c in report.checks if c.name.startswith(("redis", "fleet"))}


def test_healthy_redis(emulator: Emulator, redis_url: str) -> None:
    checks = _redis_checks(emulator, redis_url)
    assert checks["redis_version"].status == "ok" and "Redis 7" in checks["redis_version"].detail
    assert checks["redis_persistence"].status == "ok"
    assert checks["redis_eviction"].status == "ok"


def test_an_evicting_redis_fails(emulator: Emulator, redis_url: str) -> None:
    redis.Redis.from_url(redis_url).config_set("maxmemory-policy", "allkeys-lru")
    check = _redis_checks(emulator, redis_url)["redis_eviction"]
    assert check.status == "fail" and "allkeys-lru" in check.detail
    assert "noeviction" in check.advice


def test_redis_without_aof_fails(emulator: Emulator, redis_url: str) -> None:
    redis.Redis.from_url(redis_url).config_set("appendonly", "no")
    check = _redis_checks(emulator, redis_url)["redis_persistence"]
    assert check.status == "fail" and "appendonly yes" in check.advice


def test_unreachable_redis_fails(emulator: Emulator) -> None:
    check = _redis_checks(emulator, f"redis://127.0.0.1:{_free_port()}/0")["redis"]
    assert check.status == "fail" and "CIOTRACK_REDIS_URL" in check.advice
