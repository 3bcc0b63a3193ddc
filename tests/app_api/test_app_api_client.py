"""ciotrack.APIClient over real sockets: errors, retries (5xx, 429 + Retry-After, refused connections), what is
not retried (ambiguous failures), the shared rate limit, and the key kept out of messages, reprs and logs."""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Iterator

import pytest

from ciotrack import APIClient, CustomerIOException, SendSMSRequest
from ciotrack.app_api import AppAPIError
from ciotrack.compat import Regions
from ciotrack.emulator import Emulator

from conftest import API_KEY, SITE_ID, Recorded, RecordingServer, free_port

APP_KEY = "app-SECRET-c0ffee"
OK: tuple[int, dict[str, str], bytes] = (200, {}, b'{"delivery_id":"d-1","queued_at":5}')
SMS = {"transactional_message_id": "code", "identifiers": {"id": "u1"}, "to": "+15550100"}


@pytest.fixture
def app_emulator() -> Iterator[Emulator]:
    with Emulator(workspaces={SITE_ID: API_KEY}, app_api_keys={SITE_ID: APP_KEY}) as em:
        yield em


def client(url: str, **options: object) -> APIClient:
    options.setdefault("backoff_factor", 0.01)
    return APIClient(APP_KEY, url=url, **options)  # type: ignore[arg-type]


def test_send_returns_the_delivery_id_and_the_emulator_records_it(app_emulator: Emulator) -> None:
    with client(app_emulator.url) as api:
        answer = api.send_sms(SendSMSRequest(**SMS))
    assert isinstance(answer["delivery_id"], str) and answer["delivery_id"]
    [sent] = app_emulator.transactional_sends()
    assert sent["kind"] == "sms" and sent["delivery_id"] == answer["delivery_id"] and sent["request"] == SMS


def test_validation_error_is_a_customerio_exception_without_the_request_data(app_emulator: Emulator) -> None:
    with client(app_emulator.url) as api, pytest.raises(CustomerIOException) as info:
        api.send_email({"identifiers": {"id": "u1"}, "message_data": {"secret_code": "918273"}})
    err = info.value
    assert isinstance(err, AppAPIError) and err.status == 400 and err.retried == 0
    assert "transactional_message_id" in str(err) or "to, from, subject and body" in str(err)
    assert "918273" not in str(err)
    assert app_emulator.stats()["by_status"] == {"400": 1}  # a 400 is not retried


