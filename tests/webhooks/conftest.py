"""Fixtures of the webhook tests: a real redis-server on a free port."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from webhook_helpers import free_port, wait_port


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throwaway redis-server (no persistence) on a free port; fails loudly if it cannot start."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (apt-get install -y redis-server)")
    workdir: Path = tmp_path_factory.mktemp("redis")
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(workdir)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        try:
            wait_port(port)
        except RuntimeError:
            proc.kill()
            output = proc.communicate(timeout=5)[0].decode(errors="replace")
            pytest.fail(f"redis-server did not start on port {port}:\n{output}")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
