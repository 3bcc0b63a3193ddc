"""``ciotrack.APIClient``: the official ``customerio.APIClient`` (3.2) for transactional messages.

Replace ``from customerio import APIClient, SendEmailRequest`` with
``from ciotrack import APIClient, SendEmailRequest``. Same constructor, same ``send_email``,
``send_push``, ``send_sms``, ``send_whatsapp``, ``send_inbox_message``, ``send_in_app`` methods and
``Send*Request`` types, same request bodies (``POST {url}/v1/send/<kind>``, ``Authorization: Bearer
<App API key>``), and like there each call is synchronous and returns Customer.io's answer as a dict
(``{"delivery_id": "...", "queued_at": ...}``): a transactional message is something the caller
usually needs to know was accepted, so it is not queued in the background like tracking calls.

Differences from the official client:

* One pooled ``requests.Session`` per client, always (``use_connection_pooling`` is accepted and unused).
* Retries: 429 (honouring ``Retry-After``), 408 and 5xx answers, and connection failures where no
  request reached the server (refused, DNS, connect timeout), with jittered exponential backoff
  (``backoff_factor`` is the first delay when set; ciotrack's default is 0.2 s) within
  ``retry_budget`` seconds. The official client does not retry 429. A read timeout or a connection
  dropped after the request was sent is NOT retried: the message may have been queued, and a retry
  could send it twice; the exception says so.
* A client-side rate limit paces requests to the App API's documented 100 requests/s per App API
  key and region (shared by every ``APIClient`` of the process with that key and URL;
  ``rate_limit=0`` disables it). A 429's ``Retry-After`` pauses every client sharing it.
* Errors raise :class:`AppAPIError`, a ``CustomerIOException`` with ``status`` and ``body``; its
  message names the status, the URL and Customer.io's error text but never the request data (it
  may hold personal data) and never the key. 401/403 say what to check.
* The key is not an attribute (``client.key`` is absent); ``repr`` shows the URL only. A key with a
  character HTTP cannot carry (a newline, an invisible or typographic one) is refused when the client is made.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, ClassVar, NamedTuple

import requests
from requests.adapters import HTTPAdapter

from ciotrack._version import __version__
from ciotrack.official import CustomerIOException, Region, Regions
from ciotrack.retry import RetryPolicy, parse_retry_after

__all__ = [
    "APIClient",
    "AppAPIError",
    "SendEmailRequest",
    "SendInAppRequest",
    "SendInboxMessageRequest",
    "SendPushRequest",
    "SendSMSRequest",
    "SendWhatsAppRequest",
]

log = logging.getLogger("ciotrack.app_api")

# Customer.io documents 100 requests/s for /v1/send/*; a small burst keeps a startup flurry smooth.
DEFAULT_RATE_LIMIT = 100.0
DEFAULT_BURST = 10.0
_OFFICIAL_BACKOFF_FACTOR = 0.02
_RETRY_STATUSES = frozenset({408, 429})


class AppAPIError(CustomerIOException):
    """A transactional send failed. ``status`` is the HTTP status (None: no answer), ``body`` the
    server's error text (trimmed), ``retried`` how many extra attempts were made."""

    def __init__(self, message: str, *, status: int | None = None, body: str = "", retried: int = 0) -> None:
        super().__init__(message)
        self.status = status
        self.body = body
        self.retried = retried


# -- request types: the official classes' fields, positional order and JSON names ----------------

_COMMON = {
    "transactional_message_id": "transactional_message_id",
    "identifiers": "identifiers",
    "disable_message_retention": "disable_message_retention",
    "queue_draft": "queue_draft",
    "message_data": "message_data",
    "send_at": "send_at",
    "language": "language",
}


class _SendRequest:
    """Shared by the request types: ``_to_dict()`` gives the body, without the fields left None."""

    _fields: ClassVar[Mapping[str, str]] = _COMMON
    _path: ClassVar[str] = ""

    def _to_dict(self) -> dict[str, Any]:
        return {name: value for attr, name in self._fields.items() if (value := getattr(self, attr, None)) is not None}


