"""Drop-in ``ciotrack.compat.CustomerIO``: synchronous validation parity with the official ``customerio`` 3.2
client (run against the emulator over TLS), the exact requests it makes, and its constructor mapping."""

from __future__ import annotations

import base64
import json
import threading
import warnings
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import customerio  # type: ignore[import-untyped]
import pytest

from ciotrack.compat import CustomerIO, CustomerIOException, Regions
from ciotrack.emulator import Emulator
from ciotrack.errors import DeliveryError

SITE, KEY = "site-compat", "key-compat-SECRET"
ULID = "01HV5Z9Q8N6W3X2Y1T0S9R8P7A"
FAST: dict[str, Any] = {"flush_interval": 0.02, "rate_limit": 0, "backoff_base": 0.01, "backoff_cap": 0.05}


@pytest.fixture
def tls_emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[Emulator]:
    with Emulator(workspaces={SITE: KEY}, tls=True) as em:
        assert em.ca_bundle is not None
        # requests (hence the official client's Session) reads this at every request.
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", em.ca_bundle)
        yield em


@pytest.fixture
def plain_emulator() -> Iterator[Emulator]:
    with Emulator(workspaces={SITE: KEY}) as em:
        yield em


@pytest.fixture
def official(tls_emulator: Emulator) -> Iterator[customerio.CustomerIO]:
    with customerio.CustomerIO(SITE, KEY, host="127.0.0.1", port=tls_emulator.port, retries=0) as client:
        yield client


@pytest.fixture
def ours(plain_emulator: Emulator) -> Iterator[CustomerIO]:
    client = CustomerIO(SITE, KEY, endpoint=plain_emulator.url, **FAST)
    yield client
    client.close(timeout=5)


Call = Callable[[Any], object]

# Refused before sending by both clients, with the same message.
SAME_MESSAGE: list[tuple[str, Call, str]] = [
    ("identify None", lambda c: c.identify(None, a=1), "id cannot be blank in identify"),
    ("identify blank", lambda c: c.identify(""), "id cannot be blank in identify"),
    ("track blank", lambda c: c.track("", "x"), "customer_id cannot be blank in track"),
    ("track None", lambda c: c.track(None, "x", {"a": 1}), "customer_id cannot be blank in track"),
    ("pageview blank", lambda c: c.pageview("", "/p"), "customer_id cannot be blank in pageview"),
    ("backfill blank", lambda c: c.backfill("", "x", 1), "customer_id cannot be blank in backfill"),
    ("backfill bad ts", lambda c: c.backfill("1", "x", "soon"),
     "soon is not a valid timestamp (invalid literal for int() with base 10: 'soon')"),
    ("backfill None ts", lambda c: c.backfill("1", "x", None), "None is not a valid timestamp (int() argument must be"
     " a string, a bytes-like object or a real number, not 'NoneType')"),
    ("delete blank", lambda c: c.delete(""), "customer_id cannot be blank in delete"),
    ("suppress blank", lambda c: c.suppress(None), "customer_id cannot be blank in suppress"),
    ("unsuppress blank", lambda c: c.unsuppress(""), "customer_id cannot be blank in unsuppress"),
    ("device customer", lambda c: c.add_device("", "t", "ios"), "customer_id cannot be blank in add_device"),
    ("device id", lambda c: c.add_device("1", "", "ios"), "device_id cannot be blank in add_device"),
    ("device platform", lambda c: c.add_device("1", "t", None), "platform cannot be blank in add_device"),
    ("delete_device customer", lambda c: c.delete_device("", "t"), "customer_id cannot be blank in delete_device"),
    ("delete_device id", lambda c: c.delete_device("1", ""), "device_id cannot be blank in delete_device"),
    ("merge primary type", lambda c: c.merge_customers("phone", "a", "id", "b"), "invalid primary id type"),
    ("merge secondary type", lambda c: c.merge_customers("id", "a", "ID", "b"), "invalid secondary id type"),
    ("merge types first", lambda c: c.merge_customers("id", "", "x", "b"), "invalid secondary id type"),
    ("merge primary blank", lambda c: c.merge_customers("id", "", "id", "b"), "primary customer_id cannot be blank"),
    ("merge secondary blank", lambda c: c.merge_customers("email", "a@x.io", "cio_id", None),
     "secondary customer_id cannot be blank"),
    ("batch empty", lambda c: c.batch([]), "operations cannot be empty in batch"),
]

