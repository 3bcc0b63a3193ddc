"""Checks that talk to the Track API: DNS, TLS, proxies, credentials, region, redirects, RTT, clock.

Every request is ``GET /api/v1/accounts/region``: authenticated, read-only, and cheap, so the doctor
never sends an event and never changes anything in a workspace. Redirects are never followed (a
redirected batch would be re-sent as a body-less GET without credentials); one is reported with its
``Location``.
"""

from __future__ import annotations

import email.utils
import math
import socket
import statistics
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

import requests

from ciotrack.concurrency import DEFAULT_MAX_IN_FLIGHT, MAX_IN_FLIGHT_BOUND
from ciotrack.doctor.report import Report
from ciotrack.preflight import credentials_hint, request_region
from ciotrack.redact import redacted_url

__all__ = ["Target", "check_api", "describe"]

RTT_SAMPLES = 5
TYPICAL_EVENT_BYTES = 400
"""A typical encoded event (an id, a name, a few properties): 1,250 of them fill a 500 KB batch."""


@dataclass(frozen=True)
class Target:
    """What to check, from the same options and environment variables as ``Tracker``."""

    site_id: str
    api_key: str
    region: str
    endpoint: str
    """Base URL of the region's Track API (no trailing slash)."""
    explicit_endpoint: bool
    proxies: dict[str, str] | None
    verify: bool | str
    timeout: float
    rate_limit: float
    batch_bytes: int
    spool_dir: str | None
    spool_max_bytes: int
    redis_url: str | None

    def __repr__(self) -> str:  # the key stays out of every repr
        return f"Target(site_id={self.site_id!r}, region={self.region!r}, endpoint={self.endpoint!r})"


def _region_url(target: Target) -> str:
    return target.endpoint + "/api/v1/accounts/region"


def _get(session: requests.Session, target: Target) -> requests.Response:
    return request_region(session, target.endpoint, target.site_id, target.api_key, timeout=target.timeout,
                          proxies=target.proxies, verify=target.verify)


def check_api(report: Report, target: Target) -> None:
    url = urllib.parse.urlsplit(target.endpoint)
    host = url.hostname or ""
    if not _check_dns(report, host, url.port or (443 if url.scheme == "https" else 80)):
        return
    _check_proxies(report, target)
    with requests.Session() as session:
        session.trust_env = target.proxies is None  # explicit proxies win, as in Tracker
        try:
            started = time.perf_counter()
            response = _get(session, target)
            first = time.perf_counter() - started
        except requests.exceptions.SSLError as exc:
            report.add("tls", "fail", f"certificate verification failed for {host}: {_short(exc)}",
                       "fix the CA bundle (verify= / REQUESTS_CA_BUNDLE) or the proxy that intercepts TLS")
            return
        except requests.exceptions.RequestException as exc:
            report.add("reachability", "fail", f"no answer from {target.endpoint}: {_short(exc)}",
                       "check the endpoint, firewall and proxy settings (HTTPS_PROXY/NO_PROXY)")
            return
        _check_tls(report, url.scheme, host, target)
        if not _check_answer(report, response, target):
            return
        _check_region(report, response, target)
        _check_clock(report, response)
        _check_rtt(report, session, target, first)


def _check_dns(report: Report, host: str, port: int) -> bool:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        report.add("dns", "fail", f"{host} does not resolve: {exc}", "check DNS, or the endpoint's spelling")
        return False
    addresses = sorted({str(info[4][0]) for info in infos})
    report.add("dns", "ok", f"{host} -> {', '.join(addresses[:3])}")
    return True


def _check_proxies(report: Report, target: Target) -> None:
    if target.proxies:
        report.add("proxy", "ok", f"explicit proxies= in use for {', '.join(sorted(target.proxies))}")
        return
    proxies = requests.utils.get_environ_proxies(target.endpoint)
    in_effect = {k: v for k, v in proxies.items() if k in ("http", "https", "all")}
    if in_effect:
        shown = ", ".join(f"{k}={redacted_url(v)}" for k, v in sorted(in_effect.items()))
        report.add("proxy", "warn", f"environment proxy in effect for the endpoint: {shown}",
                   "make sure the proxy passes POST bodies and Authorization through, or set NO_PROXY")
    else:
        report.add("proxy", "ok", "no proxy in effect for the endpoint")


def _check_tls(report: Report, scheme: str, host: str, target: Target) -> None:
    loopback = host in ("localhost", "127.0.0.1", "::1") or host.startswith("127.")
    if scheme == "https":
        if target.verify is False:
            report.add("tls", "warn", "TLS certificate verification is OFF (verify=False)",
                       "remove verify=False; pass a CA bundle path instead if you use a private CA")
        else:
            report.add("tls", "ok", "HTTPS, certificate verified")
    elif loopback:
        report.add("tls", "ok", "plain HTTP to a loopback endpoint (an emulator or a local proxy)")
    else:
        report.add("tls", "fail", f"plain HTTP to {host}: credentials and data travel unencrypted",
                   "use an https:// endpoint")


