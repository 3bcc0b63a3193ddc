"""State parity: one sequence of calls through the official ``customerio`` 3.2 client (Track API v1, over TLS)
against emulator A and through ``ciotrack.compat.CustomerIO`` (v2 batches) against emulator B leaves the same
people, attributes, events, devices and suppressions.

Normalised, because they must differ: the event ``id`` the official client does not send (ciotrack stamps a
ULID), and receive-time timestamps (the official client sends none; ciotrack stamps the call time)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import customerio  # type: ignore[import-untyped]
import pytest

from ciotrack.compat import CustomerIO
from ciotrack.emulator import Emulator

SITE, KEY = "site-parity", "key-parity-SECRET"
ULID_A = "01HV5Z9Q8N6W3X2Y1T0S9R8P7A"
ULID_B = "01HV5Z9Q8N6W3X2Y1T0S9R8P7B"
EXPLICIT_IDS = {ULID_A, ULID_B}
FAST: dict[str, Any] = {"flush_interval": 0.02, "rate_limit": 0, "backoff_base": 0.01, "backoff_cap": 0.05}
RECENT = "<receive time>"


def run_sequence(c: Any) -> None:
    """The same calls, made through either client. Each v1 call of the official client is one request."""
    c.identify("1", email="one@x.io", plan="pro", score=9.5, visits=3, active=True, tags=["a", "b"],
               prefs={"lang": "en", "nested": {"x": 1, "when": datetime(2024, 2, 3, 4, 5, 6)}},
               created_at=datetime(2024, 1, 2, 3, 4, 5), nan_attr=float("nan"), nothing=None)
    c.identify(2, name="two", signed_up=datetime(2022, 6, 1, 12, tzinfo=timezone(timedelta(hours=2))))
    c.identify("1", plan="enterprise", visits=4, active=False)
    c.identify("1", score="")  # an empty value removes the attribute
    c.track("1", "purchase", {"total": 12.5, "items": [{"sku": "a", "qty": 2}], "at": datetime(2024, 5, 6)})
    c.track("1", "signup", {"via": "ad"}, id=ULID_A, timestamp=1_700_000_000)
    c.track("1", "signup", {"via": "ad"}, id=ULID_A, timestamp=1_700_000_000)  # same id: Customer.io ignores it
    c.track("2", "no-data")
    c.track("2", "ts-datetime", timestamp=datetime(2023, 1, 1, tzinfo=UTC))
    c.track("2", "ts-naive", {"k": "v"}, timestamp=datetime(2023, 1, 1, 6))
    c.track("2", "ts-garbage", timestamp="garbage")  # dropped by both: receive time
    c.track("2", "ts-str", timestamp="1600000000")
    c.track("2", "ts-float", timestamp=1_600_000_000.7)
    c.track_anonymous("anon-1", "viewed", {"page": "/pricing"})
    c.track_anonymous("anon-1", "clicked", {"cta": "buy"}, id=ULID_B, timestamp=1_650_000_000)
    c.track_anonymous(77, "int-anon")
    c.pageview("1", "/home", referrer="google", nan_value=float("nan"))
    c.pageview(2, "/about")
    c.backfill("1", "old", 1_500_000_000, source="import")
    c.backfill("2", "old-dt", datetime(2020, 1, 1), n=1)
    c.backfill("2", "old-str", "1400000000")
    c.add_device("1", "tok-1", "ios", last_used=1_700_000_100, app_version="1.2",
                 attributes={"push_enabled": "true", "device_os": "17"})
    c.add_device("1", "tok-2", "android", device_os="14")
    c.add_device("2", "tok-3", "ios", last_used=datetime(2024, 1, 1))
    c.add_device("2", "tok-4", "android", id="ignored", os="14")  # the official client overwrites `id`
    c.add_device("1", "tok-1", "ios", app_version="1.3")  # update: last_used kept, attributes merged
    c.delete_device("1", "tok-2")
    c.delete_device("2", "never-added")
    c.identify("3", email="three@x.io")
    c.suppress("3")
    c.identify("4", email="four@x.io")
    c.suppress("4")
    c.unsuppress("4")
    c.identify("5", name="gone")
    c.track("5", "before-delete")
    c.delete("5")
    c.identify("10", plan="again")
    c.delete("10")
    c.identify("10", plan="again")  # identical to the identify before the delete: must re-create the person
    c.suppress("nobody")
    c.identify("6", email="six@x.io", extra="kept", plan="free")
    c.track("6", "six-event")
    c.add_device("6", "tok-6", "android")
    c.merge_customers("id", "1", "email", "six@x.io")
    c.identify("cio_00000002", nickname="deux")  # a v1 path "cio_<x>" means the person whose cio_id is x
    c.track("cio_00000002", "by-cio", {"n": 1})
    c.identify("8", email="eight@x.io")
    c.merge_customers("email", "eight@x.io", "id", "4")
    c.batch([
        {"type": "person", "identifiers": {"id": "9"}, "action": "identify",
         "attributes": {"from": "batch", "at": datetime(2021, 1, 1), "ratio": float("nan")}},
        {"type": "person", "identifiers": {"id": "9"}, "action": "event", "name": "batched", "attributes": {"k": 1},
         "timestamp": 1_610_000_000},
        {"type": "person", "identifiers": {"id": "9"}, "action": "add_device",
         "device": {"token": "tok-9", "platform": "ios", "attributes": {"a": "b"}}},
        {"type": "person", "identifiers": {"id": "9"}, "action": "page", "name": "/batched"},
    ])


def normalise(state: dict[str, Any], started: float) -> dict[str, Any]:
    def event(e: dict[str, Any]) -> dict[str, Any]:
        out = dict(e)
        if out["id"] not in EXPLICIT_IDS:
            out["id"] = None
        if started - 5 <= out["timestamp"] <= time.time() + 5:
            out["timestamp"] = RECENT
        return out

    people = {key: {**p, "events": [event(e) for e in p["events"]]} for key, p in state["people"].items()}
    anonymous = {key: [event(e) for e in evs] for key, evs in state["anonymous_events"].items()}
    return {"people": people, "anonymous_events": anonymous, "objects": state["objects"]}


@pytest.fixture
def emulators(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Emulator, Emulator]]:
    with Emulator(workspaces={SITE: KEY}, tls=True) as a, Emulator(workspaces={SITE: KEY}) as b:
        assert a.ca_bundle is not None
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", a.ca_bundle)
        yield a, b


def test_same_calls_leave_the_same_state(emulators: tuple[Emulator, Emulator]) -> None:
    official_emulator, our_emulator = emulators
    started = time.time()
    with customerio.CustomerIO(SITE, KEY, host="127.0.0.1", port=official_emulator.port, retries=0) as official:
        run_sequence(official)
    with CustomerIO(SITE, KEY, endpoint=our_emulator.url, **FAST) as ours:
        run_sequence(ours)
        assert ours.flush(timeout=10)

    stats = our_emulator.stats()
    assert stats["by_status"] == {"200": stats["requests"]}, "every ciotrack batch was accepted whole"
    assert official_emulator.stats()["by_status"] == {"200": official_emulator.stats()["requests"]}
    theirs = normalise(official_emulator.state(), started)
    mine = normalise(our_emulator.state(), started)

    # A few facts first, so a failure says more than "the dicts differ".
    assert sorted(mine["people"]) == sorted(theirs["people"])
    for key in theirs["people"]:
        for part in ("attributes", "devices", "suppressed", "id", "cio_id"):
            assert mine["people"][key][part] == theirs["people"][key][part], (key, part)
        assert mine["people"][key]["events"] == theirs["people"][key]["events"], key
    assert mine == theirs

    # And the sequence did exercise what it claims to.
    people = theirs["people"]
    assert "5" not in people and "4" not in people and "6" not in people
    assert people["10"]["attributes"] == {"plan": "again"}
    assert people["3"]["suppressed"] is True and people["8"]["suppressed"] is False
    assert people["1"]["attributes"]["created_at"] == 1704164645
    assert "nan_attr" not in people["1"]["attributes"] and "score" not in people["1"]["attributes"]
    assert people["1"]["devices"]["tok-1"] == {"platform": "ios", "last_used": 1_700_000_100,
                                              "attributes": {"push_enabled": "true", "device_os": "17",
                                                             "app_version": "1.3"}}
    assert "tok-6" in people["1"]["devices"]
    assert people["2"]["attributes"]["nickname"] == "deux"
    assert [e["name"] for e in people["1"]["events"]].count("signup") == 1
    assert people["9"]["events"][0]["timestamp"] == 1_610_000_000