# The official client sends these and raises on the emulator's 400 (or cannot encode them); ciotrack
# refuses them at the call. Either way the caller gets a CustomerIOException and nothing is stored.
SERVER_REFUSED: list[tuple[str, Call]] = [
    ("bad platform", lambda c: c.add_device("1", "tok", "windows")),
    ("platform case", lambda c: c.add_device("1", "tok", "iOS")),
    ("device id not str", lambda c: c.add_device("1", 12345, "ios")),
    ("device last_used str", lambda c: c.add_device("1", "tok", "ios", last_used="yesterday")),
    ("device attributes not dict", lambda c: c.add_device("1", "tok", "ios", attributes=["a"])),
    ("empty event name", lambda c: c.track("1", "")),
    ("blank event name", lambda c: c.track("1", "   ")),
    ("event name None", lambda c: c.track("1", None)),
    ("event name too long", lambda c: c.track("1", "n" * 101)),
    ("event id not ULID", lambda c: c.track("1", "x", id="not-a-ulid")),
    ("timestamp bool", lambda c: c.track("1", "x", timestamp=True)),  # was sent as 1 (January 1970)
    ("anonymous timestamp bool", lambda c: c.track_anonymous("a1", "x", timestamp=False)),
    ("anonymous blank", lambda c: c.track_anonymous("", "x", {"a": 1})),
    ("anonymous None", lambda c: c.track_anonymous(None, "x")),
    ("page None", lambda c: c.pageview("1", None)),
    ("id too long", lambda c: c.identify("x" * 151, a=1)),
    ("attribute value too long", lambda c: c.identify("1", bio="x" * 1001)),
    ("attribute name too long", lambda c: c.identify("1", **{"k" * 151: 1})),
    ("too many attributes", lambda c: c.identify("1", **{f"a{i}": i for i in range(301)})),
    ("unencodable set", lambda c: c.identify("1", tags={"a", "b"})),
    ("unencodable object", lambda c: c.track("1", "x", {"o": object()})),
    ("infinite float", lambda c: c.identify("1", score=float("inf"))),
    ("nested infinite", lambda c: c.track("1", "x", {"m": {"v": float("-inf")}})),
]


def assert_nothing_stored(em: Emulator) -> None:
    state = em.state()
    assert state["people"] == {} and state["anonymous_events"] == {}


@pytest.mark.parametrize("call, message", [pytest.param(c, m, id=n) for n, c, m in SAME_MESSAGE])
def test_synchronous_validation_matches_the_official_client(
    official: customerio.CustomerIO, ours: CustomerIO, tls_emulator: Emulator, plain_emulator: Emulator,
    call: Call, message: str,
) -> None:
    with pytest.raises(customerio.CustomerIOException) as theirs:
        call(official)
    with pytest.raises(CustomerIOException) as mine:
        call(ours)
    assert str(theirs.value) == message
    assert str(mine.value) == message
    assert tls_emulator.stats()["requests"] == 0
    assert ours.flush(timeout=5)
    assert plain_emulator.stats()["requests"] == 0


@pytest.mark.parametrize("call", [pytest.param(c, id=n) for n, c in SERVER_REFUSED])
def test_inputs_the_official_client_fails_on_are_refused_at_the_call(
    official: customerio.CustomerIO, ours: CustomerIO, tls_emulator: Emulator, plain_emulator: Emulator,
    call: Call,
) -> None:
    with pytest.raises(customerio.CustomerIOException):
        call(official)
    with pytest.raises(CustomerIOException) as mine:
        call(ours)
    assert str(mine.value)
    assert_nothing_stored(tls_emulator)
    assert ours.flush(timeout=5)
    assert plain_emulator.stats()["requests"] == 0
    assert_nothing_stored(plain_emulator)


def test_an_invalid_region_is_refused_like_the_official_client() -> None:
    with pytest.raises(customerio.CustomerIOException, match="^invalid region provided$"):
        customerio.CustomerIO(SITE, KEY, region="us")
    with pytest.raises(CustomerIOException, match="^invalid region provided$"):
        CustomerIO(SITE, KEY, region="us")  # type: ignore[arg-type]


