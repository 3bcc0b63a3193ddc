"""The one workload every client runs: the same customers, event, properties, traits and app loop.

The event carries the five properties of issue 7 (str, int, float, bool, nested dict). The data
passed to each call comes from pools built before any timing starts, so no timed region pays for
building the caller's dict: every client copies or encodes what it is given at call time (ciotrack
encodes, the queue-based peers copy into a message dict), so reusing pool entries is safe.
"""

from __future__ import annotations

from typing import Any

EVENT_NAME = "checkout"
POOL_SIZE = 1000
CUSTOMER_IDS: list[str] = [f"user-{i}" for i in range(POOL_SIZE)]


def event_properties(i: int) -> dict[str, Any]:
    """Five properties: str, int, float, bool, nested dict (about 90 bytes as compact JSON)."""
    return {"plan": "pro", "items": i % 7, "total": i * 0.25, "first": i % 2 == 0,
            "cart": {"sku": f"sku-{i % 97}", "qty": 2}}


def identify_traits(i: int) -> dict[str, Any]:
    """Five attributes of the same kinds; ``logins`` differs per call so no client may dedup it away."""
    return {"email": f"user-{i % POOL_SIZE}@example.com", "logins": i, "score": i * 0.5, "beta": i % 3 == 0,
            "address": {"city": "Lisbon", "zip": "1000-001"}}


EVENT_POOL: list[dict[str, Any]] = [event_properties(i) for i in range(POOL_SIZE)]
# identify pools are sized by the caller: each call needs distinct traits (see identify_traits).


def cpu_bound_loop(iterations: int) -> int:
    """The app's fixed CPU-bound work: pure Python, holds the GIL for its whole run except at switches."""
    acc = 0
    for i in range(iterations):
        acc = (acc * 31 + i) & 0xFFFFFFFF
    return acc