def test_wrong_key_is_a_clear_error_never_showing_the_key(app_emulator: Emulator,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "app-WRONG-deadbeef"
    api = APIClient(wrong, url=app_emulator.url)
    assert wrong not in repr(api) and not hasattr(api, "key")
    with pytest.raises(AppAPIError) as info:
        api.send_push({"transactional_message_id": 1, "identifiers": {"id": "u1"}})
    api.close()
    message = str(info.value)
    assert info.value.status == 401
    assert "App API key" in message and "not the Track API key" in message and "Regions.EU" in message
    assert wrong not in message
    assert all(wrong not in record.getMessage() for record in caplog.records)
    assert app_emulator.stats()["by_status"] == {"401": 1}
    # The Track API key is not an App API key either.
    with pytest.raises(AppAPIError, match="^401"):
        APIClient(API_KEY, url=app_emulator.url).send_sms(SMS)


def test_5xx_is_retried_then_raised(app_emulator: Emulator, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="ciotrack.app_api")
    app_emulator.set_faults(error_rate=1.0, error_statuses=[503])
    with client(app_emulator.url, retries=2) as api, pytest.raises(AppAPIError) as info:
        api.send_sms(SMS)
    assert info.value.status == 503 and info.value.retried == 2
    assert app_emulator.stats()["by_status"] == {"503": 3}
    assert app_emulator.transactional_sends() == []
    assert caplog.records and all(APP_KEY not in r.getMessage() for r in caplog.records)


def test_transient_5xx_then_success(recorder: RecordingServer) -> None:
    answers = iter([(502, {}, b"{}"), (500, {}, b'{"meta":{"error":"oops"}}'), OK])
    recorder.responder = lambda rec: next(answers)
    with client(recorder.url) as api:
        assert api.send_sms(SMS) == {"delivery_id": "d-1", "queued_at": 5}
    assert len(recorder.requests) == 3
    bodies = {r.body for r in recorder.requests}
    assert len(bodies) == 1  # every retry sends the same bytes


def test_429_waits_for_retry_after(recorder: RecordingServer) -> None:
    answers = iter([(429, {"Retry-After": "1"}, b'{"meta":{"error":"slow down"}}'), OK])
    recorder.responder = lambda rec: next(answers)
    with client(recorder.url) as api:
        assert api.send_in_app({"transactional_message_id": 1, "identifiers": {"id": "u"}})["delivery_id"] == "d-1"
    first, second = recorder.requests
    # Retry-After is a floor on the wait (the jittered backoff alone would be ~10 ms).
    assert second.at - first.at >= 0.95


def test_429_storm_from_the_emulator_then_recovery(app_emulator: Emulator) -> None:
    app_emulator.storm_429(0.5, retry_after=1)
    with client(app_emulator.url) as api:
        answer = api.send_sms(SMS)
    statuses = app_emulator.stats()["by_status"]
    assert statuses["429"] >= 1 and statuses["200"] == 1
    assert [s["delivery_id"] for s in app_emulator.transactional_sends()] == [answer["delivery_id"]]


def test_refused_connection_is_retried_and_named() -> None:
    port = free_port()  # nothing listens there
    with client(f"http://127.0.0.1:{port}", retries=2) as api, pytest.raises(AppAPIError) as info:
        api.send_sms(SMS)
    assert info.value.status is None and info.value.retried == 2
    assert "connection refused" in str(info.value)


def test_read_timeout_is_not_retried(recorder: RecordingServer) -> None:
    # The server got the request: a retry could send the message twice.
    release = threading.Event()

    def slow(rec: Recorded) -> tuple[int, dict[str, str], bytes]:
        release.wait(5)
        return OK

    recorder.responder = slow
    try:
        with client(recorder.url, timeout=(2, 0.3)) as api, pytest.raises(AppAPIError) as info:
            api.send_sms(SMS)
    finally:
        release.set()
    assert info.value.retried == 0 and "may have reached Customer.io" in str(info.value)
    assert recorder.wait_requests(1)
    time.sleep(0.2)
    assert len(recorder.requests) == 1


def test_a_429_pauses_every_client_sharing_the_key(recorder: RecordingServer) -> None:
    answers = iter([(429, {"Retry-After": "1"}, b"{}"), OK, OK])
    lock = threading.Lock()

    def respond(rec: Recorded) -> tuple[int, dict[str, str], bytes]:
        with lock:
            return next(answers)

    recorder.responder = respond
    first, second = client(recorder.url, retries=0), client(recorder.url)
    with pytest.raises(AppAPIError, match="^429"):
        first.send_sms(SMS)
    paused_at = recorder.requests[0].at
    assert second.send_sms(SMS)["delivery_id"] == "d-1"
    # The second client made its request only after the pause the first one's 429 set.
    assert recorder.requests[1].at - paused_at >= 0.95
    first.close()
    second.close()


def test_region_and_bad_arguments() -> None:
    assert APIClient(APP_KEY).url == "https://api.customer.io"
    assert APIClient(APP_KEY, region=Regions.EU).url == "https://api-eu.customer.io"
    import customerio  # type: ignore[import-untyped]

    assert APIClient(APP_KEY, region=customerio.Regions.EU).url == "https://api-eu.customer.io"
    with pytest.raises(CustomerIOException, match="invalid region"):
        APIClient(APP_KEY, region="eu")  # type: ignore[arg-type]
    with pytest.raises(CustomerIOException, match="App API key"):
        APIClient("")
    with pytest.raises(CustomerIOException, match="Send\\*Request or a dict"):
        APIClient(APP_KEY, url="http://127.0.0.1:9").send_sms(["not", "a", "request"])  # type: ignore[arg-type]
    with pytest.raises(CustomerIOException, match="JSON"):
        APIClient(APP_KEY, url="http://127.0.0.1:9").send_sms({"message_data": {"s": {1, 2}}})


def test_spawned_emulator_reports_sends_and_credentials() -> None:
    with Emulator.spawn(workspaces={"site-s": "key-s"}) as em:
        assert em.credentials() == [("site-s", "key-s", "app-key-s")]
        with APIClient("app-key-s", url=em.url) as api:
            answer = api.send_email({"to": "a@example.com", "from": "b@example.com", "subject": "s", "body": "b",
                                     "identifiers": {"email": "a@example.com"}})
        [sent] = em.transactional_sends()
        assert sent["delivery_id"] == answer["delivery_id"] and sent["site_id"] == "site-s"



@pytest.mark.parametrize("pasted", ["\n", "\r\n", "\u200b", "\u2019"], ids=repr)
def test_a_key_http_cannot_carry_is_refused_without_showing_it(app_emulator: Emulator, pasted: str,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    # A key read from a secret file keeps its newline; one pasted from a web page may carry an invisible or
    # typographic character. requests puts the whole header value in its InvalidHeader message, so such a
    # key used to come back inside the AppAPIError (or escaped as a bare UnicodeEncodeError).
    caplog.set_level(logging.DEBUG)
    with pytest.raises(CustomerIOException) as info:
        with APIClient(APP_KEY + pasted, url=app_emulator.url) as api:
            api.send_sms(SMS)
    shown = "".join(traceback.format_exception(info.value)) + caplog.text
    assert APP_KEY not in shown
    assert "position" in str(info.value)
    assert app_emulator.stats()["by_status"] == {}  # refused before any request