@dataclasses.dataclass(eq=False)
class SendEmailRequest(_SendRequest):
    """A transactional email: a template (``transactional_message_id``) or a full message (``to``,
    ``_from``, ``subject``, ``body``), plus ``identifiers`` of the person."""

    _fields: ClassVar[Mapping[str, str]] = _COMMON | {
        "_from": "from", "to": "to", "headers": "headers", "reply_to": "reply_to", "cc": "cc", "bcc": "bcc",
        "subject": "subject", "preheader": "preheader", "body": "body", "body_plain": "body_plain",
        "body_amp": "body_amp", "fake_bcc": "fake_bcc", "send_to_unsubscribed": "send_to_unsubscribed",
        "tracked": "tracked", "attachments": "attachments", "disable_css_preprocessing": "disable_css_preprocessing",
    }
    _path: ClassVar[str] = "email"

    transactional_message_id: Any = None
    to: Any = None
    identifiers: Any = None
    _from: Any = None
    headers: Any = None
    reply_to: Any = None
    cc: Any = None
    bcc: Any = None
    subject: Any = None
    preheader: Any = None
    body: Any = None
    body_plain: Any = None
    body_amp: Any = None
    fake_bcc: Any = None
    disable_message_retention: Any = None
    send_to_unsubscribed: Any = None
    tracked: Any = None
    queue_draft: Any = None
    message_data: Any = None
    attachments: Any = None
    disable_css_preprocessing: Any = None
    send_at: Any = None
    language: Any = None

    def attach(self, name: str, content: str | bytes, encode: bool = True) -> None:
        """Add an attachment, base64-encoded unless ``encode=False`` (then ``content`` already is)."""
        if not self.attachments:
            self.attachments = {}
        if name in self.attachments:
            raise CustomerIOException(f"attachment {name} already exists")
        if encode:
            raw = content.encode("utf-8") if isinstance(content, str) else content
            content = base64.b64encode(raw).decode()
        self.attachments[name] = content


@dataclasses.dataclass(eq=False)
class SendPushRequest(_SendRequest):
    """A transactional push; ``device`` is sent as ``custom_device`` (the official mapping)."""

    _fields: ClassVar[Mapping[str, str]] = _COMMON | {
        "to": "to", "send_to_unsubscribed": "send_to_unsubscribed", "title": "title", "message": "message",
        "image_url": "image_url", "link": "link", "custom_data": "custom_data", "custom_payload": "custom_payload",
        "device": "custom_device", "sound": "sound",
    }
    _path: ClassVar[str] = "push"

    transactional_message_id: Any = None
    to: Any = None
    identifiers: Any = None
    title: Any = None
    message: Any = None
    disable_message_retention: Any = None
    send_to_unsubscribed: Any = None
    queue_draft: Any = None
    message_data: Any = None
    send_at: Any = None
    language: Any = None
    image_url: Any = None
    link: Any = None
    custom_data: Any = None
    custom_payload: Any = None
    device: Any = None
    sound: Any = None


@dataclasses.dataclass(eq=False)
class SendSMSRequest(_SendRequest):
    _fields: ClassVar[Mapping[str, str]] = _COMMON | {"to": "to", "send_to_unsubscribed": "send_to_unsubscribed"}
    _path: ClassVar[str] = "sms"

    transactional_message_id: Any = None
    to: Any = None
    identifiers: Any = None
    disable_message_retention: Any = None
    send_to_unsubscribed: Any = None
    queue_draft: Any = None
    message_data: Any = None
    send_at: Any = None
    language: Any = None


@dataclasses.dataclass(eq=False)
class SendWhatsAppRequest(_SendRequest):
    _fields: ClassVar[Mapping[str, str]] = _COMMON | {
        "to": "to", "send_to_unsubscribed": "send_to_unsubscribed", "tracked": "tracked"}
    _path: ClassVar[str] = "whatsapp"

    transactional_message_id: Any = None
    to: Any = None
    identifiers: Any = None
    tracked: Any = None
    disable_message_retention: Any = None
    send_to_unsubscribed: Any = None
    queue_draft: Any = None
    message_data: Any = None
    send_at: Any = None
    language: Any = None


