"""``Tracker.check()``: one authenticated, read-only request that tells whether a tracker can deliver.

For a startup health check (a readiness probe, an app factory): ``GET {endpoint}/api/v1/accounts/region``
per region the tracker sends to, with the tracker's credentials, timeout, proxies and TLS settings,
never following a redirect. It sends no event and changes nothing in the workspace. What it raises is
a :class:`~ciotrack.errors.CheckError` (a ``ConfigError``, so a ``ValueError``) naming the cause and the
fix; the API key is never in the message:

==========================================  =====================================================
:class:`~ciotrack.errors.CredentialsError`   401/403: wrong site id or API key (or region)
:class:`~ciotrack.errors.RegionMismatchError`  the workspace is in the other region
:class:`~ciotrack.errors.EndpointRedirectError`  a 3xx (a proxy, a captive portal, http->https)
:class:`~ciotrack.errors.EndpointUnreachableError`  refused, timed out, TLS, DNS, a 5xx/429
==========================================  =====================================================

``ciotrack doctor`` goes further (DNS, proxies, clock, RTT) and shares :func:`credentials_hint`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import requests

from ciotrack.errors import (
    CredentialsError,
    EndpointRedirectError,
    EndpointUnreachableError,
    RegionMismatchError,
)

if TYPE_CHECKING:
    from ciotrack.config import Config

__all__ = ["REGION_PATH", "check_config", "credentials_hint", "request_region"]

REGION_PATH = "/api/v1/accounts/region"


def credentials_hint(region: str, endpoint: str) -> str:
    """What to check when the Track API refuses the credentials (shared by the log, ``check()`` and doctor)."""
    return (f"Check the Site ID and the Track API key (not an App API key) under Settings > Workspace Settings > "
            f"API Credentials, and the workspace's region (this tracker sends to region {region!r} at {endpoint}; "
            "an EU workspace needs region='eu'). Pass them as Tracker(site_id, api_key, region=...) or set "
            "CIOTRACK_SITE_ID, CIOTRACK_API_KEY and CIOTRACK_REGION (CIOTRACK_ENDPOINT for an emulator or proxy). "
            "tracker.check() or `ciotrack doctor` verifies them")


def request_region(session: requests.Session, endpoint: str, site_id: str, api_key: str, *,
                   timeout: float | tuple[float, float], proxies: Mapping[str, str] | None,
                   verify: bool | str) -> requests.Response:
    """The one request of ``check()`` and ``ciotrack doctor``: ``GET {endpoint}/api/v1/accounts/region``,
    authenticated, redirects not followed (the caller reads the ``Location``)."""
    return session.get(endpoint.rstrip("/") + REGION_PATH, auth=(site_id, api_key), timeout=timeout,
                       allow_redirects=False, proxies=dict(proxies) if proxies else None, verify=verify)


def check_config(config: Config, timeout: float = 5.0) -> dict[str, str]:
    """Check every region ``config`` sends to; the account's region per configured region on success.

    A tracker with an injected ``destination`` or ``disabled`` has nothing to authenticate: the result
    is empty (a destination's own ``probe()`` is the tracker's business, see ``Tracker.check``)."""
    if config.disabled or config.destination is not None:
        return {}
    found: dict[str, str] = {}
    with requests.Session() as session:
        session.trust_env = config.proxies is None  # explicit proxies win, as in the tracker
        for route in config.regions_in_use():
            # "auto" asks the US host, which answers for any workspace (as the tracker's own lookup does).
            region = "us" if route == "auto" else route
            found[route] = _check_region(session, config, region, expected=route, timeout=timeout)
    return found


def _check_region(session: requests.Session, config: Config, region: str, *, expected: str, timeout: float) -> str:
    endpoint = config.endpoint_for(region)
    url = endpoint + REGION_PATH
    try:
        response = request_region(session, endpoint, config.site_id, config.api_key, timeout=timeout,
                                  proxies=config.proxies, verify=config.verify)
    except requests.exceptions.SSLError as exc:
        raise EndpointUnreachableError(f"TLS failure talking to {url}: {_short(exc)}. Fix the CA bundle (verify=, "
                                       "REQUESTS_CA_BUNDLE) or the proxy that intercepts TLS") from None
    except requests.exceptions.Timeout:
        raise EndpointUnreachableError(f"no answer from {url} within {timeout:g} s (timeout). Check the endpoint, "
                                       "the firewall and the proxy settings (HTTPS_PROXY/NO_PROXY)") from None
    except requests.exceptions.RequestException as exc:
        raise EndpointUnreachableError(f"cannot reach {url}: {_cause(exc)}. Check the endpoint (CIOTRACK_ENDPOINT), "
                                       "the firewall and the proxy settings (HTTPS_PROXY/NO_PROXY)") from None
    with response:
        status = response.status_code
        if 300 <= status < 400:
            location = response.headers.get("Location") or "(no Location header)"
            raise EndpointRedirectError(f"{url} answered {status} redirecting to {location}; ciotrack never follows "
                                        "redirects (a redirected POST loses its body and credentials). Set endpoint= "
                                        "to the right URL, or fix the proxy or captive portal in between")
        if status in (401, 403):
            raise CredentialsError(f"{url} refused site id {config.site_id!r} with this API key (HTTP {status}). "
                                   + credentials_hint(expected, endpoint))
        if status != 200:
            raise EndpointUnreachableError(f"{url} answered HTTP {status}; is this a Customer.io Track API endpoint "
                                           "(or is it down)?")
        try:
            account_region = str(response.json().get("region"))
        except (ValueError, AttributeError):
            raise EndpointUnreachableError(f"{url} answered 200 but not with JSON; is this a Customer.io Track API "
                                           "endpoint?") from None
    if expected != "auto" and account_region in ("us", "eu") and account_region != expected:
        raise RegionMismatchError(
            f"the workspace of site id {config.site_id!r} is in region {account_region!r} but this tracker sends "
            f"its {expected!r} data to {endpoint}. Set region={account_region!r} (CIOTRACK_REGION={account_region})",
            account_region=account_region)
    return account_region


def _cause(exc: BaseException) -> str:
    text = str(exc)
    lowered = text.lower()
    if "refused" in lowered:
        return "connection refused"
    if "name or service not known" in lowered or "nameresolution" in lowered:
        return "the host name does not resolve (DNS)"
    return _short(exc)


def _short(exc: BaseException, limit: int = 200) -> str:
    text = str(exc)
    return text if len(text) <= limit else text[: limit - 3] + "..."
