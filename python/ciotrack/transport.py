"""Destinations: where a ready batch body goes, and what its answer means for the sender.

A :class:`Destination` takes the exact bytes of one batch and answers with an :class:`Outcome`:
delivered, partial (some operations rejected), retry (maybe after a server-given delay), split (too
large) or final (will never succeed). The sender, the token bucket, the retry policy and the metrics do
not care which destination they feed (the roadmap adds a Redis stream, the CDP batch API and an
in-memory capture). :class:`TrackV2Destination` is Customer.io's Track API v2 ``/api/v2/batch``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

import requests

from ciotrack._version import __version__
from ciotrack.destinations.http import DeadlineAdapter, read_capped, watchdog
from ciotrack.retry import parse_retry_after

__all__ = ["Destination", "Outcome", "TrackV2Destination", "lookup_region", "make_session", "user_agent"]

log = logging.getLogger("ciotrack.transport")

OutcomeKind = Literal["delivered", "partial", "retry", "split", "final"]
Timeout = float | tuple[float, float]


@dataclass(frozen=True, slots=True)
class Outcome:
    """The answer to one send. ``status`` is the HTTP status, or None when no response arrived."""

    kind: OutcomeKind
    status: int | None = None
    reason: str = ""
    retry_after: float | None = None
    """For ``retry``: the server's ``Retry-After`` in seconds, when it sent one."""
    failures: tuple[tuple[int, str], ...] = ()
    """For ``partial``: ``(batch_index, reason)`` of each rejected operation."""


DELIVERED = Outcome("delivered", 200)


class Destination(Protocol):
    """Receives batch bodies. ``send`` must not raise for delivery problems: it answers an Outcome."""

    name: str

    def send(self, body: bytes) -> Outcome: ...

    def close(self) -> None: ...


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

    ``timeout``, ``proxies`` and ``verify`` are passed on every request (so they win over the
    environment's ``REQUESTS_CA_BUNDLE``/``HTTPS_PROXY`` for this request). Status table:
    200/2xx delivered; 207 partial (``errors[].batch_index``); 429, 408, 5xx, connection errors and
    timeouts retry; 413 split; TLS verification failures and other 4xx are final.
    """

    def __init__(
        self,
        session: requests.Session,
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
        self._session = session
        self._auth = (site_id, api_key)
        self._timeout = timeout
        self._proxies = dict(proxies) if proxies else None
        self._verify = verify
        connect, read = timeout if isinstance(timeout, tuple) else (timeout, timeout)
        self._deadline = float(connect) + float(read)
        self._redirect_logged_at = float("-inf")
        """Total time one request may take, however the receiver trickles (connect + read timeouts)."""

    def __repr__(self) -> str:  # the key stays out of every repr
        return f"TrackV2Destination(url={self.url!r}, region={self.name!r})"

    def send(self, body: bytes) -> Outcome:
        # Redirects are never followed: requests would re-send the batch as a body-less GET without
        # credentials, and the 200 of whatever answers there would count as delivered.
        watch = watchdog()
        token = watch.arm(self._deadline)
        try:
            response = self._session.post(
                self.url, data=body, auth=self._auth, timeout=self._timeout, proxies=self._proxies,
                verify=self._verify, allow_redirects=False, stream=True,
            )
            with response:
                content, truncated = read_capped(response)
        except requests.exceptions.SSLError as exc:
            if watch.disarm(token):
                return _deadline_outcome(self._deadline)
            # A certificate that does not verify will not verify on the next try either.
            return Outcome("final", None, f"tls_error: {_short(exc)}")
        except requests.exceptions.Timeout as exc:
            watch.disarm(token)
            return Outcome("retry", None, f"timeout: {type(exc).__name__}")
        except (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
            if watch.disarm(token):
                return _deadline_outcome(self._deadline)
            return Outcome("retry", None, f"connection_error: {_short(exc)}")
        except requests.exceptions.RequestException as exc:
            watch.disarm(token)
            return Outcome("final", None, f"request_error: {type(exc).__name__}: {_short(exc)}")
        except Exception as exc:  # anything else is a failed attempt, never an exception in the sender
            if watch.disarm(token):
                return _deadline_outcome(self._deadline)
            return Outcome("retry", None, f"unexpected: {type(exc).__name__}: {_short(exc)}")
        if watch.disarm(token):
            return _deadline_outcome(self._deadline)
        if truncated:
            log.warning("ciotrack: the answer from %s was longer than %d bytes; read no further", self.url,
                        len(content))
        status = response.status_code
        if 300 <= status < 400:
            return self._redirected(status, response.headers.get("Location"))
        return classify(status, response.headers.get("Retry-After"), content)

    def _redirected(self, status: int, location: str | None) -> Outcome:
        """A 3xx is never followed: the batch stays ours (retried, then spooled or reported), and the
        cause is logged loudly, at most once a minute per destination, naming where it points."""
        now = time.monotonic()
        if now - self._redirect_logged_at >= 60.0:
            self._redirect_logged_at = now
            log.error("ciotrack: %s answered %d redirecting to %s; ciotrack never follows redirects (a "
                      "redirected POST loses its body and credentials). Set endpoint= to the right URL, or fix "
                      "the proxy or captive portal in between", self.url, status, location or "(no Location)")
        return Outcome("retry", status, f"redirect: {status} to {(location or '?')[:200]}")

    def close(self) -> None:
        pass  # the Session is shared; its owner closes it


def classify(status: int, retry_after: str | None, content: bytes) -> Outcome:
    """Map one Track API v2 batch answer to an Outcome (pure, unit-tested without a server)."""
    if status == 207:
        return Outcome("partial", status, "partial", failures=_batch_errors(content))
    if 200 <= status < 300:
        return Outcome("delivered", status)
    if status == 429 or status == 408 or 500 <= status < 600:
        return Outcome("retry", status, f"http_{status}", retry_after=parse_retry_after(retry_after))
    if status == 413:
        return Outcome("split", status, "http_413")
    return Outcome("final", status, f"http_{status}: {_error_text(content)}")


def _batch_errors(content: bytes) -> tuple[tuple[int, str], ...]:
    """``(batch_index, reason)`` of a 207 body; each index once. Any body shape at all is handled:
    what cannot be attributed is logged, never raised (a hostile 207 must not stop the sender)."""
    try:
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
    return Outcome("retry", None, f"deadline: no complete answer within {seconds:g} s")


def _error_text(content: bytes, limit: int = 300) -> str:
    text = content[:limit].decode("utf-8", "replace").strip()
    return text or "no body"


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
            log.warning("ciotrack: region lookup at %s answered %d", url, response.status_code)
            return None
        region = response.json().get("region")
    except (requests.exceptions.RequestException, ValueError, AttributeError) as exc:
        log.warning("ciotrack: region lookup at %s failed: %s", url, _short(exc))
        return None
    if region in ("us", "eu"):
        return str(region)
    log.warning("ciotrack: region lookup at %s returned unknown region %r", url, region)
    return None
