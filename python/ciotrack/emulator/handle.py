"""``EmulatorProcess``: the emulator in a subprocess, driven over its control endpoints.

The child is ``python -m ciotrack.emulator ... --exit-on-stdin-eof``: it prints its URL (and, with
TLS, ``ca_bundle=<path>``) on stdout once listening, and exits when our end of its stdin closes,
so a crashed test run leaves no server behind.
"""

from __future__ import annotations

import os
import selectors
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import IO, Any

import orjson
import requests


class EmulatorStartError(RuntimeError):
    pass


def _read_line(stream: IO[bytes], deadline: float) -> str:
    """One line from the unbuffered pipe, byte by byte so nothing past the newline is consumed."""
    line = bytearray()
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                raise EmulatorStartError("the emulator subprocess did not report its URL in time")
            byte = os.read(stream.fileno(), 1)
            if not byte or byte == b"\n":
                return line.decode("utf-8", "replace").strip()
            line += byte


class EmulatorProcess:
    """Same inspection API as ``Emulator`` (``url``, ``ca_bundle``, ``state()``, ``stats()``,
    ``reset()``, ``set_faults()``, ``clear_faults()``, ``storm_429()``, ``wait_for()``, ``stop()``)."""

    def __init__(self, proc: subprocess.Popen[bytes], url: str, ca_bundle: str | None) -> None:
        self._proc = proc
        self.url = url
        self.ca_bundle = ca_bundle
        self._session = requests.Session()
        self._session.trust_env = False  # never route control calls through a proxy from the environment
        self._session.verify = ca_bundle if ca_bundle else True

    @classmethod
    def start(
        cls,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        workspaces: Mapping[str, str] | None = None,
        rate_limit: float | None = None,
        burst: float | None = None,
        tls: bool = False,
        faults: Mapping[str, Any] | None = None,
        region: str = "us",
        timeout: float = 30.0,
        webhooks: Mapping[str, Any] | None = None,
    ) -> EmulatorProcess:
        """``webhooks``: ``url`` and ``secret`` (+ ``rate``, ``synthetic``, ``duplicate_share``,
        ``replay_share``, ``forged_share``) make the child post signed reporting webhooks."""
        args = [sys.executable, "-m", "ciotrack.emulator", "--host", host, "--port", str(port),
                "--region", region, "--exit-on-stdin-eof"]
        for site_id, api_key in (workspaces or {}).items():
            args += ["--workspace", f"{site_id}:{api_key}"]
        if rate_limit is not None:
            args += ["--rate-limit", str(rate_limit)]
        if burst is not None:
            args += ["--burst", str(burst)]
        if tls:
            args.append("--tls")
        if faults:
            args += ["--faults-json", orjson.dumps(dict(faults)).decode()]
        env = dict(os.environ)
        if webhooks:
            hooks = dict(webhooks)
            # The signing key goes through the environment, not the command line (ps shows that).
            env["CIOTRACK_WEBHOOK_SECRET"] = str(hooks.pop("secret"))
            args += ["--webhook-url", str(hooks.pop("url"))]
            if hooks.pop("synthetic", False):
                args.append("--webhook-synthetic")
            for name, flag in (("rate", "--webhook-rate"), ("duplicate_share", "--webhook-duplicates"),
                               ("replay_share", "--webhook-replays"), ("forged_share", "--webhook-forged")):
                if name in hooks:
                    args += [flag, str(hooks.pop(name))]
            if hooks:
                raise ValueError(f"unknown webhook options: {sorted(hooks)}")
        # The child must import this same ciotrack, installed or not.
        source_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # above ciotrack/
        env["PYTHONPATH"] = os.pathsep.join(p for p in (source_root, env.get("PYTHONPATH")) if p)
        proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0, env=env)
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout
        try:
            url = _read_line(proc.stdout, deadline)
            if not url.startswith("http"):
                raise EmulatorStartError(f"the emulator subprocess failed to start (exit {proc.poll()})")
            ca_bundle = None
            if tls:
                line = _read_line(proc.stdout, deadline)
                ca_bundle = line.partition("=")[2] or None
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        return cls(proc, url, ca_bundle)

    @property
    def pid(self) -> int:
        return self._proc.pid

    def _call(self, method: str, name: str, body: Any = None, params: dict[str, str] | None = None) -> Any:
        data = orjson.dumps(body) if body is not None else None
        response = self._session.request(method, f"{self.url}/_emulator/{name}", data=data, params=params,
                                         timeout=30)
        response.raise_for_status()
        return orjson.loads(response.content)

    def state(self, site_id: str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "state", params={"site_id": site_id} if site_id else None)
        return result

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "stats")
        return result

    def requests(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "requests")
        return result

    def transactional_sends(self, site_id: str | None = None) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "transactional",
                                                  params={"site_id": site_id} if site_id else None)
        return result

    def credentials(self) -> list[tuple[str, str, str]]:
        rows = self._call("GET", "credentials")
        return [(row["site_id"], row["api_key"], row["app_api_key"]) for row in rows]

    def reset(self) -> None:
        self._call("POST", "reset")

    def webhook_stats(self) -> list[dict[str, int]]:
        """The counters of the child's webhook senders (``WebhookSender.stats()``)."""
        result: list[dict[str, int]] = self._call("GET", "webhooks")
        return result

    def send_forged_webhook(self, how: str = "bad_signature") -> int | None:
        """Have the child send one forged webhook now (see ``WebhookSender.send_forged``); its status."""
        result: int | None = self._call("POST", "webhooks/forge", {"how": how})["status"]
        return result

    def set_faults(self, **settings: Any) -> None:
        self._call("POST", "faults", settings)

    def clear_faults(self) -> None:
        self._call("POST", "faults", {})

    def storm_429(self, seconds: float, retry_after: int = 1) -> None:
        current = self._call("GET", "faults")
        current.update(storm_429_until=time.time() + seconds, storm_429_retry_after=retry_after)
        self._call("POST", "faults", current)

    def faults(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "faults")
        return result

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.02) -> bool:
        """Poll ``predicate()`` until it is true or ``timeout`` passes (False then)."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() >= deadline:
                return False
            time.sleep(interval)
        return True

    def wait_events(self, n: int, timeout: float = 5.0) -> bool:
        return self.wait_for(lambda: self.stats()["events"] >= n, timeout)

    def stop(self, timeout: float = 10.0) -> int:
        """Close the child's stdin (it shuts down cleanly), escalate to SIGTERM/SIGKILL if needed."""
        self._session.close()
        if self._proc.poll() is None:
            assert self._proc.stdin is not None
            try:
                self._proc.stdin.close()
            except OSError:
                pass
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.terminate()
                try:
                    self._proc.wait(5)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        return self._proc.returncode

    def __enter__(self) -> EmulatorProcess:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
