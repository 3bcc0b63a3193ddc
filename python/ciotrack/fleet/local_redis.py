"""A throwaway local ``redis-server``: TCP on a free 127.0.0.1 port, a temp ``--dir``, append-only on with
``appendfsync always``. ``ciotrack loadtest``'s fleet target starts one when no ``--redis-url`` is given;
the test suite's ``redis_server`` fixture (``tests/redis_harness.py``) is this class too.

``kill()`` SIGKILLs it; ``restart()`` starts it again on the SAME port and dir, so the AOF is replayed
(what a crashed Redis with persistence does). ``start()`` raises :class:`RedisNotInstalledError` when
there is no ``redis-server`` on ``PATH`` and :class:`LocalRedisError` when it does not answer ``PING``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from ciotrack.errors import CiotrackError

__all__ = ["LocalRedis", "LocalRedisError", "RedisNotInstalledError", "free_port"]


class LocalRedisError(CiotrackError, RuntimeError):
    """The local ``redis-server`` did not start (the message has the end of its log)."""


class RedisNotInstalledError(LocalRedisError, FileNotFoundError):
    """There is no ``redis-server`` on ``PATH``."""


def free_port() -> int:
    # Bind to 0, read the port, close: a small race with other processes, but `--port 0` would
    # disable TCP altogether (redis-server exits 0 with "not listen anywhere").
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalRedis:
    """One ``redis-server`` process in ``directory`` (which must exist)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"LocalRedis(port={self.port}, dir={str(self.dir)!r})"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15.0) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RedisNotInstalledError("redis-server is not installed (e.g. apt-get install -y redis-server)")
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
        log_file = self.dir / "redis.log"
        log = log_file.read_text(errors="replace")[-2000:] if log_file.exists() else ""
        self.stop()
        raise LocalRedisError(f"redis-server did not start on 127.0.0.1:{self.port}:\n{log}")

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
        seen in this project's test suite on a busy machine.)"""
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
