"""A real Celery worker in a subprocess, given a warm shutdown (SIGTERM) once its log says it ran N tasks."""

from __future__ import annotations

import signal
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class WorkerRun:
    ran: bool
    """Every task succeeded before the wait ended."""
    log: str
    returncode: int | None
    seen: Any
    """What ``before_stop`` returned (called after the tasks ran, before the SIGTERM)."""


def run_until_tasks_done(args: Sequence[str], *, cwd: Path, env: Mapping[str, str], tasks: int, timeout: float,
                         before_stop: Callable[[], Any] = lambda: None) -> WorkerRun:
    worker = subprocess.Popen(list(args), cwd=cwd, env=dict(env), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
    log: list[str] = []
    all_ran = threading.Event()

    def read_log() -> None:
        assert worker.stderr is not None
        for line in worker.stderr:
            log.append(line)
            if sum("succeeded" in entry for entry in log) >= tasks:
                all_ran.set()

    reader = threading.Thread(target=read_log, daemon=True)
    reader.start()
    seen = None
    try:
        ran = all_ran.wait(timeout)
        seen = before_stop()
    finally:
        worker.send_signal(signal.SIGTERM)  # warm shutdown: pool children get worker_process_shutdown
        worker.wait(90)
        reader.join(10)
    return WorkerRun(ran, "".join(log), worker.returncode, seen)
