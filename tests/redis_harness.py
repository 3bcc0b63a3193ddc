"""A real ``redis-server`` for tests: TCP on a free 127.0.0.1 port, a temp ``--dir``, append-only on.

``RedisServer.kill()`` SIGKILLs it; ``restart()`` starts it again on the SAME port and dir, so the
AOF is replayed (what a crashed Redis with persistence does). When ``redis-server`` is missing or
does not start, ``start()`` FAILS the test: Redis tests are not optional in CI (``.ci/run`` installs
it with apt-get). The ``redis_server`` fixture (``tests/conftest.py``) gives one per test.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest


def free_port() -> int:
    # Bind to 0, read the port, close: a small race with other processes, but `--port 0` would
    # disable TCP altogether (redis-server exits 0 with "not listen anywhere").
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15.0) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed (apt-get install -y redis-server); fleet tests need it")
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
                "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no",
                "--logfile", str(self.dir / "redis.log"), "--protected-mode", "yes"]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if self._answers_ping():
                return
            time.sleep(0.05)
        log = (self.dir / "redis.log").read_text(errors="replace")[-2000:] if (self.dir / "redis.log").exists() else ""
        self.stop()
        pytest.fail(f"redis-server did not start on 127.0.0.1:{self.port}:\n{log}")

    def _answers_ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                # LOADING while the AOF replays: not ready yet.
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: no shutdown. With ``appendfsync always`` every acknowledged write is in the AOF.

        (``everysec`` is not enough for that: while a background fsync is slow, Redis 7.0 postpones
        the AOF write(2) by up to 2 s yet still answers, and a crash then loses acknowledged writes —
        seen in this very test suite on a busy machine.)"""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
