"""Fleet tests: every test gets a real ``redis-server`` (``redis_server``, from ``tests/conftest.py``;
the server itself is ``tests/redis_harness.py``), and no fleet process outlives its test."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from ciotrack.emulator import Emulator


@pytest.fixture(autouse=True)
def _no_fleet_process_outlives_its_test() -> Iterator[None]:
    from .fleet_procs import kill_leftovers

    yield
    kill_leftovers()


@pytest.fixture
def spawned_emulator() -> Iterator[Any]:
    """The emulator in its own process (its own GIL, as Customer.io would be), with the fleet's workspace."""
    from .fleet_procs import API_KEY, SITE_ID

    em = Emulator.spawn(workspaces={SITE_ID: API_KEY})
    try:
        yield em
    finally:
        em.stop()