def test_a_refused_call_leaves_earlier_calls_queued(ours: CustomerIO, plain_emulator: Emulator) -> None:
    ours.track("1", "kept", {"n": 1})
    with pytest.raises(CustomerIOException):
        ours.track("1", "dropped", {"bad": {1, 2}})
    ours.track("1", "kept-too")
    assert ours.flush(timeout=5)
    names = [e["name"] for e in plain_emulator.state()["people"]["1"]["events"]]
    assert names == ["kept", "kept-too"]


def test_batch_with_one_bad_operation_queues_none(ours: CustomerIO, plain_emulator: Emulator) -> None:
    good = {"type": "person", "identifiers": {"id": "1"}, "action": "identify", "attributes": {"a": 1}}
    with pytest.raises(CustomerIOException, match=r"operations\[1\]"):
        ours.batch([good, {"type": "person", "identifiers": {"id": "2"}, "action": "identify",
                           "attributes": {"s": {1}}}])
    with pytest.raises(CustomerIOException, match=r"operations\[1\] must be a dict"):
        ours.batch([good, "identify 2"])  # type: ignore[list-item]
    with pytest.raises(CustomerIOException, match="32768"):
        ours.batch([good, {"type": "person", "identifiers": {"id": "3"}, "action": "identify",
                           "attributes": {f"k{i}": "v" * 900 for i in range(40)}}])
    assert ours.flush(timeout=5)
    assert plain_emulator.stats()["requests"] == 0


# -- the exact requests ----------------------------------------------------------------------------------

def test_calls_become_v2_batch_operations_with_basic_auth(recorder: Any) -> None:
    client = CustomerIO(SITE, KEY, endpoint=recorder.url, **FAST)
    try:
        client.identify("42", email="a@x.io", created_at=datetime(2024, 1, 2, 3, 4, 5), score=float("nan"))
        client.track("42", "purchase", {"total": 9.5}, id=ULID, timestamp=1_700_000_000)
        client.track_anonymous("anon-1", "viewed", {"p": "/"}, timestamp=datetime(2023, 1, 1, tzinfo=UTC))
        client.pageview("42", "/pricing", ref="ad")
        client.backfill(42, "old", "1500000000", source="import")
        client.add_device("42", "tok", "ios", last_used=1_700_000_100, app_version="1.2",
                          attributes={"push_enabled": "true"})
        client.delete_device("42", "tok")
        client.suppress("42")
        client.unsuppress("42")
        client.merge_customers("id", "42", "email", "b@x.io")
        client.delete("42")
        client.identify("cio_abc123", plan="pro")
        client.track("cio_abc123", "by-cio", timestamp=1_600_000_000)
        client.batch([{"type": "person", "identifiers": {"id": "7"}, "action": "event", "name": "raw"}])
        assert client.flush(timeout=5)
    finally:
        client.close(timeout=5)

    posts = [r for r in recorder.requests if r.method == "POST"]
    assert posts and {r.target for r in posts} == {"/api/v2/batch"}
    expected_auth = "Basic " + base64.b64encode(f"{SITE}:{KEY}".encode()).decode()
    for request in posts:
        assert request.headers["Authorization"] == expected_auth
        assert request.headers["Content-Type"].startswith("application/json")
        assert request.headers["User-Agent"].startswith("ciotrack/")
        assert list(json.loads(request.body)) == ["batch"]
    ops = recorder.ops()
    stamps: dict[str, tuple[str, int]] = {}
    for op in ops:
        if op["action"] in ("event", "page", "screen"):
            stamps[op["name"]] = (op.pop("id"), op.pop("timestamp"))
            assert len(stamps[op["name"]][0]) == 26 and isinstance(stamps[op["name"]][1], int)
        elif op["action"] == "identify":
            assert isinstance(op.pop("timestamp"), int)
        if op.get("identifiers") == {"id": 42}:  # an int id may go out as a JSON int; Customer.io reads "42"
            op["identifiers"] = {"id": "42"}
    person = {"type": "person", "identifiers": {"id": "42"}}
    cio = {"type": "person", "identifiers": {"cio_id": "abc123"}}
    assert ops == [
        {**person, "action": "identify",
         "attributes": {"email": "a@x.io", "created_at": 1704164645, "score": None}},
        {**person, "action": "event", "name": "purchase", "attributes": {"total": 9.5}},
        {"type": "person", "identifiers": {"anonymous_id": "anon-1"}, "action": "event", "name": "viewed",
         "attributes": {"p": "/"}},
        {**person, "action": "page", "name": "/pricing", "attributes": {"ref": "ad"}},
        {**person, "action": "event", "name": "old", "attributes": {"source": "import"}},
        {**person, "action": "add_device", "device": {"token": "tok", "platform": "ios", "last_used": 1_700_000_100,
                                                      "attributes": {"push_enabled": "true", "app_version": "1.2"}}},
        {**person, "action": "delete_device", "device": {"token": "tok"}},
        {**person, "action": "suppress"},
        {**person, "action": "unsuppress"},
        {"type": "person", "action": "merge", "primary": {"id": "42"}, "secondary": {"email": "b@x.io"}},
        {**person, "action": "delete"},
        {**cio, "action": "identify", "attributes": {"plan": "pro"}},
        {**cio, "action": "event", "name": "by-cio"},
        {"type": "person", "identifiers": {"id": "7"}, "action": "event", "name": "raw"},
    ]
    assert stamps["purchase"] == (ULID, 1_700_000_000)
    assert stamps["viewed"][1] == 1672531200 and stamps["old"][1] == 1_500_000_000
    assert stamps["by-cio"][1] == 1_600_000_000
    assert len({event_id for event_id, _ in stamps.values()}) == len(stamps)


