"""``ciotrack doctor``: a validation report for an integration, with the settings it recommends.

Exit codes: 0 nothing failed (warnings allowed), 1 a check failed (or a warning, with ``--strict``),
2 bad arguments. Options and environment variables are the Tracker's (``CIOTRACK_SITE_ID``,
``CIOTRACK_API_KEY``, ``CIOTRACK_REGION``, ``CIOTRACK_ENDPOINT``, ``CIOTRACK_SPOOL_DIR``,
``CIOTRACK_REDIS_URL``; proxies from ``HTTPS_PROXY``/``NO_PROXY`` as ``requests`` reads them).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any

from ciotrack.doctor.fleet import check_redis
from ciotrack.doctor.local import check_process, check_spool
from ciotrack.doctor.network import Target, check_api, describe
from ciotrack.doctor.report import Report
from ciotrack.redact import redacted_url

if TYPE_CHECKING:
    from ciotrack.config import Config

__all__ = ["configure_parser", "diagnose", "run"]


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--site-id", help="workspace Site ID (default CIOTRACK_SITE_ID)")
    parser.add_argument("--api-key", help="Track API key (default CIOTRACK_API_KEY)")
    parser.add_argument("--region", choices=("us", "eu", "auto"),
                        help="configured region (default CIOTRACK_REGION or us)")
    parser.add_argument("--endpoint", help="base URL instead of Customer.io's (an emulator: http://127.0.0.1:8080)")
    parser.add_argument("--redis-url", help="fleet mode: check this Redis (default CIOTRACK_REDIS_URL)")
    parser.add_argument("--spool-dir", help="check this spool directory (default CIOTRACK_SPOOL_DIR)")
    parser.add_argument("--rate-limit", type=float, help="the workspace's request limit (default 100/s)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per request (default 10)")
    parser.add_argument("--json", metavar="FILE", help="also write the report as JSON ('-' for stdout)")
    parser.add_argument("--strict", action="store_true", help="exit 1 on warnings too")


def diagnose(options: dict[str, Any], *, timeout: float = 10.0, environ: dict[str, str] | None = None) -> Report:
    """Run every check; ``options`` are Tracker keyword options (None = from the environment)."""
    from ciotrack.config import Config
    from ciotrack.errors import ConfigError

    env = dict(os.environ if environ is None else environ)
    redis_url = options.pop("redis_url", None) or env.get("CIOTRACK_REDIS_URL") or None
    report = Report(target={"redis_url": redacted_url(redis_url) if redis_url else None})
    try:
        config: Config | None = Config.from_env(env, **{k: v for k, v in options.items() if v is not None})
    except ConfigError as exc:
        report.add("config", "fail", str(exc), "pass --site-id/--api-key or set CIOTRACK_SITE_ID/CIOTRACK_API_KEY")
        config = None
    if config is not None:
        _check_configured(report, config, redis_url, timeout)
    else:
        check_process(report)
    return report


def run(args: argparse.Namespace) -> int:
    options = {"site_id": args.site_id, "api_key": args.api_key, "region": args.region, "endpoint": args.endpoint,
               "spool_dir": args.spool_dir, "rate_limit": args.rate_limit, "redis_url": args.redis_url}
    report = diagnose(options, timeout=args.timeout)
    sys.stdout.write(report.render())
    if args.json:
        text = report.to_json()
        if args.json == "-":
            sys.stdout.write(text)
        else:
            with open(args.json, "w", encoding="utf-8") as out:
                out.write(text)
    return 1 if report.failed(strict=args.strict) else 0


def _check_configured(report: Report, config: Config, redis_url: str | None, timeout: float) -> None:
    region = config.region
    spool_dir = os.fspath(config.spool_dir) if config.spool_dir is not None else None
    target = Target(
        site_id=config.site_id, api_key=config.api_key, region=region,
        endpoint=config.endpoint_for("us" if region == "auto" else region),
        explicit_endpoint=bool(config.endpoint or config.endpoints),
        proxies=dict(config.proxies) if config.proxies else None, verify=config.verify, timeout=timeout,
        rate_limit=config.rate_limit, batch_bytes=config.batch_bytes, spool_dir=spool_dir,
        spool_max_bytes=config.spool_max_bytes, redis_url=redis_url)
    report.target = describe(target)
    report.add("config", "ok", f"site id {config.site_id!r}, region {region!r}, endpoint {target.endpoint}")
    check_api(report, target)
    check_process(report)
    check_spool(report, spool_dir, config.spool_max_bytes)
    if redis_url:
        check_redis(report, redis_url, config.site_id)
