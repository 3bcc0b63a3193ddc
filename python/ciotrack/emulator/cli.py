"""``ciotrack emulator ...`` / ``python -m ciotrack.emulator ...``: run the emulator in the foreground.

Prints the URL on stdout once listening (and ``ca_bundle=<path>`` with ``--tls``), then serves
until SIGINT/SIGTERM (or, with ``--exit-on-stdin-eof``, until stdin closes).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType
from typing import Any

import orjson


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: loopback only)")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one)")
    parser.add_argument("--site-id", help="workspace site id (with --api-key; default site-1/key-1)")
    parser.add_argument("--api-key", help="workspace track API key")
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
    faults.add_argument("--reset-rate", type=float, help="probability of resetting the connection mid-request")
    faults.add_argument("--slow-read", type=float, help="seconds to stall before answering 503 (not applied)")
    faults.add_argument("--apply-then-drop-rate", type=float,
                        help="probability of applying, then dropping the connection")
    faults.add_argument("--storm-429", type=float, metavar="SECONDS", help="answer 429 to everything for this long")
    faults.add_argument("--storm-retry-after", type=int, help="Retry-After of the storm's 429s (default 1)")
    faults.add_argument("--clock-skew", type=float, help="seconds added to the Date header of every answer")
    faults.add_argument("--redirect-to", help="answer every Track API request 301 to this base URL")
    faults.add_argument("--seed", type=int, help="seed of the fault RNG")
    faults.add_argument("--faults-json", help=argparse.SUPPRESS)
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
                 "clock_skew", "redirect_to", "seed"):
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    if args.error_statuses:
        settings["error_statuses"] = [int(s) for s in args.error_statuses.split(",") if s.strip()]
    if args.storm_429 is not None:
        settings["storm_429_seconds"] = args.storm_429
    if args.storm_retry_after is not None:
        settings["storm_429_retry_after"] = args.storm_retry_after
    return settings


def run(args: argparse.Namespace) -> int:
    from ciotrack.emulator.emulator import Emulator

    try:
        emulator = Emulator(args.host, args.port, workspaces=_workspaces(args), rate_limit=args.rate_limit,
                            burst=args.burst, tls=args.tls, faults=_faults(args), region=args.region)
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
        print(emulator.url, flush=True)
        if emulator.ca_bundle:
            print(f"ca_bundle={emulator.ca_bundle}", flush=True)
        if args.exit_on_stdin_eof:
            def wait_for_eof() -> None:
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
