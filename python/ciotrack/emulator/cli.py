"""``ciotrack emulator ...`` / ``python -m ciotrack.emulator ...``: run the emulator in the foreground.

Prints the URL on stdout once listening (and ``ca_bundle=<path>`` with ``--tls``): programs read
those first lines. Then, for a person, the workspace credentials (site id, Track API key, App API
key) and the environment variables that point a tracker at it. Serves until SIGINT/SIGTERM (or,
with ``--exit-on-stdin-eof``, until stdin closes).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from types import FrameType
from typing import Any

import orjson

from ciotrack.emulator.faults import LATENCY_PROFILES
from ciotrack.lifecycle import block_exit_signals


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: loopback only)")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one)")
    parser.add_argument("--site-id", help="workspace site id (with --api-key; default site-1/key-1)")
    parser.add_argument("--api-key", help="workspace track API key")
    parser.add_argument("--app-api-key", help="App API key of the first workspace, for /v1/send/* "
                        "(default: app-<its track API key>)")
    parser.add_argument("--workspace", action="append", default=[], metavar="SITE_ID:API_KEY",
                        help="another workspace (repeatable)")
    parser.add_argument("--region", choices=("us", "eu"), default="us", help="region this server reports")
    parser.add_argument("--rate-limit", type=float, help="requests/s per workspace (off by default)")
    parser.add_argument("--burst", type=float, help="token bucket size (default: the rate)")
    parser.add_argument("--tls", action="store_true", help="HTTPS with a self-signed certificate made at start")
    faults = parser.add_argument_group("faults")
    faults.add_argument("--error-rate", type=float, help="probability of answering an error status")
    faults.add_argument("--error-statuses", help="comma-separated statuses (default 500,502,503)")
    faults.add_argument("--latency", type=float, help="seconds added to every answer")
    faults.add_argument("--latency-jitter", type=float, help="random extra seconds, up to this")
    faults.add_argument("--latency-ms", type=float, help="median latency in ms (fixed unless --latency-p99-ms)")
    faults.add_argument("--latency-p99-ms", type=float,
                        help="99th percentile latency in ms: lognormal delays with --latency-ms as median")
    faults.add_argument("--latency-profile", choices=sorted(LATENCY_PROFILES),
                        help="a named latency profile (customerio: median 80 ms, p99 300 ms)")
    faults.add_argument("--reset-rate", type=float, help="probability of resetting the connection mid-request")
    faults.add_argument("--slow-read", type=float, help="seconds to stall before answering 503 (not applied)")
    faults.add_argument("--apply-then-drop-rate", type=float,
                        help="probability of applying, then dropping the connection")
    faults.add_argument("--storm-429", type=float, metavar="SECONDS", help="answer 429 to everything for this long")
    faults.add_argument("--storm-retry-after", type=int, help="Retry-After of the storm's 429s (default 1)")
    faults.add_argument("--clock-skew", type=float, help="seconds added to the Date header of every answer")
    faults.add_argument("--redirect-to", help="answer every Track API request 301 to this base URL")
    faults.add_argument("--max-body-bytes", type=int,
                        help="answer 413 to Track API bodies above this size (default: Customer.io's limits)")
    faults.add_argument("--seed", type=int, help="seed of the fault RNG")
    faults.add_argument("--faults-json", help=argparse.SUPPRESS)
    hooks = parser.add_argument_group("reporting webhooks (signed, as Customer.io posts them)")
    hooks.add_argument("--webhook-url", help="post reporting webhooks for the workspaces' messages here")
    hooks.add_argument("--webhook-secret", help="signing key (default $CIOTRACK_WEBHOOK_SECRET)")
    hooks.add_argument("--webhook-rate", type=float, default=100.0, help="webhooks per second at most (default 100)")
    hooks.add_argument("--webhook-synthetic", action="store_true",
                       help="make up events of every object type instead of reporting received ones")
    hooks.add_argument("--webhook-duplicates", type=float, default=0.0, metavar="SHARE",
                       help="share re-sent with an earlier event_id, freshly signed")
    hooks.add_argument("--webhook-replays", type=float, default=0.0, metavar="SHARE",
                       help="share replayed byte for byte (original timestamp and signature)")
    hooks.add_argument("--webhook-forged", type=float, default=0.0, metavar="SHARE",
                       help="share sent with a wrong signature")
    parser.add_argument("--exit-on-stdin-eof", action="store_true", help=argparse.SUPPRESS)


def _workspaces(args: argparse.Namespace) -> dict[str, str] | None:
    spaces: dict[str, str] = {}
    if args.site_id or args.api_key:
        if not (args.site_id and args.api_key):
            raise SystemExit("--site-id and --api-key go together")
        spaces[args.site_id] = args.api_key
    for item in args.workspace:
        site_id, sep, api_key = item.partition(":")
        if not (sep and site_id and api_key):
            raise SystemExit(f"--workspace wants SITE_ID:API_KEY, got {item!r}")
        spaces[site_id] = api_key
    return spaces or None


def _faults(args: argparse.Namespace) -> dict[str, Any]:
    settings: dict[str, Any] = orjson.loads(args.faults_json) if args.faults_json else {}
    for name in ("error_rate", "latency", "latency_jitter", "reset_rate", "slow_read", "apply_then_drop_rate",
                 "clock_skew", "redirect_to", "seed", "latency_ms", "latency_p99_ms", "latency_profile",
                 "max_body_bytes"):
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    if args.error_statuses:
        settings["error_statuses"] = [int(s) for s in args.error_statuses.split(",") if s.strip()]
    if args.storm_429 is not None:
        settings["storm_429_seconds"] = args.storm_429
    if args.storm_retry_after is not None:
        settings["storm_429_retry_after"] = args.storm_retry_after
    return settings


def banner(url: str, region: str, credentials: list[tuple[str, str, str]], ca_bundle: str | None) -> str:
    """What a person needs to point a client at this server (printed after the machine-read lines)."""
    site_id, api_key, app_key = credentials[0]
    lines = [f"ciotrack emulator: Customer.io Track API (v1, v2) and App API (/v1/send/*) at {url}, region {region}"]
    for site, key, app in credentials:
        lines.append(f"  workspace  site id: {site}  Track API key: {key}  App API key: {app}")
    lines.append(f"  export CIOTRACK_ENDPOINT={url} CIOTRACK_SITE_ID={site_id} CIOTRACK_API_KEY={api_key}")
    if ca_bundle:
        lines.append(f"  export REQUESTS_CA_BUNDLE={ca_bundle}  # the self-signed CA of --tls")
    lines.append(f"  transactional: APIClient({app_key!r}, url={url!r})")
    lines.append(f"  what it received: {url}/_emulator/state  (Ctrl-C stops it)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from ciotrack.emulator.emulator import DEFAULT_WORKSPACES, Emulator

    workspaces = _workspaces(args)
    app_keys = None
    if args.app_api_key:
        first_site = next(iter(workspaces or DEFAULT_WORKSPACES))
        app_keys = {first_site: args.app_api_key}
    try:
        emulator = Emulator(args.host, args.port, workspaces=workspaces, rate_limit=args.rate_limit,
                            burst=args.burst, tls=args.tls, faults=_faults(args), region=args.region,
                            app_api_keys=app_keys)
    except ValueError as err:
        print(f"ciotrack emulator: {err}", file=sys.stderr)
        return 2
    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    emulator.start()
    try:
        if args.webhook_url:
            secret = args.webhook_secret or os.environ.get("CIOTRACK_WEBHOOK_SECRET")
            if not secret:
                print("ciotrack emulator: --webhook-url needs --webhook-secret or $CIOTRACK_WEBHOOK_SECRET",
                      file=sys.stderr)
                return 2
            try:
                emulator.send_webhooks(args.webhook_url, secret, rate=args.webhook_rate,
                                       synthetic=args.webhook_synthetic, duplicate_share=args.webhook_duplicates,
                                       replay_share=args.webhook_replays, forged_share=args.webhook_forged)
            except ValueError as err:
                print(f"ciotrack emulator: {err}", file=sys.stderr)
                return 2
        print(emulator.url, flush=True)
        if emulator.ca_bundle:
            print(f"ca_bundle={emulator.ca_bundle}", flush=True)
        print(banner(emulator.url, emulator.region, emulator.credentials(), emulator.ca_bundle), flush=True)
        if args.exit_on_stdin_eof:
            def wait_for_eof() -> None:
                block_exit_signals()  # SIGTERM must wake the main thread's wait below
                sys.stdin.buffer.read()
                done.set()

            threading.Thread(target=wait_for_eof, name="ciotrack-emulator-stdin", daemon=True).start()
        while not done.wait(0.5):
            pass
    finally:
        emulator.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ciotrack.emulator",
                                     description="Local Customer.io Track API emulator")
    configure_parser(parser)
    return run(parser.parse_args(argv))
