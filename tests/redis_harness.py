"""A real ``redis-server`` for tests: :class:`ciotrack.fleet.local_redis.LocalRedis` (TCP on a free
127.0.0.1 port, a temp ``--dir``, append-only on), except that a server that is missing or does not
start FAILS the test: Redis tests are not optional in CI (``.ci/run`` installs it with apt-get). The
``redis_server`` fixture (``tests/conftest.py``) gives one per test.
"""

from __future__ import annotations

import pytest

from ciotrack.fleet.local_redis import LocalRedis, LocalRedisError, free_port

__all__ = ["RedisServer", "free_port"]


class RedisServer(LocalRedis):
    def start(self, timeout: float = 15.0) -> None:
        try:
            super().start(timeout)
        except LocalRedisError as exc:
            pytest.fail(f"{exc}; fleet tests need redis-server (apt-get install -y redis-server)")