@dataclasses.dataclass(eq=False)
class SendInboxMessageRequest(_SendRequest):
    _path: ClassVar[str] = "inbox_message"

    transactional_message_id: Any = None
    identifiers: Any = None
    disable_message_retention: Any = None
    queue_draft: Any = None
    message_data: Any = None
    send_at: Any = None
    language: Any = None


@dataclasses.dataclass(eq=False)
class SendInAppRequest(_SendRequest):
    _path: ClassVar[str] = "in_app"

    transactional_message_id: Any = None
    identifiers: Any = None
    disable_message_retention: Any = None
    queue_draft: Any = None
    message_data: Any = None
    send_at: Any = None
    language: Any = None


# -- the rate limit shared per (url, key) -----------------------------------------------------------

_buckets: dict[tuple[str, str, float, float], Any] = {}
_buckets_lock = threading.Lock()


def _shared_bucket(url: str, key: str, rate: float, burst: float) -> Any:
    """One ``_core.Bucket`` per App API key and URL in this process: the limit is Customer.io's per
    key, so two clients made by two parts of an app must share it. The key is hashed, not stored."""
    from ciotrack._core import Bucket

    ident = (url, hashlib.sha256(key.encode()).hexdigest()[:16], rate, burst)
    with _buckets_lock:
        bucket = _buckets.get(ident)
        if bucket is None:
            bucket = _buckets[ident] = Bucket(rate, burst)
        return bucket


# -- the client -------------------------------------------------------------------------------------


def _sanitize(value: Any) -> Any:
    """The official client's rule: datetimes become unix seconds (naive = UTC), NaN becomes null."""
    if isinstance(value, datetime):
        moment = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return int(moment.timestamp())
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _sanitize(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_sanitize(item) for item in value]
    return value


def _error_text(response: requests.Response, limit: int = 300) -> str:
    try:
        meta = response.json().get("meta", {})
        text = meta.get("error") or "; ".join(str(e) for e in meta.get("errors", []))
    except (ValueError, AttributeError):
        text = ""
    text = text or response.text
    return text[:limit].strip() or "no body"