def test_every_call_addresses_a_cio_prefixed_id_by_cio_id(recorder: Any) -> None:
    # The rule lives in the core (``cio_<x>`` -> ``identifiers: {"cio_id": x}``); the drop-in has no copy.
    client = CustomerIO(SITE, KEY, endpoint=recorder.url, **FAST)
    try:
        client.pageview("cio_9", "/home")
        client.add_device("cio_9", "tok", "android", last_used=1_700_000_000)
        client.delete_device("cio_9", "tok")
        client.suppress("cio_9")
        client.delete("cio_9")
        client.identify("cio_9", plan="pro", cio_relationships=[{"identifiers": {"object_type_id": "1",
                                                                                 "object_id": "a"}}])
        assert client.flush(timeout=5)
    finally:
        client.close(timeout=5)
    ops = recorder.ops()
    assert [op["action"] for op in ops] == ["page", "add_device", "delete_device", "suppress", "delete", "identify"]
    assert all(op["identifiers"] == {"cio_id": "9"} for op in ops)
    assert ops[1]["device"] == {"token": "tok", "platform": "android", "last_used": 1_700_000_000}
    assert ops[5]["attributes"] == {"plan": "pro"} and ops[5]["cio_relationships"] == [
        {"identifiers": {"object_type_id": "1", "object_id": "a"}}]


def test_explicit_timestamps_and_event_ids_reach_the_wire(recorder: Any) -> None:
    client = CustomerIO(SITE, KEY, endpoint=recorder.url, **FAST)
    try:
        client.track("1", "a", id=ULID, timestamp=1_700_000_000)
        client.track("1", "b", timestamp=datetime(2023, 1, 1))  # naive: UTC, as the official client reads it
        client.track("1", "c", timestamp=1_600_000_000.9)
        client.backfill("1", "d", datetime(2020, 1, 1, 1, tzinfo=UTC))
        assert client.flush(timeout=5)
    finally:
        client.close(timeout=5)
    by_name = {op["name"]: op for op in recorder.ops()}
    assert by_name["a"]["id"] == ULID and by_name["a"]["timestamp"] == 1_700_000_000
    assert by_name["b"]["timestamp"] == 1672531200
    assert by_name["c"]["timestamp"] == 1_600_000_000
    assert by_name["d"]["timestamp"] == 1577840400


# -- constructor mapping ---------------------------------------------------------------------------------

def test_host_and_port_select_an_https_endpoint(tls_emulator: Emulator) -> None:
    assert tls_emulator.ca_bundle is not None
    with CustomerIO(SITE, KEY, host="https://127.0.0.1/", port=tls_emulator.port, verify=tls_emulator.ca_bundle,
                    **FAST) as client:
        assert client.tracker.config.endpoint == f"https://127.0.0.1:{tls_emulator.port}"
        client.identify("1", plan="pro")
        assert client.flush(timeout=5)
    assert tls_emulator.state()["people"]["1"]["attributes"] == {"plan": "pro"}


