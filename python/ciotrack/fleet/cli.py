"""``ciotrack worker``: deliver a workspace's Redis stream to Customer.io (see :mod:`ciotrack.fleet.worker`).

Credentials come from ``--site-id``/``--api-key`` or ``CIOTRACK_SITE_ID``/``CIOTRACK_API_KEY`` (prefer
the environment: a command line is visible in ``ps``); the Redis URL from ``--redis-url`` or
``CIOTRACK_REDIS_URL``. SIGTERM/SIGINT drain the worker and it exits 0.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from types import FrameType

from ciotrack.fleet import require_extra
from ciotrack.fleet.metrics import WorkerMetrics, serve
from ciotrack.fleet.settings import DEFAULT_BURST, DEFAULT_RATE_LIMIT
from ciotrack.fleet.worker import Worker, WorkerConfig

__all__ = ["configure_parser", "run"]

# Checked (not imported: importing redis creates its loggers) when the command is chosen, so a missing
# fleet extra is named by `ciotrack worker` at once.
require_extra("redis", "prometheus_client")


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    return float(raw) if raw else default


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--redis-url", default=os.environ.get("CIOTRACK_REDIS_URL"),
                        help="redis://host:6379/0 (env CIOTRACK_REDIS_URL)")
    parser.add_argument("--site-id", default=os.environ.get("CIOTRACK_SITE_ID"), help="env CIOTRACK_SITE_ID")
    parser.add_argument("--api-key", default=None, help="env CIOTRACK_API_KEY (preferred: not shown by ps)")
    parser.add_argument("--endpoint", default=os.environ.get("CIOTRACK_ENDPOINT"),
                        help="base URL for every region (an emulator); default: Customer.io US/EU")
    env_region = os.environ.get("CIOTRACK_REGION", "us").strip().lower()
    parser.add_argument("--region", default=env_region if env_region in ("us", "eu") else "us", choices=("us", "eu"),
                        help="where entries go whose producer did not know its region ('auto'); default us")
    parser.add_argument("--rate-limit", type=float, default=_env_float("CIOTRACK_RATE_LIMIT", DEFAULT_RATE_LIMIT),
                        help=f"requests/s for the whole fleet (shared in Redis; 0 disables); default "
                             f"{DEFAULT_RATE_LIMIT:g}: {100 - DEFAULT_RATE_LIMIT:g} %% under the workspace's 100/s")
    parser.add_argument("--burst", type=float, default=DEFAULT_BURST,
                        help=f"burst of the shared limiter (default {DEFAULT_BURST:g}: small, so request "
                             f"timing jitter does not exceed the server's own burst allowance)")
    parser.add_argument("--concurrency", type=int, default=None,
                        help="delivery threads (default: rate * 0.1 + 2, enough at ~100 ms per request)")
    parser.add_argument("--metrics-port", type=int, default=None, help="serve /metrics, /healthz, /readyz here")
    parser.add_argument("--visibility-timeout", type=float, default=60.0,
                        help="seconds before a silent worker's entries are claimed by others")
    parser.add_argument("--max-deliveries", type=int, default=5,
                        help="tries (final 4xx answers, or deaths mid-delivery) before the dead-letter stream")
    parser.add_argument("--drain-timeout", type=float, default=25.0,
                        help="seconds to finish in-flight entries after SIGTERM, >= 2 (keep < the pod's grace "
                             "period)")
    parser.add_argument("--request-timeout", type=float, default=10.0, help="HTTP request timeout, seconds")
    parser.add_argument("--consumer", default=None, help="consumer name (default: host-pid)")
    parser.add_argument("--key-prefix", default="ciotrack",
                        help="first part of this worker's Redis keys (default ciotrack), to keep a load test's "
                             "streams apart: Tracker(redis_url=...) producers and `ciotrack doctor` always use "
                             "ciotrack, so keep the default in production; `ciotrack deadletter --key-prefix` "
                             "reaches a prefixed worker's dead letters")
    parser.add_argument("--no-coalesce", dest="coalesce", action="store_false",
                        help="one request per stream entry (default: small fresh entries of a region share "
                             "requests of up to 500 KB, each still acknowledged on its own)")
    parser.add_argument("--create-group", action="store_true",
                        help="create the stream and its consumer group (at 0, idempotent), then exit")


def _configure_logging() -> None:
    """``ciotrack worker`` is a program, not a library call, and its deployment (a container running the
    command) has no Python of its own to configure logging with. Without this only WARNING and above
    reached stderr (Python's last-resort handler), bare: INFO lines such as "delivery recovered" or
    "removed idle consumer" were lost. So, unless logging is already set up: ciotrack's INFO and
    everyone's WARNING to stderr, with time, level and logger."""
    if logging.getLogger().handlers:
        return
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ours = logging.getLogger("ciotrack")
    if ours.level == logging.NOTSET:
        ours.setLevel(logging.INFO)


def run(args: argparse.Namespace) -> int:
    _configure_logging()
    api_key = args.api_key or os.environ.get("CIOTRACK_API_KEY")
    if not args.redis_url:
        print("ciotrack worker: --redis-url or CIOTRACK_REDIS_URL is required", file=sys.stderr)
        return 2
    if args.create_group:
        return _create_group(args.redis_url, args.site_id, args.key_prefix)
    config = WorkerConfig(
        redis_url=args.redis_url, site_id=args.site_id or "", api_key=api_key or "", endpoint=args.endpoint,
        region=args.region, rate_limit=args.rate_limit, burst=args.burst, concurrency=args.concurrency,
        visibility_timeout=args.visibility_timeout, max_deliveries=args.max_deliveries,
        drain_timeout=args.drain_timeout, request_timeout=args.request_timeout, consumer=args.consumer,
        prefix=args.key_prefix, coalesce=args.coalesce)
    try:
        config.validate()
    except ValueError as exc:
        print(f"ciotrack worker: {exc}", file=sys.stderr)
        return 2
    metrics = WorkerMetrics()
    worker = Worker(config, metrics)
    server = serve(metrics, worker.probes, args.metrics_port) if args.metrics_port is not None else None

    def on_signal(signum: int, frame: FrameType | None) -> None:
        worker.drain()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"ciotrack worker {worker.consumer} reading {worker.keys.work}: {config!r}", file=sys.stderr, flush=True)
    try:
        return worker.run()
    finally:
        if server is not None:
            server.shutdown()


def _create_group(redis_url: str, site_id: str | None, prefix: str = "ciotrack") -> int:
    """For a deploy-time Job or initContainer: the group must exist before producers and KEDA."""
    from ciotrack.fleet.producer import connect
    from ciotrack.fleet.streams import StreamKeys, ensure_group

    if not site_id:
        print("ciotrack worker: --site-id or CIOTRACK_SITE_ID is required", file=sys.stderr)
        return 2
    keys = StreamKeys.for_site(site_id, prefix)
    client = connect(redis_url)
    try:
        created = ensure_group(client, keys)
    finally:
        client.close()
    print(f"consumer group {keys.group} on {keys.work}: {'created' if created else 'already there'}")
    return 0
