"""Processes for the fleet tests: workers (``python -m ciotrack worker``) and producers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ciotrack import _core

SITE_ID = "site-test"
API_KEY = "key-test-SECRET-9f2c"
HERE = Path(__file__).parent


def env() -> dict[str, str]:
    out = dict(os.environ)
    out["CIOTRACK_API_KEY"] = API_KEY  # from the environment, as in the k8s Deployment
    out["NO_PROXY"] = "127.0.0.1,localhost"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        out.pop(name, None)
    return out


STARTED: list[subprocess.Popen[Any]] = []
"""Every process these helpers started: the tests' autouse fixture kills what a failed test left."""


class WorkerProcess:
    def __init__(self, redis_url: str, endpoint: str, *extra: str, log: Path | None = None) -> None:
        args = [sys.executable, "-m", "ciotrack", "worker", "--redis-url", redis_url, "--site-id", SITE_ID,
                "--endpoint", endpoint, *extra]
        self.log_path = log
        self._log = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(args, env=env(), stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=self._log)
        STARTED.append(self.proc)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def terminate(self, timeout: float = 40.0) -> int:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.alive():
                self.kill()
            if self._log is not subprocess.DEVNULL:
                self._log.close()  # type: ignore[union-attr]


def spawn_producer(redis_url: str, index: int, n: int, seconds: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, str(HERE / "fleet_producer.py"), redis_url, SITE_ID, str(index),
                             str(n), str(seconds)], env=env(), stdout=subprocess.PIPE, text=True)
    STARTED.append(proc)
    return proc


def kill_leftovers() -> None:
    while STARTED:
        proc = STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def wait_producer(proc: subprocess.Popen[str], timeout: float = 120.0) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out.strip()


def stored_events(emulator: Any) -> list[tuple[int, int]]:
    """(producer, seq) of every event the emulator stored (it stores an event id once)."""
    state = emulator.state(SITE_ID)
    out = []
    for person in state["people"].values():
        for event in person["events"]:
            out.append((int(event["data"]["p"]), int(event["data"]["seq"])))
    return out


def wait_until(predicate: Any, timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def redis_client(url: str) -> Any:
    """A redis-py client typed loosely: its stubs describe RESP3 unions the tests do not need."""
    from ciotrack.fleet.producer import connect

    return connect(url)


def event_op(entry: int, seq: int, name: str = "fleet") -> bytes:
    """One event operation as a producer encodes it: customer ``c<entry>``, ``{"p": entry, "seq": seq}`` (what
    ``stored_events`` reads back); an empty ``name`` makes the emulator refuse it in a 207."""
    return json.dumps({"type": "person", "identifiers": {"id": f"c{entry}"}, "action": "event", "name": name,
                       "id": _core.ulid().upper(), "timestamp": 1764480000,
                       "attributes": {"p": entry, "seq": seq, "pad": "x" * 40}}, separators=(",", ":")).encode()
