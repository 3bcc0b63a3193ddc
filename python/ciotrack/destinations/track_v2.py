"""Customer.io's Track API v2 as a destination: ``POST {endpoint}/api/v2/batch``.

:class:`TrackV2Destination` maps each answer to an :class:`~ciotrack.destinations.Outcome` through
:func:`classify` (pure, unit-tested without a server) and checks health with the cheapest
authenticated call there is, ``GET /api/v1/accounts/region``. :func:`make_session` builds the one
pooled ``requests.Session`` every sender thread (and region) shares; :func:`lookup_region` resolves
``region="auto"``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import requests

from ciotrack._version import __version__
from ciotrack.destinations.base import Outcome
from ciotrack.destinations.http import DeadlineAdapter, capped_timeout, read_capped, time_left, watchdog
from ciotrack.redact import redacted_url
from ciotrack.retry import parse_retry_after

if TYPE_CHECKING:
    from ciotrack.config import Config

__all__ = ["TrackV2Destination", "classify", "lookup_region", "make_session", "user_agent"]

log = logging.getLogger("ciotrack.transport")

Timeout = float | tuple[float, float]
PROBE_TIMEOUT_CAP = 5.0
"""A health probe waits at most this long (connect and read), whatever ``timeout`` says."""


def user_agent(suffix: str | None = None) -> str:
    base = f"ciotrack/{__version__}"
    return f"{base} {suffix}" if suffix else base


def make_session(pool_size: int, hosts: int = 1, user_agent_suffix: str | None = None) -> requests.Session:
    """One pooled Session shared by every sender thread (and every region).

    The adapter keeps ``pool_size`` connections per host (one per sender, so no sender waits for a
    connection and none is opened per request) and never retries by itself: retries are the sender's,
    with the same bytes, under the rate limit.
    """
    session = requests.Session()
    adapter = DeadlineAdapter(pool_connections=max(1, hosts), pool_maxsize=max(1, pool_size), max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers.update({
        "User-Agent": user_agent(user_agent_suffix),
        "Content-Type": "application/json",
        "Accept": "application/json",
    })
    return session


class TrackV2Destination:
    """``POST {endpoint}/api/v2/batch`` with Basic auth ``site_id:api_key``.

    ``timeout``, ``proxies`` and ``verify`` are passed on every request; what the environment adds
    (``HTTP(S)_PROXY``/``NO_PROXY`` for schemes ``proxies`` does not name, ``REQUESTS_CA_BUNDLE``/
    ``CURL_CA_BUNDLE`` when ``verify`` is True) is merged as ``requests`` does, but once, when the
    destination is made (see :meth:`_prepare`). Status table:
    200/2xx delivered; 207 partial (``errors[].batch_index``); 429, 408, 5xx, connection errors and
    timeouts retry; 413 split; TLS verification failures and other 4xx are final.

    ``session`` is shared by every destination of a tracker and closed by its owner; with None the
    destination makes (and closes) its own.
    """

    @classmethod
    def from_config(cls, config: Config, region: str, session: requests.Session | None = None) -> TrackV2Destination:
        """The destination a Tracker built from ``config`` sends ``region``'s batches to."""
        return cls(session, config.endpoint_for(region), config.site_id, config.api_key, timeout=config.timeout,
                   proxies=config.proxies, verify=config.verify, name=region)

    def __init__(
        self,
        session: requests.Session | None,
        endpoint: str,
        site_id: str,
        api_key: str,
        *,
        timeout: Timeout,
        proxies: Mapping[str, str] | None = None,
        verify: bool | str = True,
        name: str = "us",
    ) -> None:
        self.name = name
        self.url = endpoint.rstrip("/") + "/api/v2/batch"
        self._shown_url = redacted_url(self.url)  # what reprs and log lines name: no userinfo password
        self._probe_url = endpoint.rstrip("/") + "/api/v1/accounts/region"
        self._owns_session = session is None
        self._session = make_session(1) if session is None else session
        self._auth = (site_id, api_key)
        self._timeout = timeout
        self._proxies = dict(proxies) if proxies else None
        self._verify = verify
        self._connect_read = capped_timeout(timeout, math.inf)
        self._deadline = sum(self._connect_read)
        """Total time one request may take, however the receiver trickles (connect + read timeouts)."""
        self._redirect_logged_at = float("-inf")
        # What Session.post would work out on every request (environment proxies and CA bundle, the
        # session's headers and the auth header), worked out once: it was a fifth of the sender's
        # GIL time (benches/README.md, "Sender cost"), and the environment rarely changes under a
        # running process. A Session that has picked up cookies goes back to the per-request path.
        settings = self._session.merge_environment_settings(self.url, dict(self._proxies or {}), True, verify, None)
        self._send_settings: dict[str, Any] = {
            "timeout": timeout, "allow_redirects": False, "stream": True, "verify": settings["verify"],
            "proxies": settings["proxies"], "cert": settings["cert"]}
        self._template = self._session.prepare_request(requests.Request("POST", self.url, data=b"-",
                                                                        auth=self._auth))

    def __repr__(self) -> str:  # the key stays out of every repr
        return f"TrackV2Destination(url={self._shown_url!r}, region={self.name!r})"

    accepts_buffers = True
    """:meth:`send` takes a read-only ``memoryview`` as well as bytes (see ``Delivery``): the sender
    gives it a view of the native batch, which goes to the socket without a copy."""

    def send(self, body: bytes | memoryview) -> Outcome:
        # Redirects are never followed: requests would re-send the batch as a body-less GET without
        # credentials, and the 200 of whatever answers there would count as delivered.
        timeout: Timeout = self._timeout
        total = self._deadline
        settings = self._send_settings
        capped = False
        left = time_left()
        if left is not None and left < total:
            # An inline flush()/close() with a deadline: this request ends by then, not a whole read
            # timeout later. Cut short, it is a retryable attempt like any timeout; the delivery loop
            # then keeps the batch with its retry state (see ciotrack.inline).
            timeout = capped_timeout(self._connect_read, left)
            total = left
            capped = True
            settings = {**settings, "timeout": timeout}
        watch = watchdog()
        token = watch.arm(total)
        try:
            session = self._session
            if session.cookies:
                response = session.post(self.url, data=bytes(body), auth=self._auth, timeout=timeout,
                                        proxies=self._proxies, verify=self._verify, allow_redirects=False,
                                        stream=True)
            else:
                response = session.send(self._prepare(body), **settings)
            with response:
                content, truncated = read_capped(response)
        except requests.exceptions.SSLError as exc:
            if watch.disarm(token):
                return _deadline_outcome(total)
            # A certificate that does not verify will not verify on the next try either.
            return Outcome.final(None, f"tls_error: {_short(exc)}")
        except requests.exceptions.Timeout as exc:
            watch.disarm(token)
            if capped:  # the caller's deadline cut it, not the configured timeout
                return _deadline_outcome(total)
            return Outcome.retry(reason=f"timeout: {type(exc).__name__}")
        except (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
            if watch.disarm(token):
                return _deadline_outcome(total)
            return Outcome.retry(reason=f"connection_error: {_connection_cause(exc)}")
        except requests.exceptions.RequestException as exc:
            watch.disarm(token)
            return Outcome.final(None, f"request_error: {type(exc).__name__}: {_short(exc)}")
        except Exception as exc:  # anything else is a failed attempt, never an exception in the sender
            if watch.disarm(token):
                return _deadline_outcome(total)
            return Outcome.retry(reason=f"unexpected: {type(exc).__name__}: {_short(exc)}")
        if watch.disarm(token):
            return _deadline_outcome(total)
        if truncated:
            log.warning("ciotrack: the answer from %s was longer than %d bytes; read no further", self._shown_url,
                        len(content))
        status = response.status_code
        if 300 <= status < 400:
            return self._redirected(status, response.headers.get("Location"))
        return classify(status, response.headers.get("Retry-After"), content)

    def _prepare(self, body: bytes | memoryview) -> requests.PreparedRequest:
        """The request ``Session.post`` would prepare for ``body``, from the template made at start:
        only the body and its length differ between two batches."""
        template = self._template
        prepared = requests.PreparedRequest()
        prepared.method = "POST"
        prepared.url = template.url
        headers = template.headers.copy()
        headers["Content-Length"] = str(len(body))
        prepared.headers = headers
        prepared.body = body  # type: ignore[assignment]  # urllib3 sends any bytes-like body as is
        prepared.hooks = self._session.hooks  # what prepare_request merges in: the Session's, as they are now
        prepared._cookies = template._cookies  # type: ignore[attr-defined]  # not in the stubs; redirects read it
        return prepared

    def _redirected(self, status: int, location: str | None) -> Outcome:
        """A 3xx is never followed: the batch stays ours (retried, then spooled or reported), and the
        cause is logged loudly, at most once a minute per destination, naming where it points."""
        now = time.monotonic()
        if now - self._redirect_logged_at >= 60.0:
            self._redirect_logged_at = now
            log.error("ciotrack: %s answered %d redirecting to %s; ciotrack never follows redirects (a "
                      "redirected POST loses its body and credentials). Set endpoint= to the right URL, or fix "
                      "the proxy or captive portal in between", self._shown_url, status, location or "(no Location)")
        return Outcome.retry(status, reason=f"redirect: {status} to {(location or '?')[:200]}")

    def probe(self) -> bool:
        """One ``GET /api/v1/accounts/region``: any answer but 408/429/5xx means reachable."""
        left = time_left()  # an inline flush()'s probe (spool replay) keeps its deadline too
        cap = PROBE_TIMEOUT_CAP if left is None else min(PROBE_TIMEOUT_CAP, left)
        try:
            response = self._session.get(self._probe_url, auth=self._auth,
                                         timeout=capped_timeout(self._connect_read, cap),
                                         proxies=self._proxies, verify=self._verify, allow_redirects=False)
        except requests.exceptions.RequestException:
            return False
        status = response.status_code
        return status < 500 and status not in (408, 429)

    def close(self) -> None:
        if self._owns_session:
            self._session.close()


def classify(status: int, retry_after: str | None, content: bytes) -> Outcome:
    """Map one Track API v2 batch answer to an Outcome (pure, unit-tested without a server)."""
    if status == 207:
        return Outcome.partial(_batch_errors(content), status)
    if 200 <= status < 300:
        return Outcome.delivered(status)
    if status == 429 or status == 408 or 500 <= status < 600:
        return Outcome.retry(status, parse_retry_after(retry_after))
    if status == 413:
        return Outcome.split(status)
    return Outcome.final(status, f"http_{status}: {_error_text(content)}")


_MAX_207_CONTAINERS = 50_000
"""More JSON arrays and objects than a 207 for a full batch can hold (one per rejected operation)."""


def _batch_errors(content: bytes) -> tuple[tuple[int, str], ...]:
    """``(batch_index, reason)`` of a 207 body; each index once. Any body shape at all is handled:
    what cannot be attributed is logged, never raised (a hostile 207 must not stop the sender)."""
    try:
        # A real 207 nests three levels deep; a hostile one nested 100,000 deep would only be refused
        # by a RecursionError deep in the parser, on the sender's thread, where any finalizer the
        # garbage collector runs meanwhile would hit it too. Refuse it before parsing.
        if content.count(b"[") + content.count(b"{") > _MAX_207_CONTAINERS:
            raise ValueError("too deeply nested or too many containers")
        errors = json.loads(content)["errors"]
        if not isinstance(errors, list):
            raise TypeError("errors is not a list")
    except (ValueError, KeyError, TypeError, IndexError, RecursionError):
        log.warning("ciotrack: unparsable 207 body from Customer.io (%d bytes); failures not attributed", len(content))
        return ()
    failures: dict[int, str] = {}
    unattributed = 0
    for error in errors:
        try:
            index = error["batch_index"]
            if isinstance(index, bool) or not isinstance(index, int):
                raise TypeError("batch_index is not an integer")
            parts = [str(error[key]) for key in ("reason", "field", "message") if error.get(key)]
        except (KeyError, TypeError, AttributeError, ValueError, OverflowError, RecursionError):
            unattributed += 1
            continue
        failures.setdefault(index, ": ".join(parts)[:300] or "rejected")
    if unattributed:
        log.warning("ciotrack: %d entr(ies) of a 207 body name no usable batch_index; not attributed", unattributed)
    return tuple(failures.items())


def _deadline_outcome(seconds: float) -> Outcome:
    return Outcome.retry(reason=f"deadline: no complete answer within {seconds:g} s")


def _error_text(content: bytes, limit: int = 300) -> str:
    text = content[:limit].decode("utf-8", "replace").strip()
    return text or "no body"


def _connection_cause(exc: BaseException) -> str:
    """The OS's own words first (``Connection refused``, ``Name or service not known``), then the
    exception: urllib3's wrapping puts the cause past where ``_short`` cuts."""
    seen: set[int] = set()
    stack: list[object] = [exc]
    while stack:
        current = stack.pop()
        if not isinstance(current, BaseException) or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and not isinstance(current, requests.exceptions.RequestException) \
                and type(current).__module__ in ("builtins", "socket") and current.strerror:
            return f"{current.strerror}: {_short(exc, 160)}"
        stack.extend((current.__cause__, current.__context__, getattr(current, "reason", None), *current.args))
    return _short(exc)


def _short(exc: BaseException, limit: int = 200) -> str:
    text = str(exc)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def lookup_region(
    session: requests.Session,
    endpoint: str,
    site_id: str,
    api_key: str,
    *,
    timeout: Timeout,
    proxies: Mapping[str, str] | None = None,
    verify: bool | str = True,
) -> str | None:
    """``GET {endpoint}/api/v1/accounts/region`` -> ``"us"``/``"eu"``, or None (logged) when it cannot tell."""
    url = endpoint.rstrip("/") + "/api/v1/accounts/region"
    try:
        response = session.get(url, auth=(site_id, api_key), timeout=timeout, allow_redirects=False,
                               proxies=dict(proxies) if proxies else None, verify=verify)
        if response.status_code != 200:
            log.warning("ciotrack: region lookup at %s answered %d", redacted_url(url), response.status_code)
            return None
        region = response.json().get("region")
    except (requests.exceptions.RequestException, ValueError, AttributeError) as exc:
        log.warning("ciotrack: region lookup at %s failed: %s", redacted_url(url), _short(exc))
        return None
    if region in ("us", "eu"):
        return str(region)
    log.warning("ciotrack: region lookup at %s returned unknown region %r", redacted_url(url), region)
    return None
