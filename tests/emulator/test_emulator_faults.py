"""Emulator faults, rate limit (429), TLS, the subprocess handle and the command line."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import customerio
import orjson
import pytest
import requests

from ciotrack.emulator import Emulator, EmulatorProcess

SITE, KEY = "site-f", "key-f"
AUTH = (SITE, KEY)
ULID_1 = "01HV5Z9Q8N6W3X2Y1T0S9R8P7A"


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    with Emulator(workspaces={SITE: KEY, "site-g": "key-g"}) as em:
        yield em


def event(pid: str, eid: str | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {"type": "person", "identifiers": {"id": pid}, "action": "event", "name": "e",
                          "timestamp": 1_700_000_000}
    if eid:
        op["id"] = eid
    return op


def batch(url: str, ops: list[Any], timeout: float = 10, auth: tuple[str, str] = AUTH,
          verify: Any = True) -> requests.Response:
    return requests.post(f"{url}/api/v2/batch", json={"batch": ops}, auth=auth, timeout=timeout, verify=verify)


def test_error_rate_answers_the_configured_status_without_applying(emulator: Emulator) -> None:
    emulator.set_faults(error_rate=1.0, error_statuses=[502])
    response = batch(emulator.url, [event("1")])
    assert response.status_code == 502
    assert response.json()["errors"][0]["reason"] == "injected"
    assert emulator.state()["people"] == {}
    assert emulator.stats()["faults"]["error"] == 1
    emulator.clear_faults()
    assert batch(emulator.url, [event("1")]).status_code == 200


def test_seeded_error_rate_is_reproducible_and_applies_only_successes() -> None:
    sequences = []
    for _ in range(2):
        with Emulator(workspaces={SITE: KEY}, faults={"error_rate": 0.5, "seed": 1234}) as em:
            statuses = [batch(em.url, [event(str(i))]).status_code for i in range(30)]
            assert set(statuses) <= {200, 500, 502, 503} and 200 in statuses and len(set(statuses)) > 1
            applied = sorted(int(p) for p in em.state()["people"])
            assert applied == [i for i, s in enumerate(statuses) if s == 200]
            assert em.stats()["faults"]["error"] == statuses.count(500) + statuses.count(502) + statuses.count(503)
            sequences.append(statuses)
    assert sequences[0] == sequences[1]


def test_latency_delays_but_applies(emulator: Emulator) -> None:
    emulator.set_faults(latency=0.2, latency_jitter=0.1, seed=3)
    started = time.monotonic()
    assert batch(emulator.url, [event("1")]).status_code == 200
    assert time.monotonic() - started >= 0.2
    assert list(emulator.state()["people"]) == ["1"]
    assert emulator.stats()["faults"]["latency"] == 1


def test_reset_fault_resets_the_connection_without_applying(emulator: Emulator) -> None:
    emulator.set_faults(reset_rate=1.0)
    with pytest.raises(requests.ConnectionError):
        batch(emulator.url, [event(str(i)) for i in range(2000)])
    with pytest.raises(requests.ConnectionError):
        requests.put(f"{emulator.url}/api/v1/customers/1", json={"a": 1}, auth=AUTH, timeout=10)
    assert emulator.state()["people"] == {}
    assert emulator.stats()["faults"]["reset"] == 2
    emulator.clear_faults()
    assert batch(emulator.url, [event("1")]).status_code == 200


def test_storm_429_answers_everything_with_retry_after(emulator: Emulator) -> None:
    emulator.storm_429(30, retry_after=7)
    response = batch(emulator.url, [event("1")])
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "7"
    assert response.json()["errors"][0]["reason"] == "rate_limited"
    assert requests.put(f"{emulator.url}/api/v1/customers/1", json={}, auth=AUTH, timeout=10).status_code == 429
    assert emulator.state()["people"] == {}
    assert emulator.stats()["faults"]["storm_429"] == 2
    emulator.clear_faults()
    assert batch(emulator.url, [event("1")]).status_code == 200


def test_storm_429_ends_by_itself(emulator: Emulator) -> None:
    emulator.set_faults(storm_429_seconds=0.3)
    statuses = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        statuses.append(batch(emulator.url, [event("1")]).status_code)
        if statuses[-1] == 200:
            break
    assert statuses[0] == 429 and statuses[-1] == 200
    assert set(statuses) == {429, 200}


def test_slow_read_trips_client_timeouts_and_applies_nothing(emulator: Emulator) -> None:
    emulator.set_faults(slow_read=3.0)
    with pytest.raises(requests.ReadTimeout):
        batch(emulator.url, [event("1")], timeout=0.3)
    assert emulator.wait_for(lambda: emulator.stats()["faults"]["slow_read"] == 1, timeout=5)
    emulator.clear_faults()
    assert emulator.state()["people"] == {}
    assert batch(emulator.url, [event("2")]).status_code == 200  # stop() must not wait out the stall either


def test_apply_then_drop_applies_and_hangs_up(emulator: Emulator) -> None:
    emulator.set_faults(apply_then_drop_rate=1.0)
    with pytest.raises(requests.ConnectionError):
        batch(emulator.url, [event("1", ULID_1)])
    assert len(emulator.state()["people"]["1"]["events"]) == 1
    assert emulator.stats()["faults"]["apply_then_drop"] == 1
    emulator.clear_faults()
    # The client's retry carries the same event id: state keeps one copy.
    assert batch(emulator.url, [event("1", ULID_1)]).status_code == 200
    assert len(emulator.state()["people"]["1"]["events"]) == 1
    assert emulator.stats()["duplicates"] == 1


def test_official_client_retries_through_apply_then_drop(monkeypatch: pytest.MonkeyPatch) -> None:
    with Emulator(workspaces={SITE: KEY}, tls=True, faults={"apply_then_drop_rate": 1.0}) as em:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", em.ca_bundle or "")
        with customerio.CustomerIO(SITE, KEY, host="127.0.0.1", port=em.port, retries=2,
                                   backoff_factor=0) as cio:
            with pytest.raises(customerio.CustomerIOException):
                cio.track("42", "checkout", data={"n": 1}, id=ULID_1, timestamp=1_700_000_000)
        stats = em.stats()
        assert stats["faults"]["apply_then_drop"] == 3  # first try plus two retries
        assert stats["duplicates"] == 2
        assert len(em.state()["people"]["42"]["events"]) == 1


def test_fault_settings_are_checked(emulator: Emulator) -> None:
    for bad in ({"error_rate": 1.5}, {"latency": -1}, {"error_statuses": []}, {"error_statuses": [99]},
                {"storm_429_retry_after": 0}, {"nonsense": 1}, {"reset_rate": "high"}):
        with pytest.raises(ValueError):
            emulator.set_faults(**bad)
    assert emulator.faults()["error_rate"] == 0.0


def test_rate_limit_is_per_workspace_and_changes_nothing() -> None:
    with Emulator(workspaces={SITE: KEY, "site-g": "key-g"}, rate_limit=0.5, burst=2) as em:
        assert batch(em.url, [event("1")]).status_code == 200
        assert batch(em.url, [event("2")]).status_code == 200
        limited = batch(em.url, [event("3")])
        assert limited.status_code == 429
        assert "Retry-After" not in limited.headers  # none is documented for the Track API
        assert limited.json()["errors"][0]["reason"] == "rate_limited"
        assert sorted(em.state()["people"]) == ["1", "2"]
        assert batch(em.url, [event("9")], auth=("site-g", "key-g")).status_code == 200
        stats = em.stats()
        assert stats["by_status"] == {"200": 3, "429": 1} and stats["faults"]["rate_limited"] == 1


def test_rate_limit_refills() -> None:
    with Emulator(workspaces={SITE: KEY}, rate_limit=20, burst=1) as em:
        statuses = [batch(em.url, [event(str(i))]).status_code for i in range(2)]
        assert statuses[0] == 200
        deadline = time.monotonic() + 10
        while statuses[-1] != 200 and time.monotonic() < deadline:
            statuses.append(batch(em.url, [event("again")]).status_code)
        assert statuses[-1] == 200


def test_tls_with_verification() -> None:
    with Emulator(workspaces={SITE: KEY}, tls=True) as em:
        assert em.url.startswith("https://127.0.0.1:") and em.ca_bundle and os.path.exists(em.ca_bundle)
        assert batch(em.url, [event("1")], verify=em.ca_bundle).status_code == 200
        with pytest.raises(requests.exceptions.SSLError):
            batch(em.url, [event("2")], verify=True)
        localhost = em.url.replace("127.0.0.1", "localhost")
        assert batch(localhost, [event("3")], verify=em.ca_bundle).status_code == 200
        assert sorted(em.state()["people"]) == ["1", "3"]
        ca_bundle = em.ca_bundle
    assert not os.path.exists(ca_bundle)  # removed at stop


def test_tls_survives_a_client_that_is_not_tls(monkeypatch: pytest.MonkeyPatch) -> None:
    with Emulator(workspaces={SITE: KEY}, tls=True) as em:
        with pytest.raises(requests.ConnectionError):
            batch(em.url.replace("https://", "http://"), [event("1")], timeout=5)
        assert batch(em.url, [event("1")], verify=em.ca_bundle).status_code == 200


def test_stop_ends_idle_keep_alive_connections() -> None:
    em = Emulator(workspaces={SITE: KEY}).start()
    session = requests.Session()
    assert session.post(f"{em.url}/api/v2/batch", json={"batch": [event("1")]}, auth=AUTH, timeout=10).ok
    started = time.monotonic()
    em.stop()
    assert time.monotonic() - started < 5
    with pytest.raises(requests.ConnectionError):
        session.post(f"{em.url}/api/v2/batch", json={"batch": [event("1")]}, auth=AUTH, timeout=5)
    session.close()
    em.stop()  # idempotent


def test_max_in_flight_shows_concurrency(emulator: Emulator) -> None:
    import threading

    emulator.set_faults(latency=0.3)
    threads = [threading.Thread(target=batch, args=(emulator.url, [event(str(i))])) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert emulator.stats()["max_in_flight"] >= 2
    assert len(emulator.state()["people"]) == 3


def test_subprocess_handle() -> None:
    with Emulator.spawn(workspaces={SITE: KEY}, faults={"seed": 5}) as handle:
        assert isinstance(handle, EmulatorProcess)
        assert handle.url.startswith("http://127.0.0.1:")
        assert batch(handle.url, [event("1", ULID_1), event("2")]).status_code == 200
        assert handle.wait_events(2, timeout=5)
        assert sorted(handle.state()["people"]) == ["1", "2"]
        assert handle.stats()["operations"] == 2
        assert handle.requests()[0]["path"] == "/api/v2/batch"
        handle.set_faults(error_rate=1.0, error_statuses=[503])
        assert handle.faults()["error_rate"] == 1.0
        assert batch(handle.url, [event("3")]).status_code == 503
        handle.clear_faults()
        handle.storm_429(30, retry_after=4)
        assert batch(handle.url, [event("3")]).headers["Retry-After"] == "4"
        handle.clear_faults()
        handle.reset()
        assert handle.state()["people"] == {} and handle.stats()["requests"] == 0
        pid = handle.pid
    assert handle.stop() == 0
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_subprocess_handle_with_tls_and_options() -> None:
    with Emulator.spawn(workspaces={SITE: KEY}, tls=True, rate_limit=1000, burst=5, region="eu") as handle:
        assert handle.url.startswith("https://") and handle.ca_bundle
        region = requests.get(f"{handle.url}/api/v1/accounts/region", auth=AUTH, verify=handle.ca_bundle, timeout=10)
        assert region.json()["region"] == "eu"
        assert batch(handle.url, [event("1")], verify=handle.ca_bundle).status_code == 200
        assert handle.state(SITE)["people"]["1"]["events"][0]["name"] == "e"


def test_subprocess_exits_when_its_parent_goes_away() -> None:
    """The child is started with --exit-on-stdin-eof: closing its stdin (as a dying parent would) stops it."""
    proc = subprocess.Popen([sys.executable, "-m", "ciotrack.emulator", "--port", "0", "--exit-on-stdin-eof"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdin is not None
    url = proc.stdout.readline().decode().strip()
    assert url.startswith("http://127.0.0.1:")
    assert requests.get(f"{url}/_emulator/stats", timeout=10).ok
    proc.stdin.close()
    assert proc.wait(10) == 0
    proc.stdout.close()


def test_cli_options_reach_the_server() -> None:
    args = [sys.executable, "-m", "ciotrack.emulator", "--port", "0", "--site-id", "s", "--api-key", "k",
            "--workspace", "s2:k2", "--error-rate", "1", "--error-statuses", "502", "--seed", "1"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().decode().strip()
        assert batch(url, [event("1")], auth=("s2", "k2")).status_code == 502
        assert batch(url, [event("1")], auth=("site-1", "key-1")).status_code == 502  # faults come before auth
        faults = requests.get(f"{url}/_emulator/faults", timeout=10).json()
        assert faults["error_statuses"] == [502] and faults["seed"] == 1
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
        if proc.stdout is not None:
            proc.stdout.close()


def test_cli_rejects_half_a_workspace() -> None:
    result = subprocess.run([sys.executable, "-m", "ciotrack.emulator", "--port", "0", "--site-id", "s"],
                            capture_output=True, timeout=30)
    assert result.returncode != 0 and b"--api-key" in result.stderr


def test_control_faults_body_must_be_an_object(emulator: Emulator) -> None:
    response = requests.post(f"{emulator.url}/_emulator/faults", data=orjson.dumps([1]), timeout=10)
    assert response.status_code == 400


def test_storm_429_keyword_alias(emulator: Emulator) -> None:
    emulator.set_faults(storm_429=30, storm_429_retry_after=2)
    response = batch(emulator.url, [event("1")])
    assert response.status_code == 429 and response.headers["Retry-After"] == "2"


def test_an_emulator_bug_is_a_500_not_a_hang(emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    from ciotrack.emulator import v2

    def broken(*args: Any) -> Any:
        raise KeyError("bug")

    monkeypatch.setattr(v2, "handle_batch", broken)
    response = batch(emulator.url, [event("1")])
    assert response.status_code == 500
    assert response.json()["errors"][0]["reason"] == "emulator_error"


def test_max_body_bytes_answers_413_above_a_smaller_limit_and_applies_nothing(emulator: Emulator) -> None:
    ops = [event(f"p{i}", f"01HV5Z9Q8N6W3X2Y1T0S9R8P{i:02d}") for i in range(10)]

    def send(some: list[Any]) -> requests.Response:
        return requests.post(f"{emulator.url}/api/v2/batch", data=orjson.dumps({"batch": some}), auth=AUTH,
                             headers={"Content-Type": "application/json"}, timeout=10)

    size = len(orjson.dumps({"batch": ops}))
    emulator.set_faults(max_body_bytes=size - 1)
    too_large = send(ops)
    assert too_large.status_code == 413 and too_large.json()["errors"][0]["reason"] == "too_large"
    assert emulator.state(SITE)["people"] == {}
    assert send(ops[:5]).status_code == 200  # a half fits
    emulator.set_faults(max_body_bytes=size)  # the limit itself is allowed
    assert send(ops).status_code == 200
    assert len(emulator.state(SITE)["people"]) == 10
    for bad in (-1, 1.5, True, "10"):
        with pytest.raises(ValueError, match="max_body_bytes"):
            emulator.set_faults(max_body_bytes=bad)
