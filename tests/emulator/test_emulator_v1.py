"""Emulator, Track API v1 over real sockets, the official ``customerio`` client over TLS, and the
v1/v2 equivalence of the state model."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import customerio
import orjson
import pytest
import requests

from ciotrack.emulator import Emulator

SITE, KEY = "site-v1", "key-v1"
AUTH = (SITE, KEY)
ULID_1 = "01HV5Z9Q8N6W3X2Y1T0S9R8P7A"


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    with Emulator(workspaces={SITE: KEY}) as em:
        yield em


def call(em: Emulator, method: str, path: str, body: Any = None, auth: tuple[str, str] | None = AUTH,
         **kwargs: Any) -> requests.Response:
    data = orjson.dumps(body) if body is not None else None
    return requests.request(method, f"{em.url}/api/v1{path}", data=data, auth=auth, timeout=10,
                            headers={"Content-Type": "application/json"}, **kwargs)


def test_identify_merges_attributes(emulator: Emulator) -> None:
    assert call(emulator, "PUT", "/customers/42", {"email": "a@x.io", "plan": "free", "created_at": 5}).json() == {}
    assert call(emulator, "PUT", "/customers/42", {"plan": "pro", "seats": 3}).status_code == 200
    person = emulator.state()["people"]["42"]
    assert person["attributes"] == {"email": "a@x.io", "plan": "pro", "created_at": 5, "seats": 3}
    assert person["id"] == "42" and person["cio_id"]


def test_identify_update_only_never_creates(emulator: Emulator) -> None:
    assert call(emulator, "PUT", "/customers/9", {"_update": True, "plan": "pro"}).status_code == 200
    assert emulator.state()["people"] == {}
    call(emulator, "PUT", "/customers/9", {"plan": "free"})
    call(emulator, "PUT", "/customers/9", {"_update": True, "plan": "pro"})
    assert emulator.state()["people"]["9"]["attributes"] == {"plan": "pro"}


def test_cio_id_path_changes_the_id(emulator: Emulator) -> None:
    call(emulator, "PUT", "/customers/old", {"a": 1})
    cio_id = emulator.state()["people"]["old"]["cio_id"]
    assert call(emulator, "PUT", f"/customers/cio_{cio_id}", {"id": "new"}).status_code == 200
    people = emulator.state()["people"]
    assert list(people) == ["new"] and people["new"]["cio_id"] == cio_id
    assert call(emulator, "PUT", "/customers/cio_unknown", {"a": 1}).status_code == 400


def test_path_identifiers_are_url_decoded(emulator: Emulator) -> None:
    assert call(emulator, "PUT", "/customers/a%2Fb%20c", {"x": 1}).status_code == 200
    assert list(emulator.state()["people"]) == ["a/b c"]


def test_events_pages_and_anonymous_events(emulator: Emulator) -> None:
    assert call(emulator, "POST", "/customers/42/events",
                {"name": "checkout", "data": {"total": 3}, "id": ULID_1, "timestamp": 1_700_000_000}).json() == {}
    assert call(emulator, "POST", "/customers/42/events", {"name": "/home", "type": "page"}).status_code == 200
    assert call(emulator, "POST", "/customers/42/events", {"name": "checkout", "id": ULID_1}).status_code == 200
    assert call(emulator, "POST", "/events", {"name": "viewed", "anonymous_id": "anon-7"}).status_code == 200
    assert call(emulator, "POST", "/events", {"name": "invite", "data": {"recipient": "r@x.io"}}).status_code == 200
    state = emulator.state()
    events = state["people"]["42"]["events"]
    assert events[0] == {"name": "checkout", "type": "event", "data": {"total": 3}, "timestamp": 1_700_000_000,
                         "id": ULID_1}
    assert events[1]["type"] == "page" and len(events) == 2
    assert state["anonymous_events"]["anon-7"][0]["name"] == "viewed"
    assert state["anonymous_events"][""][0]["data"] == {"recipient": "r@x.io"}
    assert emulator.stats()["duplicates"] == 1


@pytest.mark.parametrize(("path", "body"), [
    ("/customers/42/events", {"data": {}}),
    ("/customers/42/events", {"name": "x", "type": "click"}),
    ("/customers/42/events", {"name": "x", "id": "nope"}),
    ("/customers/42/events", {"name": "x", "timestamp": "now"}),
    ("/customers/42/events", {"name": "x", "data": {"blob": "b" * 100_001}}),
    ("/customers/42/events", {"name": "x", "data": []}),
    ("/events", {"name": "x"}),
    ("/merge_customers", {"primary": {"id": "a", "email": "b"}, "secondary": {"id": "c"}}),
    ("/merge_customers", {"primary": {"phone": "+1"}, "secondary": {"id": "c"}}),
    ("/customers/42/suppress/extra", {}),
])
def test_invalid_v1_calls_are_400(emulator: Emulator, path: str, body: dict[str, Any]) -> None:
    response = call(emulator, "POST", path, body)
    if path.endswith("/extra"):
        assert response.status_code == 404
        return
    assert response.status_code == 400, response.text
    assert isinstance(response.json()["meta"]["errors"][0], str)
    assert emulator.state()["people"] == {} and emulator.state()["anonymous_events"] == {}


def test_v1_body_that_is_not_json_is_400(emulator: Emulator) -> None:
    response = requests.put(f"{emulator.url}/api/v1/customers/1", data=b"{oops", auth=AUTH, timeout=10)
    assert response.status_code == 400 and "meta" in response.json()


def test_v1_identify_limits(emulator: Emulator) -> None:
    assert call(emulator, "PUT", "/customers/" + "x" * 151, {"a": 1}).status_code == 400
    assert call(emulator, "PUT", "/customers/1", {f"a{i}": i for i in range(301)}).status_code == 400
    assert call(emulator, "PUT", "/customers/1", {"a": "v" * 1001}).status_code == 400
    assert emulator.state()["people"] == {}


def test_devices(emulator: Emulator) -> None:
    body = {"device": {"id": "tok-1", "platform": "ios", "last_used": 1_700_000_000, "app_version": "2.1",
                       "attributes": {"push_enabled": "true"}}}
    assert call(emulator, "PUT", "/customers/42/devices", body).status_code == 200
    call(emulator, "PUT", "/customers/42/devices", {"device": {"id": "tok-2", "platform": "android"}})
    assert emulator.state()["people"]["42"]["devices"]["tok-1"] == {
        "platform": "ios", "last_used": 1_700_000_000, "attributes": {"push_enabled": "true", "app_version": "2.1"}}
    assert call(emulator, "DELETE", "/customers/42/devices/tok-1").status_code == 200
    assert list(emulator.state()["people"]["42"]["devices"]) == ["tok-2"]
    assert call(emulator, "PUT", "/customers/42/devices", {"device": {"platform": "ios"}}).status_code == 400


def test_suppress_unsuppress_delete(emulator: Emulator) -> None:
    call(emulator, "PUT", "/customers/42", {"a": 1})
    assert call(emulator, "POST", "/customers/42/suppress").status_code == 200
    assert emulator.state()["people"]["42"]["suppressed"] is True
    assert call(emulator, "POST", "/customers/42/unsuppress").status_code == 200
    assert emulator.state()["people"]["42"]["suppressed"] is False
    assert call(emulator, "DELETE", "/customers/42", {}).status_code == 200
    assert emulator.state()["people"] == {}
    assert call(emulator, "DELETE", "/customers/42").status_code == 200  # deleting nobody is fine


def test_merge_customers(emulator: Emulator) -> None:
    call(emulator, "PUT", "/customers/a", {"plan": "pro", "name": "A"})
    call(emulator, "PUT", "/customers/b", {"plan": "free", "email": "b@x.io"})
    call(emulator, "POST", "/customers/b/events", {"name": "signed_up"})
    body = {"primary": {"id": "a"}, "secondary": {"email": "b@x.io"}}
    assert call(emulator, "POST", "/merge_customers", body).status_code == 200
    people = emulator.state()["people"]
    assert list(people) == ["a"]
    assert people["a"]["attributes"] == {"plan": "pro", "name": "A", "email": "b@x.io"}
    assert [e["name"] for e in people["a"]["events"]] == ["signed_up"]
    missing = call(emulator, "POST", "/merge_customers", {"primary": {"id": "zz"}, "secondary": {"id": "a"}})
    assert missing.status_code == 400


def test_segments(emulator: Emulator) -> None:
    assert call(emulator, "POST", "/segments/7/add_customers", {"ids": ["1", "2", "3"]}).status_code == 200
    assert call(emulator, "POST", "/segments/7/remove_customers", {"ids": ["2"]}).status_code == 200
    assert call(emulator, "POST", "/segments/7/add_customers?id_type=email", {"ids": ["a@x"]}).status_code == 200
    assert emulator.state()["segments"] == {"7": {"id": ["1", "3"], "email": ["a@x"]}}
    too_many = {"ids": [str(i) for i in range(1001)]}
    assert call(emulator, "POST", "/segments/7/add_customers", too_many).status_code == 400
    assert call(emulator, "POST", "/segments/7/add_customers?id_type=phone", {"ids": ["1"]}).status_code == 400


def test_metrics_need_no_auth(emulator: Emulator) -> None:
    metric = {"delivery_id": "d1", "metric": "clicked", "timestamp": 1_700_000_000, "href": "https://x"}
    assert call(emulator, "POST", "/metrics", metric, auth=None).status_code == 200
    assert call(emulator, "POST", "/metrics", metric).status_code == 200
    push = {"delivery_id": "d1", "event": "opened", "device_id": "t", "timestamp": 1}
    assert call(emulator, "POST", "/push/events", push, auth=None).status_code == 200
    assert call(emulator, "POST", "/metrics", {"delivery_id": "d1", "metric": "liked"}).status_code == 400
    # Only the authenticated one is attributed to the workspace.
    assert [m["metric"] for m in emulator.state()["metrics"]] == ["clicked"]
    assert emulator.stats()["by_status"] == {"200": 3, "400": 1}


def test_v1_needs_auth(emulator: Emulator) -> None:
    assert call(emulator, "PUT", "/customers/1", {"a": 1}, auth=None).status_code == 401
    assert call(emulator, "PUT", "/customers/1", {"a": 1}, auth=(SITE, "nope")).status_code == 401
    assert emulator.state()["people"] == {}


def test_account_region() -> None:
    with Emulator(workspaces={SITE: KEY}, region="eu") as em:
        response = requests.get(f"{em.url}/api/v1/accounts/region", auth=AUTH, timeout=10)
        assert response.status_code == 200
        assert response.json() == {"url": em.url, "region": "eu", "environment_id": 1}
        assert requests.get(f"{em.url}/api/v1/accounts/region", timeout=10).status_code == 401


# -- the official client -------------------------------------------------------------------------


def _official_sequence(cio: customerio.CustomerIO) -> None:
    cio.identify("42", email="a@x.io", plan="pro", created_at=1_600_000_000)
    cio.identify("43", plan="free")
    cio.track("42", "checkout", data={"total": 9.5, "items": ["a", "b"]}, id=ULID_1, timestamp=1_700_000_000)
    cio.track("42", "checkout", data={"total": 9.5}, id=ULID_1, timestamp=1_700_000_000)  # a duplicate
    cio.pageview("42", "/pricing", ref="ad")
    cio.track_anonymous("anon-1", "viewed", data={"sku": "s1"}, timestamp=1_700_000_001)
    cio.add_device("42", "tok-1", "ios", last_used=1_700_000_002, app_version="2.0")
    cio.add_device("43", "tok-2", "android")
    cio.delete_device("43", "tok-2")
    cio.suppress("43")
    cio.unsuppress("43")
    cio.suppress("43")
    cio.identify("44", email="c@x.io")
    cio.merge_customers("id", "42", "email", "c@x.io")
    cio.identify("45", a=1)
    cio.delete("45")
    cio.batch([{"type": "person", "identifiers": {"id": "46"}, "action": "identify", "attributes": {"b": 2}}])


def test_official_client_over_tls(monkeypatch: pytest.MonkeyPatch) -> None:
    with Emulator(workspaces={SITE: KEY}, tls=True) as em:
        assert em.ca_bundle is not None and em.url.startswith("https://")
        # The client builds a plain Session (verify=True), so requests takes the CA from the environment.
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", em.ca_bundle)
        with customerio.CustomerIO(SITE, KEY, host="127.0.0.1", port=em.port, retries=0) as cio:
            _official_sequence(cio)
            with pytest.raises(customerio.CustomerIOException, match="400"):
                cio.track("42", "", data={})
        state = em.state()
        people = state["people"]
        assert sorted(people) == ["42", "43", "46"]
        p42 = people["42"]
        assert p42["attributes"] == {"email": "a@x.io", "plan": "pro", "created_at": 1_600_000_000}
        assert [(e["name"], e["type"]) for e in p42["events"]] == [("checkout", "event"), ("/pricing", "page")]
        assert p42["events"][0]["data"] == {"total": 9.5, "items": ["a", "b"]}
        assert p42["events"][1]["data"] == {"ref": "ad"}
        assert p42["devices"] == {"tok-1": {"platform": "ios", "last_used": 1_700_000_002,
                                            "attributes": {"app_version": "2.0"}}}
        assert people["43"]["suppressed"] is True and people["43"]["devices"] == {}
        assert people["46"]["attributes"] == {"b": 2}
        assert state["anonymous_events"]["anon-1"][0]["data"] == {"sku": "s1"}
        stats = em.stats()
        assert stats["duplicates"] == 1
        assert stats["by_status"]["400"] == 1
        agent = em.requests()[0]["headers"]["User-Agent"]
        assert agent.startswith("Customer.io Python Client/3.2")


def test_official_client_rejects_an_unknown_ca(monkeypatch: pytest.MonkeyPatch) -> None:
    with Emulator(workspaces={SITE: KEY}, tls=True) as em:
        monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
        monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
        with customerio.CustomerIO(SITE, KEY, host="127.0.0.1", port=em.port, retries=0) as cio:
            with pytest.raises(customerio.CustomerIOException, match="(?i)ssl|certificate"):
                cio.identify("1", a=1)
        assert em.state()["people"] == {}


def _v2_sequence() -> list[dict[str, Any]]:
    def op(pid: str, action: str, **extra: Any) -> dict[str, Any]:
        return {"type": "person", "identifiers": {"id": pid}, "action": action, **extra}

    return [
        op("42", "identify", attributes={"email": "a@x.io", "plan": "pro", "created_at": 1_600_000_000}),
        op("43", "identify", attributes={"plan": "free"}),
        op("42", "event", name="checkout", id=ULID_1, timestamp=1_700_000_000,
           attributes={"total": 9.5, "items": ["a", "b"]}),
        op("42", "event", name="checkout", id=ULID_1, timestamp=1_700_000_000, attributes={"total": 9.5}),
        op("42", "page", name="/pricing", attributes={"ref": "ad"}),
        op("42", "add_device", device={"token": "tok-1", "platform": "ios", "last_used": 1_700_000_002,
                                       "attributes": {"app_version": "2.0"}}),
        op("43", "add_device", device={"token": "tok-2", "platform": "android"}),
        op("43", "delete_device", device={"token": "tok-2"}),
        op("43", "suppress"),
        op("43", "unsuppress"),
        op("43", "suppress"),
        op("44", "identify", attributes={"email": "c@x.io"}),
        {"type": "person", "action": "merge", "primary": {"id": "42"}, "secondary": {"email": "c@x.io"}},
        op("45", "identify", attributes={"a": 1}),
        op("45", "delete"),
        op("46", "identify", attributes={"b": 2}),
    ]


def _without_receive_times(state: dict[str, Any]) -> dict[str, Any]:
    for person in state["people"].values():
        for event in person["events"]:
            if event["type"] == "page":
                event["timestamp"] = None
    return state


def test_same_calls_through_v1_and_v2_give_identical_state(monkeypatch: pytest.MonkeyPatch) -> None:
    with Emulator(workspaces={SITE: KEY}, tls=True) as v1_em, Emulator(workspaces={SITE: KEY}) as v2_em:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", v1_em.ca_bundle or "")
        with customerio.CustomerIO(SITE, KEY, host="127.0.0.1", port=v1_em.port, retries=0) as cio:
            _official_sequence(cio)
        response = requests.post(f"{v2_em.url}/api/v2/batch", json={"batch": _v2_sequence()}, auth=AUTH, timeout=10)
        assert response.status_code == 200, response.text
        # v2 documents no anonymous event: that one goes through v1 on both sides.
        response = requests.post(f"{v2_em.url}/api/v1/events", auth=AUTH, timeout=10, json={
            "name": "viewed", "anonymous_id": "anon-1", "data": {"sku": "s1"}, "timestamp": 1_700_000_001})
        assert response.status_code == 200, response.text
        assert _without_receive_times(v1_em.state()) == _without_receive_times(v2_em.state())