class APIClient:
    """Customer.io's App API for transactional messages, with the official 3.2 signatures.

    ``key`` is an App API key (not the Track API key). ``url`` overrides ``https://api[-eu].customer.io``
    (for example ``http://127.0.0.1:8080`` for ``ciotrack emulator``). ``rate_limit`` (requests/s,
    0 disables) and ``retry_budget`` (seconds) are ciotrack additions.
    """

    def __init__(
        self,
        key: str,
        url: str | None = None,
        region: Region = Regions.US,
        retries: int = 3,
        timeout: float | tuple[float, float] = 10,
        backoff_factor: float = _OFFICIAL_BACKOFF_FACTOR,
        use_connection_pooling: bool = True,
        *,
        rate_limit: float = DEFAULT_RATE_LIMIT,
        burst: float = DEFAULT_BURST,
        retry_budget: float = 30.0,
    ) -> None:
        # The official client checks isinstance(region, its Region); ours and theirs have the same fields.
        if not (isinstance(region, tuple) and isinstance(getattr(region, "api_host", None), str)):
            raise CustomerIOException("invalid region provided")
        if not isinstance(key, str) or not key.strip():
            raise CustomerIOException("an App API key is needed (Customer.io: Settings > API Credentials > "
                                      "App API Keys; it is not the Track API key)")
        # The key travels in a latin-1 header: a newline kept from a secret file or a pasted invisible or
        # typographic character would fail every send, and requests' error quotes the whole header. Say so
        # now, never showing the key (the rule Config applies to the Track API key).
        bad = next((i for i, ch in enumerate(key) if ord(ch) > 0xFF or ord(ch) < 0x20), None)
        if bad is not None:
            raise CustomerIOException(f"the App API key has a character HTTP cannot carry at position {bad} (a "
                                      "newline from a file, a pasted invisible or typographic character?)")
        self.region = region
        self.url = (url or f"https://{region.api_host}").rstrip("/")
        self.retries = retries
        self.timeout = timeout
        self.backoff_factor = backoff_factor
        self.use_connection_pooling = use_connection_pooling
        self._policy = RetryPolicy(
            max_retries=max(0, int(retries)), retry_budget=retry_budget,
            backoff_base=0.2 if backoff_factor == _OFFICIAL_BACKOFF_FACTOR else backoff_factor,
            backoff_cap=5.0, retry_after_cap=retry_budget)
        self._bucket = _shared_bucket(self.url, key, rate_limit, burst) if rate_limit > 0 else None
        self._auth_header = f"Bearer {key}"
        self._session: requests.Session | None = None
        self._session_lock = threading.Lock()

    def __repr__(self) -> str:  # the key stays out of every repr
        return f"<ciotrack.APIClient url={self.url!r}>"

    @property
    def http(self) -> requests.Session:
        """The pooled Session (made on first use, again after ``close()``)."""
        session = self._session
        if session is None:
            with self._session_lock:
                if self._session is None:
                    self._session = self._build_session()
                session = self._session
        return session

    def _build_session(self) -> requests.Session:
        session = requests.Session()
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=10, max_retries=0)  # retries are ours
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        session.headers.update({"User-Agent": f"ciotrack/{__version__}", "Content-Type": "application/json",
                                "Accept": "application/json", "Authorization": self._auth_header})
        return session

    def close(self) -> None:
        with self._session_lock:
            session, self._session = self._session, None
        if session is not None:
            session.close()

    def __enter__(self) -> APIClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- the official methods ---------------------------------------------------------------------

    def send_email(self, request: SendEmailRequest | Mapping[str, Any]) -> dict[str, Any]:
        return self._send("email", request)

    def send_push(self, request: SendPushRequest | Mapping[str, Any]) -> dict[str, Any]:
        return self._send("push", request)

    def send_sms(self, request: SendSMSRequest | Mapping[str, Any]) -> dict[str, Any]:
        return self._send("sms", request)

    def send_whatsapp(self, request: SendWhatsAppRequest | Mapping[str, Any]) -> dict[str, Any]:
        return self._send("whatsapp", request)

    def send_inbox_message(self, request: SendInboxMessageRequest | Mapping[str, Any]) -> dict[str, Any]:
        return self._send("inbox_message", request)

    def send_in_app(self, request: SendInAppRequest | Mapping[str, Any]) -> dict[str, Any]:
        return self._send("in_app", request)

    def _send(self, kind: str, request: _SendRequest | Mapping[str, Any]) -> dict[str, Any]:
        data = request._to_dict() if isinstance(request, _SendRequest) else request
        if not isinstance(data, Mapping):
            raise CustomerIOException(f"send_{kind}: the request must be a Send*Request or a dict, "
                                      f"got {type(request).__name__}")
        response = self.send_request("POST", f"{self.url}/v1/send/{kind}", data)
        try:
            answer = response.json()
        except ValueError as err:
            raise AppAPIError(f"{response.status_code}: {response.url}: the answer is not JSON",
                              status=response.status_code) from err
        if not isinstance(answer, dict):
            raise AppAPIError(f"{response.status_code}: {response.url}: the answer is not a JSON object",
                              status=response.status_code)
        return answer

    def send_request(self, method: str, url: str, data: Mapping[str, Any]) -> requests.Response:
        """One request with retries; returns the 2xx response or raises :class:`AppAPIError`."""
        try:
            body = json.dumps(_sanitize(dict(data)), ensure_ascii=False, allow_nan=False).encode()
        except (TypeError, ValueError) as err:
            raise CustomerIOException(f"the request cannot be encoded as JSON: {err}") from err
        started = time.monotonic()
        retried = 0
        while True:
            attempt = self._attempt(method, url, body, started)
            if attempt.response is not None and 200 <= attempt.response.status_code < 300:
                return attempt.response
            if attempt.retryable:
                delay = self._policy.delay(retried + 1, attempt.retry_after)
                if not self._policy.gives_up(retried + 1, time.monotonic() - started, delay):
                    log.debug("ciotrack: App API %s: %s; retry %d in %.2f s", url, attempt.cause, retried + 1, delay)
                    retried += 1
                    time.sleep(delay)
                    continue
            raise self._error(url, attempt, retried)

    def _attempt(self, method: str, url: str, body: bytes, started: float) -> _Attempt:
        if self._bucket is not None:
            wait = max(0.1, self._policy.retry_budget - (time.monotonic() - started))
            if not self._bucket.acquire(wait):
                return _Attempt(None, "the client-side rate limit gave no slot within the retry budget")
        try:
            response = self.http.request(method, url, data=body, timeout=self.timeout)
        except requests.exceptions.ConnectTimeout as exc:  # before ConnectionError: it is both
            return _Attempt(None, f"connect timeout: {exc.__class__.__name__}", retryable=True)
        except requests.exceptions.SSLError as exc:
            return _Attempt(None, f"TLS error: {_short(exc)}")
        except requests.exceptions.ConnectionError as exc:
            # Refused or unresolvable: nothing was sent, so a retry is safe. A reset or an aborted
            # connection may come after Customer.io took the request.
            text = str(exc)
            if "Connection refused" in text:
                return _Attempt(None, "connection refused", retryable=True)
            if any(s in text for s in ("Name or service not known", "Failed to resolve", "NewConnectionError")):
                return _Attempt(None, f"cannot connect: {_short(exc)}", retryable=True)
            return _Attempt(None, f"connection error: {_short(exc)}", maybe_received=True)
        except requests.exceptions.Timeout as exc:
            return _Attempt(None, f"read timeout: {exc.__class__.__name__}", maybe_received=True)
        except requests.exceptions.RequestException as exc:
            return _Attempt(None, f"{exc.__class__.__name__}: {_short(exc)}", maybe_received=True)
        status = response.status_code
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        if status == 429 and self._bucket is not None:
            # The server knows the real limit: hold every client sharing this key, not just this call.
            self._bucket.pause(retry_after if retry_after is not None else 1.0)
        return _Attempt(response, f"HTTP {status}", retryable=status in _RETRY_STATUSES or 500 <= status < 600,
                        retry_after=retry_after)

    def _error(self, url: str, attempt: _Attempt, retried: int) -> AppAPIError:
        tries = f" after {retried} retries" if retried else ""
        response = attempt.response
        if response is None:
            unsure = (" (the request may have reached Customer.io: not retried, so that a message is not sent "
                      "twice)") if attempt.maybe_received else ""
            return AppAPIError(f"App API {url}: {attempt.cause}{tries}{unsure}", retried=retried)
        status = response.status_code
        text = _error_text(response)
        if status in (401, 403):
            hint = ("the App API key was refused: use an App API key (Settings > API Credentials > App API Keys), "
                    "not the Track API key, and the region of its workspace (region=Regions.EU for EU "
                    "accounts, or url=...)")
            return AppAPIError(f"{status}: {url}: {hint} ({text})", status=status, body=text, retried=retried)
        return AppAPIError(f"{status}: {url}: {text}{tries}", status=status, body=text, retried=retried)


class _Attempt(NamedTuple):
    """One try: the response (None when none came), a short cause for the log and the error, whether
    a retry is allowed, and whether the server may have taken a request that got no answer."""

    response: requests.Response | None
    cause: str
    retryable: bool = False
    maybe_received: bool = False
    retry_after: float | None = None


def _short(exc: BaseException, limit: int = 200) -> str:
    text = str(exc)
    return text if len(text) <= limit else text[: limit - 3] + "..."
