"""Fleet tests: every test gets a real ``redis-server`` (``redis_server``, from ``tests/conftest.py``;
the server itself is ``tests/redis_harness.py``), and no fleet process outlives its test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _no_fleet_process_outlives_its_test() -> Iterator[None]:
    from .fleet_procs import kill_leftovers

    yield
    kill_leftovers()
