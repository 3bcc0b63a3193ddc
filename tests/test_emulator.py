"""Emulator: v2 batch/entity, auth, statuses, stats and control endpoints, over real sockets."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from ciotrack.emulator import Emulator

SITE, KEY = "site-a", "key-a"
ULID_1 = "01HV5Z9Q8N6W3X2Y1T0S9R8P7A"
ULID_2 = "01HV5Z9Q8N6W3X2Y1T0S9R8P7B"


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    with Emulator(workspaces={SITE: KEY, "site-b": "key-b"}) as em:
        yield em


def batch(em: Emulator, ops: list[Any], auth: tuple[str, str] = (SITE, KEY)) -> requests.Response:
    return requests.post(f"{em.url}/api/v2/batch", json={"batch": ops}, auth=auth, timeout=10)


def event(pid: str, name: str = "checkout", eid: str | None = None, **extra: Any) -> dict[str, Any]:
    op: dict[str, Any] = {"type": "person", "identifiers": {"id": pid}, "action": "event", "name": name, **extra}
    if eid is not None:
        op["id"] = eid
    return op


def test_batch_applies_identify_and_events(emulator: Emulator) -> None:
    response = batch(emulator, [
        {"type": "person", "identifiers": {"id": "42"}, "action": "identify",
         "attributes": {"email": "a@x.io", "plan": "pro"}, "timestamp": 100},
        event("42", eid=ULID_1, timestamp=1_700_000_000, attributes={"total": 5}),
        {"type": "person", "anonymous_id": "anon-1", "action": "page", "name": "/pricing", "id": ULID_2},
    ])
    assert response.status_code == 200
    assert response.json() == {}
    state = emulator.state()
    person = state["people"]["42"]
    assert person["attributes"] == {"email": "a@x.io", "plan": "pro"}
    assert person["events"] == [{"name": "checkout", "type": "event", "data": {"total": 5},
                                 "timestamp": 1_700_000_000, "id": ULID_1}]
    assert state["anonymous_events"]["anon-1"][0]["type"] == "page"
    stats = emulator.stats()
    assert stats["operations"] == 3 and stats["events"] == 2 and stats["by_status"] == {"200": 1}
    assert stats["bytes_received"] == len(response.request.body or b"")


def test_partial_failure_is_207_and_applies_the_rest(emulator: Emulator) -> None:
    response = batch(emulator, [event("1", eid=ULID_1), event("2", name=""), event("3", eid="not-a-ulid"),
                                event("4")])
    assert response.status_code == 207
    errors = response.json()["errors"]
    assert [(e["batch_index"], e["field"]) for e in errors] == [(1, "name"), (2, "id")]
    assert all(e["reason"] and e["message"] for e in errors)
    assert sorted(emulator.state()["people"]) == ["1", "4"]


def test_bad_credentials_are_401_and_change_nothing(emulator: Emulator) -> None:
    assert batch(emulator, [event("1")], auth=(SITE, "wrong")).status_code == 401
    assert batch(emulator, [event("1")], auth=("nobody", KEY)).status_code == 401
    assert requests.post(f"{emulator.url}/api/v2/batch", json={"batch": [event("1")]}, timeout=10).status_code == 401
    assert emulator.state()["people"] == {}


def test_workspaces_are_separate(emulator: Emulator) -> None:
    assert batch(emulator, [event("1")], auth=("site-b", "key-b")).status_code == 200
    assert emulator.state()["people"] == {}
    assert list(emulator.state("site-b")["people"]) == ["1"]


def test_duplicate_event_ids_are_ignored(emulator: Emulator) -> None:
    assert batch(emulator, [event("1", eid=ULID_1), event("1", eid=ULID_1)]).status_code == 200
    assert batch(emulator, [event("2", eid=ULID_1)]).status_code == 200
    assert len(emulator.state()["people"]["1"]["events"]) == 1
    assert "2" not in emulator.state()["people"]
    assert emulator.stats()["duplicates"] == 2


def test_control_endpoints(emulator: Emulator) -> None:
    batch(emulator, [event("1")])
    stats = requests.get(f"{emulator.url}/_emulator/stats", timeout=10).json()
    assert stats["events"] == 1
    state = requests.get(f"{emulator.url}/_emulator/state", timeout=10).json()
    assert list(state["people"]) == ["1"]
    assert requests.post(f"{emulator.url}/_emulator/reset", timeout=10).status_code == 200
    assert emulator.state()["people"] == {} and emulator.stats()["requests"] == 0