def _check_answer(report: Report, response: requests.Response, target: Target) -> bool:
    status = response.status_code
    if 300 <= status < 400:
        location = response.headers.get("Location", "(no Location header)")
        report.add("redirect", "fail", f"the endpoint answered {status} -> {location}; ciotrack never follows "
                   "redirects (a redirected POST loses its body and credentials)",
                   f"set endpoint= to where it points (or fix the proxy/captive portal): {location}")
        return False
    report.add("redirect", "ok", "no redirect")
    if status in (401, 403):
        report.add("credentials", "fail", f"{status}: the Track API refused site id {target.site_id!r} with this "
                   "API key", credentials_hint(target.region, target.endpoint))
        return False
    if status != 200:
        report.add("credentials", "warn", f"unexpected {status} from {_region_url(target)}",
                   "check the endpoint points at a Track API")
        return False
    report.add("credentials", "ok", f"site id {target.site_id!r} authenticated (200)")
    return True


def _check_region(report: Report, response: requests.Response, target: Target) -> None:
    try:
        account_region = str(response.json().get("region"))
    except (ValueError, AttributeError):
        report.add("region", "warn", "the region answer was not JSON", "")
        return
    if target.region == "auto":
        report.add("region", "ok", f"the account is in {account_region!r} (region='auto' finds it at start)")
        report.recommend("region", account_region, "saves a lookup at start and works if it fails")
    elif account_region == target.region:
        report.add("region", "ok", f"the account is in {account_region!r}, as configured")
    elif account_region in ("us", "eu"):
        where = "the US endpoints route EU data through US servers" if account_region == "eu" else \
            "a US account sending to the EU endpoints fails"
        report.add("region", "fail", f"the account is in {account_region!r} but ciotrack sends to {target.region!r}"
                   f" ({where})", f"set region={account_region!r} (CIOTRACK_REGION={account_region})")
        report.recommend("region", account_region, "the account's data center")
    else:
        report.add("region", "warn", f"unknown region {account_region!r} in the answer", "")


def _check_clock(report: Report, response: requests.Response) -> None:
    header = response.headers.get("Date")
    if not header:
        report.add("clock", "warn", "the server sent no Date header: clock skew not measured", "")
        return
    try:
        server = email.utils.parsedate_to_datetime(header).timestamp()
    except (TypeError, ValueError):
        report.add("clock", "warn", f"unparsable Date header {header!r}", "")
        return
    skew = time.time() - server  # Date has whole seconds: below ~2 s this is noise
    detail = f"local clock is {abs(skew):.0f} s {'ahead of' if skew > 0 else 'behind'} the server's"
    advice = "sync the clock (NTP/chrony): Customer.io orders events and attribute updates by their timestamps"
    if abs(skew) >= 60:
        report.add("clock", "fail", detail, advice)
    elif abs(skew) >= 5:
        report.add("clock", "warn", detail, advice)
    else:
        report.add("clock", "ok", f"within {max(1, math.ceil(abs(skew)))} s of the server's")


def _check_rtt(report: Report, session: requests.Session, target: Target, first: float) -> None:
    samples = []
    for _ in range(RTT_SAMPLES):
        started = time.perf_counter()
        try:
            _get(session, target)
        except requests.exceptions.RequestException:
            continue
        samples.append(time.perf_counter() - started)
    if not samples:
        report.add("latency", "fail", "the endpoint stopped answering during the round-trip test", "")
        return
    rtt = statistics.median(samples)
    detail = f"round trip {rtt * 1000:.0f} ms (median of {len(samples)}, first with connect {first * 1000:.0f} ms)"
    report.add("latency", "warn" if rtt > 0.5 else "ok", detail,
               "a slow path to Customer.io; check for a proxy or a far region" if rtt > 0.5 else "")
    _recommend_throughput(report, target, rtt)


def _recommend_throughput(report: Report, target: Target, rtt: float) -> None:
    rate = target.rate_limit
    ops_per_batch = max(1, target.batch_bytes // TYPICAL_EVENT_BYTES)
    if rate <= 0:
        report.add("throughput", "warn", "rate_limit=0: no client-side limit; Customer.io will answer 429s",
                   "set rate_limit to the workspace's limit (100 requests/s by default)")
        report.recommend("rate_limit", 100.0, "Customer.io's per-workspace request limit")
        return
    needed = max(1, math.ceil(rate * rtt * 1.2))
    ceiling = rate * ops_per_batch
    found = f"filling {rate:g} requests/s at {rtt * 1000:.0f} ms needs ~{needed} request(s) in flight; ceiling " \
            f"~{ceiling:,.0f} events/s at ~{TYPICAL_EVENT_BYTES} B per event ({ops_per_batch} per batch)"
    if needed <= DEFAULT_MAX_IN_FLIGHT:
        report.add("throughput", "ok", found + f"; adaptive concurrency (the default, up to "
                   f"{DEFAULT_MAX_IN_FLIGHT}) reaches it")
    else:
        report.add("throughput", "warn", found, f"raise max_in_flight to {min(MAX_IN_FLIGHT_BOUND, needed)}")
        report.recommend("max_in_flight", min(MAX_IN_FLIGHT_BOUND, needed),
                         f"rate x round trip x 1.2 at {rtt * 1000:.0f} ms")


def _short(exc: BaseException, limit: int = 160) -> str:
    text = str(exc)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe(target: Target) -> dict[str, Any]:
    return {"site_id": target.site_id, "region": target.region, "endpoint": target.endpoint,
            "redis_url": redacted_url(target.redis_url) if target.redis_url else None}
