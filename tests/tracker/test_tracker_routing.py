"""Regional routing (issue 4) and send concurrency, against two emulators playing US and EU."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from ciotrack.emulator import Emulator
from ciotrack.errors import ConfigError
from ciotrack.ratelimit import Limiter, local_limiter
from ciotrack.tracker import Tracker

from conftest import API_KEY, SITE_ID, TrackerFactory, all_events


@pytest.fixture
def us_eu() -> Iterator[tuple[Emulator, Emulator]]:
    with Emulator(workspaces={SITE_ID: API_KEY}, region="us") as us, \
            Emulator(workspaces={SITE_ID: API_KEY}, region="eu") as eu:
        yield us, eu


def _people(em: Emulator) -> set[str]:
    return set(em.state()["people"])


def test_region_for_mapping_sends_eu_people_only_to_eu(us_eu: tuple[Emulator, Emulator]) -> None:
    us, eu = us_eu
    homes = {f"p{i}": ("eu" if i % 3 == 0 else "us") for i in range(30)}
    with Tracker(SITE_ID, API_KEY, endpoints={"us": us.url, "eu": eu.url}, region_for=homes, rate_limit=0,
                 flush_interval=0.02) as tracker:
        for person in homes:
            tracker.identify(person, {"home": homes[person]})
            tracker.track(person, "seen")
        tracker.track("nobody-knows", "default-region")
        assert tracker.flush(timeout=5)
    assert _people(eu) == {p for p, r in homes.items() if r == "eu"}
    assert _people(us) == {p for p, r in homes.items() if r == "us"} | {"nobody-knows"}
    assert all(p["attributes"]["home"] == "eu" for p in eu.state()["people"].values())


def test_region_for_callable_and_per_call_override(us_eu: tuple[Emulator, Emulator]) -> None:
    us, eu = us_eu

    def region_for(customer_id: Any) -> str | None:
        return "eu" if str(customer_id).startswith("eu-") else None

    with Tracker(SITE_ID, API_KEY, endpoints={"us": us.url, "eu": eu.url}, region_for=region_for, rate_limit=0,
                 flush_interval=0.02) as tracker:
        tracker.track("eu-1", "routed")
        tracker.track("us-1", "default")
        tracker.track("us-2", "overridden", region="eu")
        tracker.track("eu-2", "overridden", region="us")
        tracker.delete("eu-3", region="eu")
        assert tracker.flush(timeout=5)
    assert _people(eu) == {"eu-1", "us-2"}
    assert _people(us) == {"us-1", "eu-2"}


def test_per_call_region_without_region_for(us_eu: tuple[Emulator, Emulator]) -> None:
    us, eu = us_eu
    with Tracker(SITE_ID, API_KEY, endpoints={"us": us.url, "eu": eu.url}, rate_limit=0,
                 flush_interval=0.02) as tracker:
        tracker.identify("a", {"x": 1})
        tracker.identify("b", {"x": 1}, region="eu")
        tracker.merge_customers("id", "b", "id", "c", region="eu")
        assert tracker.flush(timeout=5)
    assert _people(us) == {"a"}
    assert _people(eu) == {"b"}


def test_per_call_region_not_enabled_raises(emulator: Emulator) -> None:
    with Tracker(SITE_ID, API_KEY, endpoint=emulator.url, rate_limit=0) as tracker:
        with pytest.raises(ConfigError, match="region 'eu' is not enabled"):
            tracker.track("1", "x", region="eu")
    with Tracker(SITE_ID, API_KEY, endpoint=emulator.url, rate_limit=0, regions=("us", "eu")) as tracker:
        tracker.track("1", "x", region="eu")  # enabled explicitly: goes to the same endpoint here
        assert tracker.flush(timeout=5)
    assert len(all_events(emulator.state())) == 1


def test_auto_region_asks_once_and_routes(us_eu: tuple[Emulator, Emulator]) -> None:
    us, eu = us_eu
    # The account lives in the EU: the lookup (sent to the US endpoint) answers "eu".
    with Emulator(workspaces={SITE_ID: API_KEY}, region="eu") as lookup:
        with Tracker(SITE_ID, API_KEY, region="auto", endpoints={"us": lookup.url, "eu": eu.url}, rate_limit=0,
                     flush_interval=0.02) as tracker:
            for i in range(5):
                tracker.track(f"auto-{i}", "where")
            assert tracker.flush(timeout=5)
            tracker.track("auto-9", "again")
            assert tracker.flush(timeout=5)
        lookups = [r for r in lookup.requests() if r["path"] == "/api/v1/accounts/region"]
        assert len(lookups) == 1 and lookups[0]["method"] == "GET"
        assert lookup.stats()["batches"] == 0
    assert _people(eu) == {f"auto-{i}" for i in range(5)} | {"auto-9"}
    assert _people(us) == set()


def test_auto_region_falls_back_to_us_with_a_warning(us_eu: tuple[Emulator, Emulator],
                                                     caplog: pytest.LogCaptureFixture) -> None:
    us, _ = us_eu
    caplog.set_level(logging.WARNING, logger="ciotrack")
    # The lookup goes to the "us" endpoint; a server that does not know this workspace answers 401.
    with Emulator(workspaces={"other-site": "other-key"}) as stranger:
        with Tracker(SITE_ID, API_KEY, region="auto", endpoints={"us": stranger.url, "eu": us.url},
                     rate_limit=0, flush_interval=0.02, on_error=lambda e: None) as tracker:
            tracker.track("fallback", "x")
            assert tracker.flush(timeout=5)
        assert stranger.stats()["by_status"].get("401", 0) >= 1
    assert any("sending to 'us'" in r.getMessage() for r in caplog.records)


def test_send_concurrency_overlaps_requests(make_tracker: TrackerFactory, emulator: Emulator) -> None:
    emulator.set_faults(latency=0.05)
    one = make_tracker(senders=1, batch_bytes=2048)
    for i in range(200):
        one.track("solo", "c", {"i": i})
    assert one.flush(timeout=30)
    assert emulator.stats()["max_in_flight"] == 1
    one.close(timeout=5)

    emulator.reset()
    four = make_tracker(senders=4, batch_bytes=2048)
    for i in range(200):
        four.track("quad", "c", {"i": i})
    assert four.flush(timeout=30)
    stats = emulator.stats()
    assert stats["batches"] >= 8
    assert stats["max_in_flight"] >= 3  # the four senders had requests in flight at the same time
    assert len(all_events(emulator.state())) == 200


def test_each_region_has_its_own_bucket(us_eu: tuple[Emulator, Emulator]) -> None:
    us, eu = us_eu
    with Tracker(SITE_ID, API_KEY, endpoints={"us": us.url, "eu": eu.url}, rate_limit=50, rate_burst=1,
                 flush_interval=0.02) as tracker:
        assert set(tracker.stats().bucket_tokens) == {"us", "eu"}  # one in-process bucket per region
    made: dict[str, Limiter] = {}

    def limiter(region: str) -> Limiter:  # the same seam, with a limiter factory: called once per region
        assert region not in made
        made[region] = local_limiter(50, 1)
        return made[region]

    with Tracker(SITE_ID, API_KEY, endpoints={"us": us.url, "eu": eu.url}, limiter=limiter,
                 flush_interval=0.02) as tracker:
        tracker.track("1", "paced", region="us")
        tracker.track("2", "paced", region="eu")
        assert tracker.flush(timeout=5)
        assert set(made) == {"us", "eu"} and made["us"] is not made["eu"]
    assert made["us"].acquire(0) is False  # close() closed each region's limiter
