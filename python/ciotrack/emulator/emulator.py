"""``Emulator``: a local Customer.io Track API server for tests, demos and benchmarks."""

from __future__ import annotations

import base64
import binascii
import collections
import hmac
import logging
import os
import shutil
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import orjson

from ciotrack.emulator.faults import FAULT_NAMES, Faults, FaultState, TokenBucket
from ciotrack.emulator.server import EmulatorHTTPServer
from ciotrack.emulator.state import Workspace
from ciotrack.emulator.transactional import TransactionalLog
from ciotrack.emulator.validate import json_dumps
from ciotrack.lifecycle import block_exit_signals

if TYPE_CHECKING:
    from ciotrack.emulator.webhooks import WebhookSender

logger = logging.getLogger("ciotrack.emulator")

DEFAULT_WORKSPACES: Mapping[str, str] = {"site-1": "key-1"}


class Emulator:
    """A Track API v1 + v2 server on ``host:port`` (port 0 picks a free one), in this process.

    ``workspaces`` maps site_id -> api_key; each workspace has its own state and rate limit.
    ``rate_limit`` (requests/s) and ``burst`` enable a per-workspace token bucket (off by default).
    ``faults`` is a ``Faults`` or a dict of ``set_faults`` keywords. Use ``Emulator.spawn(...)`` for
    a server in a subprocess (so a benchmark client does not share its GIL).

    The App API's transactional sends (``POST /v1/send/...``, see ``transactional.py``) take a Bearer
    App API key: ``app_api_keys`` maps site_id -> key; a workspace without one gets ``app-<api_key>``.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        workspaces: Mapping[str, str] | None = None,
        rate_limit: float | None = None,
        burst: float | None = None,
        tls: bool = False,
        faults: Faults | Mapping[str, Any] | None = None,
        region: str = "us",
        request_log: int = 64,
        app_api_keys: Mapping[str, str] | None = None,
    ) -> None:
        if rate_limit is not None and rate_limit <= 0:
            raise ValueError("rate_limit must be positive (None disables it)")
        if region not in ("us", "eu"):
            raise ValueError("region must be 'us' or 'eu'")
        self.host = host
        self._port = port
        self.region = region
        self.tls = tls
        self.rate_limit = rate_limit
        self.burst = burst if burst is not None else (max(1.0, rate_limit) if rate_limit else None)
        configured = dict(workspaces if workspaces is not None else DEFAULT_WORKSPACES)
        if not configured:
            raise ValueError("at least one workspace is needed")
        self._workspaces = {site: Workspace(site, key, n) for n, (site, key) in enumerate(configured.items(), 1)}
        self._default_site = next(iter(self._workspaces))
        app_keys = dict(app_api_keys or {})
        unknown = set(app_keys) - set(configured)
        if unknown:
            raise ValueError(f"app_api_keys names unknown workspaces: {sorted(unknown)}")
        self.app_api_keys = {site: app_keys.get(site) or f"app-{key}" for site, key in configured.items()}
        self.transactional = TransactionalLog()
        self._auth_cache: dict[str, Workspace] = {}
        self._buckets: dict[str, TokenBucket] = {}
        self.fault_state = FaultState(faults if isinstance(faults, Faults) else Faults.from_settings(
            dict(faults) if faults else None))
        self.stopping = threading.Event()
        self._changed = threading.Condition()
        self._generation = 0  # bumped (under _changed) after every Track API request
        self._stats_lock = threading.Lock()
        self._requests: collections.deque[dict[str, Any]] = collections.deque(maxlen=max(0, request_log))
        self._reset_stats()
        self._server: EmulatorHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._tmpdir: str | None = None
        self.ca_bundle: str | None = None
        self.url = ""
        self._webhook_senders: list[WebhookSender] = []

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Emulator:
        if self._server is not None:
            raise RuntimeError("emulator already started")
        ssl_context = self._make_tls() if self.tls else None
        self.stopping.clear()
        self._server = EmulatorHTTPServer((self.host, self._port), self, ssl_context)
        port = self._server.server_address[1]
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"{'https' if self.tls else 'http'}://{host}:{port}"
        self._thread = threading.Thread(target=self._serve, name="ciotrack-emulator", daemon=True)
        self._thread.start()
        logger.info("Customer.io emulator listening on %s", self.url)
        return self

    def _serve(self) -> None:
        # Blocked here, SIGTERM/SIGINT reach the embedding process's main thread; the connection
        # threads this one starts inherit the mask.
        block_exit_signals()
        server = self._server
        assert server is not None  # set by start() before this thread starts
        server.serve_forever(poll_interval=0.05)

    def _make_tls(self) -> ssl.SSLContext:
        import trustme

        ca = trustme.CA()
        names = {self.host, "127.0.0.1", "localhost", "::1"}
        cert = ca.issue_cert(*sorted(names))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(context)
        self._tmpdir = tempfile.mkdtemp(prefix="ciotrack-emulator-")
        self.ca_bundle = os.path.join(self._tmpdir, "ca.pem")
        ca.cert_pem.write_to_path(self.ca_bundle)
        return context

    def stop(self) -> None:
        senders, self._webhook_senders = self._webhook_senders, []
        for sender in senders:
            sender.stop()
        server, self._server = self._server, None
        if server is None:
            return
        self.stopping.set()
        server.shutdown()
        server.server_close()
        server.close_all(timeout=5.0)
        if self._thread is not None:
            self._thread.join(5.0)
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None
        with self._changed:
            self._changed.notify_all()

    def __enter__(self) -> Emulator:
        return self.start() if self._server is None else self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._server.server_address[1] if self._server is not None else self._port

    @classmethod
    def spawn(cls, host: str = "127.0.0.1", port: int = 0, **kwargs: Any) -> Any:
        """Run the emulator in a subprocess; returns an ``EmulatorProcess`` with the same inspection API."""
        from ciotrack.emulator.handle import EmulatorProcess

        return EmulatorProcess.start(host=host, port=port, **kwargs)

    # -- inspection and control --------------------------------------------------------------

    def workspace_ids(self) -> list[str]:
        return list(self._workspaces)

    def send_webhooks(self, url: str, secret: str, **options: Any) -> WebhookSender:
        """Start posting signed reporting webhooks for this emulator's messages to ``url`` (see
        ``ciotrack.emulator.webhooks.WebhookSender`` for the options); stopped with the emulator."""
        from ciotrack.emulator.webhooks import WebhookSender

        options.setdefault("source", None if options.get("synthetic") else self)
        sender = WebhookSender(url, secret, **options).start()
        self._webhook_senders.append(sender)
        return sender

    def workspace(self, site_id: str | None = None) -> Workspace:
        return self._workspaces[site_id or self._default_site]

    def state(self, site_id: str | None = None) -> dict[str, Any]:
        """A plain-dict snapshot of one workspace (the first configured one by default)."""
        ws = self.workspace(site_id)
        with ws.lock:
            return ws.snapshot()

    def stats(self) -> dict[str, Any]:
        with self._stats_lock:
            out = {
                "requests": self._n_requests,
                "by_status": {str(k): v for k, v in sorted(self._by_status.items())},
                "operations": self._operations,
                "operations_rejected": self._rejected,
                "batches": self._batches,
                "bytes_received": self._bytes,
                "faults": dict(self._faults),
                "in_flight": self._in_flight,
                "max_in_flight": self._max_in_flight,
            }
        events = duplicates = 0
        for ws in self._workspaces.values():
            with ws.lock:
                events += ws.events_stored
                duplicates += ws.duplicates
        out["events"] = events
        out["duplicates"] = duplicates
        # CPU time of the whole process (all threads): with a spawned emulator, the server's own.
        out["process_cpu_seconds"] = time.process_time()
        return out

    def requests(self) -> list[dict[str, Any]]:
        """The last ``request_log`` Track API requests (method, path, query, headers without
        Authorization, site_id, body, status, fault), oldest first."""
        with self._stats_lock:
            return [{k: v for k, v in r.items() if k != "logged"} for r in self._requests]

    def credentials(self) -> list[tuple[str, str, str]]:
        """``(site_id, track_api_key, app_api_key)`` of every workspace, the default one first."""
        return [(site, ws.api_key, self.app_api_keys[site]) for site, ws in self._workspaces.items()]

    def transactional_sends(self, site_id: str | None = None) -> list[dict[str, Any]]:
        """Accepted ``/v1/send/*`` requests, oldest first: site_id, kind, delivery_id, queued_at, request."""
        return self.transactional.sends(site_id)

    def reset(self) -> None:
        """Forget all state and counters (faults stay as they are)."""
        for ws in self._workspaces.values():
            with ws.lock:
                ws.clear()
        self.transactional.clear()
        self._reset_stats()

    def set_faults(self, **settings: Any) -> None:
        """Replace the fault configuration (keywords of ``Faults``, plus ``storm_429_seconds``)."""
        self.fault_state.set(Faults.from_settings(settings))

    def clear_faults(self) -> None:
        self.fault_state.set(Faults())

    def storm_429(self, seconds: float, retry_after: int = 1) -> None:
        """Answer every Track API request 429 (``Retry-After: retry_after``) for ``seconds``."""
        current = self.fault_state.faults.as_dict()
        current.update(storm_429_until=time.time() + seconds, storm_429_retry_after=retry_after)
        self.fault_state.set(Faults.from_settings(current))

    def faults(self) -> dict[str, Any]:
        return self.fault_state.faults.as_dict()

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Wait until ``predicate()`` is true (re-checked after every request); False on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            generation = self._generation
            # Evaluated without the lock: a predicate may itself call this server.
            if predicate():
                return True
            with self._changed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                if generation == self._generation:
                    self._changed.wait(min(remaining, 0.5))

    def wait_events(self, n: int, timeout: float = 5.0) -> bool:
        """Wait until at least ``n`` events are stored across all workspaces."""
        return self.wait_for(lambda: self.stats()["events"] >= n, timeout)

    # -- used by the server ------------------------------------------------------------------

    def authenticate(self, header: str | None) -> Workspace | None:
        if not header:
            return None
        ws = self._auth_cache.get(header)
        if ws is not None:
            return ws
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            site_id, _, api_key = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        ws = self._workspaces.get(site_id)
        if ws is None or not hmac.compare_digest(ws.api_key.encode(), api_key.encode()):
            return None
        self._auth_cache[header] = ws
        return ws

    def authenticate_app(self, header: str | None) -> Workspace | None:
        """The workspace whose App API key is the Bearer token of ``header``."""
        scheme, _, token = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        token_bytes = token.strip().encode()
        for site, key in self.app_api_keys.items():
            if hmac.compare_digest(key.encode(), token_bytes):
                return self._workspaces[site]
        return None

    def rate_limit_wait(self, ws: Workspace, api: str = "track") -> float:
        """Seconds until ``ws`` may make a request to ``api`` (``track`` or ``app``: separate limits)."""
        if self.rate_limit is None:
            return 0.0
        name = ws.site_id if api == "track" else f"{api}:{ws.site_id}"
        bucket = self._buckets.get(name)
        if bucket is None:
            bucket = self._buckets.setdefault(name, TokenBucket(self.rate_limit, self.burst or 1.0))
        return bucket.take()

    def _reset_stats(self) -> None:
        with self._stats_lock:
            self._n_requests = 0
            self._by_status: collections.Counter[int] = collections.Counter()
            self._operations = 0
            self._rejected = 0
            self._batches = 0
            self._bytes = 0
            self._faults = dict.fromkeys(FAULT_NAMES, 0)
            self._in_flight = 0
            self._max_in_flight = 0
            self._requests.clear()

    def request_started(self) -> None:
        with self._stats_lock:
            self._n_requests += 1
            self._in_flight += 1
            if self._in_flight > self._max_in_flight:
                self._max_in_flight = self._in_flight

    def log_request(self, record: dict[str, Any]) -> None:
        with self._stats_lock:
            if not record.get("logged"):
                record["logged"] = True
                if self._requests.maxlen:
                    self._requests.append(record)

    def request_finished(self, record: dict[str, Any]) -> None:
        self.log_request(record)  # requests that got no answer (reset, dropped) are logged here
        with self._stats_lock:
            self._in_flight -= 1
        with self._changed:
            self._generation += 1
            self._changed.notify_all()

    def count_status(self, status: int) -> None:
        with self._stats_lock:
            self._by_status[status] += 1

    def count_fault(self, name: str) -> None:
        with self._stats_lock:
            self._faults[name] += 1

    def count_bytes(self, n: int) -> None:
        with self._stats_lock:
            self._bytes += n

    def count_batch(self) -> None:
        with self._stats_lock:
            self._batches += 1

    def count_operations(self, accepted: int, rejected: int) -> None:
        with self._stats_lock:
            self._operations += accepted
            self._rejected += rejected

    def control(self, method: str, path: str, query: str, body: bytes) -> tuple[int, bytes]:
        """The ``/_emulator/...`` endpoints (no auth)."""
        name = path[len("/_emulator/"):].strip("/")
        try:
            if name == "state" and method == "GET":
                site = parse_qs(query).get("site_id", [None])[-1]
                if site is not None and site not in self._workspaces:
                    return 404, b'{"error":"unknown site_id"}'
                return 200, json_dumps(self.state(site))
            if name == "stats" and method == "GET":
                return 200, orjson.dumps(self.stats())
            if name == "reset" and method == "POST":
                self.reset()
                return 200, b"{}"
            if name == "faults" and method == "POST":
                settings = orjson.loads(body) if body.strip() else {}
                if not isinstance(settings, dict):
                    raise ValueError("faults body must be a JSON object")
                self.set_faults(**settings)
                return 200, orjson.dumps(self.faults())
            if name == "faults" and method == "GET":
                return 200, orjson.dumps(self.faults())
            if name == "requests" and method == "GET":
                return 200, orjson.dumps([{**r, "body": r.get("body", b"").decode("utf-8", "replace")}
                                          for r in self.requests()])
            if name == "transactional" and method == "GET":
                site = parse_qs(query).get("site_id", [None])[-1]
                return 200, orjson.dumps(self.transactional_sends(site))
            if name == "credentials" and method == "GET":
                return 200, orjson.dumps([{"site_id": site, "api_key": key, "app_api_key": app_key}
                                          for site, key, app_key in self.credentials()])
            if name == "webhooks" and method == "GET":
                return 200, orjson.dumps([sender.stats() for sender in self._webhook_senders])
            if name == "webhooks/forge" and method == "POST":
                if not self._webhook_senders:
                    return 409, b'{"error":"no webhook sender (start with --webhook-url)"}'
                settings = orjson.loads(body) if body.strip() else {}
                sent = self._webhook_senders[0].send_forged(str(settings.get("how", "bad_signature")))
                return 200, orjson.dumps({"status": sent.status, "event_id": sent.event_id})
            if name == "health" and method == "GET":
                return 200, orjson.dumps({"url": self.url, "region": self.region})
        except (ValueError, TypeError, orjson.JSONDecodeError) as err:
            return 400, orjson.dumps({"error": str(err)})
        return 404, b'{"error":"no such control endpoint"}'