def test_region_picks_the_customerio_host_without_sending() -> None:
    eu = CustomerIO(SITE, KEY, region=Regions.EU, disabled=True)
    assert eu.tracker.config.region == "eu" and eu.tracker.config.endpoint_for("eu") == "https://track-eu.customer.io"
    assert eu.host == "track-eu.customer.io" and eu.port == 443
    official_eu = CustomerIO(SITE, KEY, region=customerio.Regions.EU, disabled=True)  # the official namedtuple
    assert official_eu.tracker.config.region == "eu"
    custom = CustomerIO(SITE, KEY, host="proxy.internal", port=8443, disabled=True)
    assert custom.tracker.config.endpoint == "https://proxy.internal:8443"
    for client in (eu, official_eu, custom):
        client.close(timeout=1)


def test_timeout_retries_and_backoff_map_onto_tracker_options() -> None:
    client = CustomerIO(SITE, KEY, timeout=3.5, retries=5, disabled=True)
    config = client.tracker.config
    assert (config.timeout, config.max_retries, config.dedup_ttl) == (3.5, 5, 0)
    assert config.backoff_base != 0.02  # the official default keeps ciotrack's backoff
    tuned = CustomerIO(SITE, KEY, backoff_factor=0.5, dedup_ttl=60, disabled=True)
    assert tuned.tracker.config.backoff_base == 0.5 and tuned.tracker.config.dedup_ttl == 60
    for c in (client, tuned):
        c.close(timeout=1)


def test_json_encoder_is_ignored_with_the_official_warning() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        client = CustomerIO(SITE, KEY, json_encoder=json.JSONEncoder, disabled=True)
    assert [w.category for w in caught] == [DeprecationWarning]
    assert "json_encoder" in str(caught[0].message)
    client.close(timeout=1)


def test_missing_credentials_raise_customerio_exception(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CIOTRACK_SITE_ID", raising=False)
    monkeypatch.delenv("CIOTRACK_API_KEY", raising=False)
    with pytest.raises(CustomerIOException, match="site_id"):
        CustomerIO(None, KEY)


def test_repr_hides_the_api_key() -> None:
    client = CustomerIO(SITE, KEY, disabled=True)
    assert KEY not in repr(client) and SITE in repr(client)
    client.close(timeout=1)


# -- delivery errors and lifecycle -----------------------------------------------------------------------

def test_delivery_errors_go_to_on_error_not_to_the_caller(plain_emulator: Emulator) -> None:
    failures: list[DeliveryError] = []
    got = threading.Event()

    def on_error(err: DeliveryError) -> None:
        failures.append(err)
        got.set()

    with CustomerIO(SITE, "wrong-key", endpoint=plain_emulator.url, on_error=on_error, **FAST) as client:
        client.identify("1", a=1)
        assert got.wait(5)
    assert failures[0].status == 401 and len(failures[0].ops) == 1
    assert KEY not in repr(failures[0])


def test_calls_after_close_start_a_new_tracker(plain_emulator: Emulator) -> None:
    client = CustomerIO(SITE, KEY, endpoint=plain_emulator.url, **FAST)
    client.track("1", "before")
    first = client.tracker
    client.close(timeout=5)
    assert first.closed
    client.track("1", "after")  # the official client keeps working after close(); so does the drop-in
    assert client.tracker is not first
    assert client.flush(timeout=5)
    client.close(timeout=5)
    assert [e["name"] for e in plain_emulator.state()["people"]["1"]["events"]] == ["before", "after"]


def test_a_collector_of_the_client_follows_the_tracker_made_after_close(plain_emulator: Emulator) -> None:
    from prometheus_client import CollectorRegistry

    from ciotrack.metrics import PrometheusCollector

    client = CustomerIO(SITE, KEY, endpoint=plain_emulator.url, **FAST)
    registry = CollectorRegistry()
    registry.register(PrometheusCollector(client))
    client.track("1", "before")
    client.close(timeout=5)
    for i in range(3):
        client.track("1", f"after-{i}")  # a new tracker, made by the first call
    assert client.flush(timeout=5)
    try:
        # The scrape reads the tracker now at work, not the closed one it was registered with.
        assert registry.get_sample_value("ciotrack_operations_accepted_total") == 3
        assert registry.get_sample_value("ciotrack_operations_delivered_total") == 3
    finally:
        client.close(timeout=5)


def test_context_manager_delivers_on_exit(plain_emulator: Emulator) -> None:
    with CustomerIO(SITE, KEY, endpoint=plain_emulator.url, **FAST) as client:
        for i in range(50):
            client.track(str(i % 5), "evt", {"i": i})
    assert plain_emulator.stats()["events"] == 50
    assert client.tracker.closed
